"""Requests that may be about a life in danger now, and what the gate says first when it sees one.

The safety policy routes medical cases to medical staff, "emergencies: call emergency services first". A queue
that a person reads within minutes is too slow for someone who is not breathing, so the runtime screens every
request for signs of an emergency (a keyword screen, Japanese and English, on the same matching form as the
routing table). A match never changes the decision. It puts the emergency line first in the rationale, in the
request's language; routes the request to ``medical``; adds the ``urgent`` flag; and marks the notification
URGENT. A false alarm costs a sentence; a miss leaves the case with the ordinary route and wording.
"""

from __future__ import annotations

import re
import unicodedata

from ..data.tables import detect_lang
from .textforms import matching_form

URGENT_FLAG = "urgent"
URGENT_CATEGORY = "medical"
URGENT_NOTICE = {
    "en": "If anyone may be in danger now, call emergency services first (119 in Japan) and stay with them.",
    "ja": "命に関わるおそれがあるときは、まず119番に通報し、その人のそばを離れないでください。",
}
# signs of an emergency now: a person collapsed, not breathing, bleeding, poisoned, or at risk of suicide
URGENT_WORDS = (
    "not breathing", "stopped breathing", "unconscious", "unresponsive", "collapsed", "passed out", "heart attack",
    "chest pain", "seizure", "bleeding heavily", "won't stop bleeding", "overdosed", "took too many pills",
    "kill myself", "end my life", "want to die", "suicidal", "call an ambulance",
    "息をしていない", "息してない", "呼吸がない", "意識がない", "意識が無い", "倒れ", "けいれん", "痙攣", "心停止",
    "胸が痛", "血が止まらない", "大量に出血", "救急車", "119番", "過剰摂取した", "飲みすぎた", "死にたい",
    "自殺したい", "消えたい",
)
_PATTERN = re.compile("|".join(rf"\b{re.escape(w)}\b" if w.isascii() else re.escape(w) for w in URGENT_WORDS))


def is_urgent(request: str | None, context: str | None = None) -> bool:
    """Whether request + context name a sign of an emergency (on the raw text, casefolded, and on its matching
    form, so look-alike letters and letter spacing do not hide one)."""
    raw = f"{context or ''} {request or ''}"
    folded = unicodedata.normalize("NFKC", raw).casefold()
    return bool(_PATTERN.search(folded) or _PATTERN.search(matching_form(raw)))


def urgent_notice(request: str | None) -> str:
    """The emergency line in the request's language (Japanese when it holds Japanese script)."""
    return URGENT_NOTICE[detect_lang(request or "")]


def is_urgent_rationale(rationale: str | None) -> bool:
    """Whether a stored rationale starts with the emergency line (how a notification knows to say URGENT
    without a new column in the queue)."""
    return bool(rationale) and rationale.startswith(tuple(URGENT_NOTICE.values()))


def mark_urgent(result: dict, request: str | None) -> dict:
    """The emergency line first in the rationale, and the ``urgent`` flag (the caller routes to medical)."""
    notice = urgent_notice(request)
    result["rationale"] = f"{notice} {result['rationale']}" if result.get("rationale") else notice
    result["flags"] = list(dict.fromkeys([*result.get("flags", []), URGENT_FLAG]))
    return result
