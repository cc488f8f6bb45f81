"""What may be stored: every text field bounded, valid UTF-8, and personal data masked.

A client controls the request, the context and the user id, and an error message can quote them;
so nothing reaches the audit log or the escalation queue verbatim. A text longer than its bound is
stored as a prefix plus its length and a sha256 (so the original can still be matched against it),
a lone surrogate becomes U+FFFD instead of an encoding error, and anything that is not text is
stored as a bounded ``repr`` (or, where that fails, described by its type and size).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re

from .masking import mask_personal_data

# what is cut off is described in this many characters at most: "…[12345 chars, sha256 0123456789abcdef]"
TRUNCATION_NOTE = 48
_NOTE = re.compile(r"…\[([1-9]\d{0,8}) chars, sha256 [0-9a-f]{16}\]\Z")
UNITS = {str: "chars", bytes: "bytes", bytearray: "bytes"}  # what a described value's size counts (else items)
# the end of a masked cut window that may hold the part of an address or number the cut left unrecognised: longer
# than the longest address (254) and a number or name beside it, so a prefix that ends this far before is final
CUT_MARGIN = 512
MAX_WINDOW = 1 << 16  # characters masked at most for one field (16 times the bound plus margin if that is more)


def storable(text: str) -> str:
    """The text with lone surrogates replaced (U+FFFD), so it can always be encoded as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def described(value: object, why: str = "") -> str:
    """A value by its type and size, for one that cannot be shown (never raises): ``<int of about 5001 digits:
    ValueError>``, ``<list of 1 items: RecursionError>``."""
    try:
        kind = type(value).__name__
        if type(value) is int:  # digits from the bits: str() is what failed
            size = f" of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
        elif type(value) in (str, bytes, bytearray, list, tuple, dict, set, frozenset):
            size = f" of {len(value)} {UNITS.get(type(value), 'items')}"
        else:
            size = ""
        return f"<{kind}{size}{': ' + why if why else ''}>"
    except Exception:  # noqa: BLE001 - a type whose name or size cannot be read
        return "<a value that cannot be shown>"


def as_text(value: object, limit: int) -> str:
    """Any value as text, never an exception: a huge container is described, not printed, and so is a value
    whose ``repr`` fails (an int past Python's 4300-digit limit, a structure nested too deep, a broken class)."""
    try:
        if isinstance(value, str):
            return str.__str__(value)  # a plain str, whatever a subclass's __str__ does
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("utf-8", "replace")
        if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > limit:
            return described(value)
        return str.__str__(repr(value))
    except Exception as exc:  # noqa: BLE001 - ValueError, RecursionError, a __repr__ or __len__ that raises
        return described(value, type(exc).__name__)


def bounded(value: object, limit: int) -> str | None:
    """``value`` as storable text of at most ``limit`` characters plus a short note: a longer text
    keeps its first characters, its length and its sha256."""
    if value is None:
        return None
    text = storable(as_text(value, limit))
    if _fits(text, limit):
        return text  # short, or bounded already
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{text[:limit]}…[{len(text)} chars, sha256 {digest}]"


def _fits(text: str, limit: int) -> bool:
    """Whether ``text`` is stored whole: it is within the bound, or bounded already (a note after the prefix)."""
    return len(text) <= limit or (len(text) <= limit + TRUNCATION_NOTE and _NOTE.search(text) is not None)


def _masked_prefix(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text`` masked, masking a window of it rather than all of it.

    Masking a window can leave the address or number its cut splits unrecognised ('tanaka.taro@exa') at the
    masked window's end, and masking shrinks a window (an address becomes [EMAIL]); so the window grows until
    its masked text passes the bound by ``CUT_MARGIN`` or it holds the whole text. Its size is bounded: past
    that, the margin at its end is dropped, and less than ``limit`` is kept rather than a piece of an address."""
    window = limit + CUT_MARGIN
    largest = max(16 * window, MAX_WINDOW)
    while True:
        masked = mask_personal_data(text[:window])
        if window >= len(text) or len(masked) >= limit + CUT_MARGIN:
            return masked[:limit]
        if window >= largest:
            return masked[:max(0, len(masked) - CUT_MARGIN)][:limit]
        window = min(4 * window, largest)


def masked_bounded(value: object, limit: int) -> str | None:
    """Bounded and masked, in that order of effect: the prefix kept is the whole text's masked prefix (the
    text is masked before it is cut, so no address is kept half); the note keeps the original's length and
    sha256. The work is bounded (``_masked_prefix``), whatever the text's size."""
    if value is None:
        return None
    text = storable(as_text(value, limit))
    if _fits(text, limit):
        note = _NOTE.search(text)  # an earlier bound's note is kept as written (its digest may look like a number),
        if note and not (note.start() == limit < int(note.group(1))):  # but only one that bound wrote: its head is
            note = None                                               # the limit long, the count above it
        head, tail = (text[:note.start()], note.group()) if note else (text, "")
        masked = mask_personal_data(head) + tail
        return masked if len(masked) <= limit + TRUNCATION_NOTE else bounded(masked, limit)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{_masked_prefix(text, limit)}…[{len(text)} chars, sha256 {digest}]"


def masked_if_cut(value: object, limit: int) -> str | None:
    """``bounded``, except that a text it would cut is masked first (``masked_bounded``): for a text that
    nothing else may see whole (a request that failed validation), a raw cut would keep half an address that
    no later masking can recognise. A text within the bound comes back as it is."""
    if value is None:
        return None
    text = storable(as_text(value, limit))
    return text if _fits(text, limit) else masked_bounded(text, limit)


def pseudonym(user_id: str | None, key: bytes | None = None, limit: int = 128) -> str | None:
    """A user id with personal data masked. When masking changed it, a short digest (keyed when a
    key is configured) is appended so one person's records stay linkable without naming them."""
    if user_id is None:
        return None
    text = bounded(user_id, limit) or ""
    masked = masked_bounded(user_id, limit) or ""  # masked before it is cut: a cut address is not recognised
    if masked == text:
        return text
    raw = text.encode("utf-8")
    digest = hmac.new(key, raw, hashlib.sha256).hexdigest() if key else hashlib.sha256(raw).hexdigest()
    return f"{masked}#{digest[:12]}"
