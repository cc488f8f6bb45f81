"""Request validation at the runtime's boundary: types and lengths first (before any other work, so
an oversized request costs nothing), then NFKC with invisible characters removed, the user id's
shape, and the flags for the audit record (prompt injection, obfuscated or encoded text, chat-template
markup). The head still decides on a flagged request; the flags are evidence, not a verdict."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .injection import INJECTION_PATTERNS, encoded_payloads, injection_signs
from .textforms import clean_text, is_obfuscated

__all__ = ["INJECTION_PATTERNS", "MAX_CLIENT_CHARS", "CleanRequest", "InvalidRequest", "Unparsed", "checked_client",
           "encoded_payloads", "validate_request"]
# A user id is an account name, an employee number or an e-mail address: printable, no spaces.
USER_ID = re.compile(r"[^\s\x00-\x1f\x7f]+")
# The turn and sequence markers of the chat templates in use (Gemma's; ChatML's, as Qwen's and the tiny model's, and
# any other <|name|>): a request holding one tries to forge the prompt's markup. Flagged on the text the model reads;
# the prompt builder makes sure the model reads it as text (so8t_lib.model.prompts.SpecialStrings).
CHAT_MARKUP = re.compile(r"<(?:start_of_turn|end_of_turn|bos|eos|pad|mask|unk|unused\d+)>|<\|\w{1,40}\|>", re.I)


class InvalidRequest(ValueError):
    """A request the runtime cannot take; the message says which field and why."""


@dataclass(frozen=True)
class Unparsed:
    """A request line a front end could not even read (not JSON, not UTF-8). Only the caller can
    make one, so a client field cannot pose as a parse error."""

    reason: str
    raw: str = ""


@dataclass
class CleanRequest:
    """A request as the runtime decides and records it: checked by ``validate_request``, or, for one that failed
    the checks, the bounded prefix a fail-closed result keeps (then ``user_request`` may be None)."""

    user_request: str | None
    context: str | None
    user_id: str | None
    flags: list[str] = field(default_factory=list)
    client: str | None = None  # the API key that asked (set by the HTTP service, never read from a request body)


MAX_CLIENT_CHARS = 128  # an API key's name is at most 64 (http.auth.KEY_NAME)
CLIENT_TEXT = re.compile(r"[^\x00-\x1f\x7f]+")  # printable: a NUL cannot be stored in a PostgreSQL text column


def checked_client(value: object) -> str | None:
    """The client a Python caller named for a request item (the HTTP service: its API key's name), or None. Only a
    plain str of at most MAX_CLIENT_CHARS printable characters that UTF-8 can encode counts; anything else is
    treated as no client (the case's outcome is then for its desk's reviewers only), never stored: a value the
    spool or the queue cannot store would cost the decision its audit record or its case."""
    if type(value) is not str or len(value) > MAX_CLIENT_CHARS or not CLIENT_TEXT.fullmatch(value) \
            or _has_surrogates(value):
        return None
    return value


def _has_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def _sized(value, name: str, limit: int, required: bool) -> str | None:
    """Type and length only: the first check, before any work on the text."""
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required")
        return None
    if isinstance(value, (bytes, bytearray)):
        if len(value) > 4 * limit:  # more bytes than any text of `limit` characters can take
            raise InvalidRequest(f"{name} has {len(value)} bytes; the limit is {limit} characters")
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"{name} is not valid UTF-8 text (byte {exc.start})") from None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text, got {type(value).__name__}")
    if len(value) > limit:  # masking, NFKC and matching are never run on it
        raise InvalidRequest(f"{name} has {len(value)} characters; the limit is {limit} (validation.max_*_chars)")
    return value


def _clean(value: str | None, name: str, limit: int, required: bool) -> str | None:
    if value is None:
        return None
    if _has_surrogates(value):
        raise InvalidRequest(f"{name} contains unpaired surrogates (not valid Unicode text)")
    text, _ = clean_text(value)
    text = text.strip()
    if required and not text:
        raise InvalidRequest(f"{name} is empty")
    if len(text) > limit:  # NFKC can lengthen text (㍿ -> 株式会社)
        raise InvalidRequest(f"{name} has {len(text)} characters after normalisation; the limit is {limit}")
    return text or None


def validate_request(user_request, context=None, user_id=None, max_request_chars: int = 4000,
                     max_context_chars: int = 4000, max_user_id_chars: int = 128) -> CleanRequest:
    """The request cleaned and flagged, or InvalidRequest naming the field and the problem."""
    raw_request = _sized(user_request, "user_request", max_request_chars, required=True)
    raw_context = _sized(context, "context", max_context_chars, required=False)
    raw_uid = _sized(user_id, "user_id", max_user_id_chars, required=False)
    request = _clean(raw_request, "user_request", max_request_chars, required=True)
    ctx = _clean(raw_context, "context", max_context_chars, required=False)
    uid = _clean(raw_uid, "user_id", max_user_id_chars, required=False)
    if raw_uid is not None and (not USER_ID.fullmatch(raw_uid) or uid != raw_uid):
        raise InvalidRequest("user_id must be printable text without spaces or invisible characters (an account "
                             "name, employee number or e-mail address)")
    clean = CleanRequest(request, ctx, uid)
    for raw, text in ((raw_request, request), (raw_context, ctx)):  # as decoded: bytes are read like text
        if not text:
            continue
        for flag in injection_signs(text):
            if flag not in clean.flags:
                clean.flags.append(flag)
        if is_obfuscated(raw, text) and "obfuscated_text" not in clean.flags:
            clean.flags.append("obfuscated_text")
        if CHAT_MARKUP.search(text) and "chat_markup" not in clean.flags:
            clean.flags.append("chat_markup")
    return clean
