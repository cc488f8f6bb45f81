"""Request validation at the runtime's boundary: types, lengths, NFKC, control characters, and
prompt-injection phrases (flagged for the audit record; the head still decides)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

INJECTION_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"ignore (all |any )?(the )?(previous|prior|above) (instructions|rules|prompts?)",
    r"disregard (all |the )?(previous|prior|above|system) (instructions|rules|prompt)",
    r"you are now (in )?(developer|dan|jailbreak) mode",
    r"(reveal|print|show) (me )?(your|the) system prompt",
    r"前の指示を(すべて|全て)?無視",
    r"(以前|上記|これまで)の(指示|命令|ルール)を(すべて|全て)?無視",
    r"システムプロンプトを(表示|教え|出力)",
    r"制限を(解除|無視)",
)]
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


class InvalidRequest(ValueError):
    """A request the runtime cannot take; the message says which field and why."""


@dataclass
class CleanRequest:
    user_request: str
    context: str | None
    user_id: str | None
    flags: list[str] = field(default_factory=list)


def _clean(value, name: str, limit: int, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required")
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"{name} is not valid UTF-8 text") from None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text, got {type(value).__name__}")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise InvalidRequest(f"{name} contains unpaired surrogates (not valid Unicode text)")
    text = _CONTROL.sub("", unicodedata.normalize("NFKC", value)).strip()
    if required and not text:
        raise InvalidRequest(f"{name} is empty")
    if len(text) > limit:
        raise InvalidRequest(f"{name} has {len(text)} characters; the limit is {limit} (validation.max_*_chars)")
    return text or None


def validate_request(user_request, context=None, user_id=None, max_request_chars: int = 4000,
                     max_context_chars: int = 4000, max_user_id_chars: int = 128) -> CleanRequest:
    request = _clean(user_request, "user_request", max_request_chars, required=True)
    clean = CleanRequest(request, _clean(context, "context", max_context_chars, required=False),
                         _clean(user_id, "user_id", max_user_id_chars, required=False))
    for text in (clean.user_request, clean.context or ""):
        if any(p.search(text) for p in INJECTION_PATTERNS):
            clean.flags.append("prompt_injection")
            break
    return clean
