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
    if len(text) <= limit or (len(text) <= limit + TRUNCATION_NOTE and _NOTE.search(text)):
        return text  # short, or bounded already
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{text[:limit]}…[{len(text)} chars, sha256 {digest}]"


def masked_bounded(value: object, limit: int) -> str | None:
    """Bounded and masked: masking never sees more than the bound (plus a margin, so an address
    cut at the bound is still recognised); the note keeps the original's length and sha256."""
    if value is None:
        return None
    text = storable(as_text(value, limit))
    if len(text) <= limit or (len(text) <= limit + TRUNCATION_NOTE and _NOTE.search(text)):
        note = _NOTE.search(text)  # an earlier bound's note is kept as written (its digest may look like a number),
        if note and not (note.start() == limit < int(note.group(1))):  # but only one that bound wrote: its head is
            note = None                                               # the limit long, the count above it
        head, tail = (text[:note.start()], note.group()) if note else (text, "")
        masked = mask_personal_data(head) + tail
        return masked if len(masked) <= limit + TRUNCATION_NOTE else bounded(masked, limit)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{mask_personal_data(text[: limit + 256])[:limit]}…[{len(text)} chars, sha256 {digest}]"


def pseudonym(user_id: str | None, key: bytes | None = None, limit: int = 128) -> str | None:
    """A user id with personal data masked. When masking changed it, a short digest (keyed when a
    key is configured) is appended so one person's records stay linkable without naming them."""
    if user_id is None:
        return None
    text = bounded(user_id, limit) or ""
    masked = mask_personal_data(text)
    if masked == text:
        return text
    raw = text.encode("utf-8")
    digest = hmac.new(key, raw, hashlib.sha256).hexdigest() if key else hashlib.sha256(raw).hexdigest()
    return f"{masked}#{digest[:12]}"
