"""Requests that may be about a life in danger now, and what the gate says first when it sees one.

The safety policy routes medical cases to medical staff, "emergencies: call emergency services first". A queue
that a person reads within minutes is too slow for someone who is not breathing, so the runtime screens every
request for signs of an emergency (a keyword screen, Japanese and English, on the same matching form as the
routing table). A match never changes the decision. It puts the emergency line first in the rationale, in the
request's language (also when the request fails closed); adds the ``urgent`` flag; marks the notification
URGENT; and routes to ``medical`` a request unless the keyword table found another desk for it (a false alarm
must not take a case from the desk that can resolve it; the learned router's guess where the table found
nothing is no such desk). A false alarm costs a sentence and an URGENT mark; a miss leaves the case with the
ordinary wording. The phrases are about a person ("not breathing", 意識がない), not words that also describe a
server ("unresponsive") or a feeling (胸が痛む).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from ..core.schema import FALLBACK_CATEGORY
from ..data.tables import detect_lang
from .textforms import matching_form

URGENT_FLAG = "urgent"
URGENT_CATEGORY = "medical"
URGENT_NOTICE = {
    "en": "If anyone may be in danger now, call emergency services first (119 in Japan) and stay with them.",
    "ja": "命に関わるおそれがあるときは、まず119番に通報し、その人のそばを離れないでください。",
}
# signs of an emergency now: a person collapsed, not breathing, bleeding, poisoned, or at risk of suicide
URGENT_WORDS = (  # phrases about a person, not words that also describe servers, markets or feelings
    "not breathing", "stopped breathing", "unconscious", "heart attack", "having a seizure", "bleeding heavily",
    "won't stop bleeding", "overdosed", "took too many pills", "kill myself", "end my life", "want to die",
    "suicidal", "call an ambulance",
    "息をしていない", "息してない", "呼吸をしていない", "意識がない", "意識が無い", "意識が戻らない", "心停止",
    "けいれんしている", "血が止まらない", "大量に出血", "救急車を呼", "119番", "過剰摂取した", "薬を飲みすぎた",
    "死にたい", "自殺したい", "消えたい",
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
    """Whether a rationale starts with the emergency line."""
    return bool(rationale) and rationale.startswith(tuple(URGENT_NOTICE.values()))


def is_urgent_case(case: dict) -> bool:
    """A queued case the screen marked: its ``urgent`` column, or for a case queued before that column
    existed, the emergency line its rationale starts with."""
    return bool(case.get("urgent")) or is_urgent_rationale(case.get("rationale"))


def urgent_route(routed: str, keywords: Mapping[str, int] | None = None) -> str:
    """Medical staff for a possible emergency, unless the keyword table found another desk for it. ``keywords``:
    the table's hits per category (``categories.keyword_scores``); ``routed`` stays only where it is one of the
    table's top desks and medical is not among them (a learned router's guess, made where the table found
    nothing, never takes an emergency from medical). Without ``keywords``, ``routed`` is the table's own choice."""
    if keywords is None:
        return URGENT_CATEGORY if routed == FALLBACK_CATEGORY else routed
    top = max(keywords.values(), default=0)
    if top <= 0 or keywords.get(routed, 0) < top or keywords.get(URGENT_CATEGORY, 0) == top:
        return URGENT_CATEGORY
    return routed


def mark_urgent(result: dict, request: str | None) -> dict:
    """The emergency line first in the rationale (once), and the ``urgent`` flag."""
    notice = urgent_notice(request)
    rationale = result.get("rationale") or ""
    if not is_urgent_rationale(rationale):
        result["rationale"] = f"{notice} {rationale}" if rationale else notice
    result["flags"] = list(dict.fromkeys([*result.get("flags", []), URGENT_FLAG]))
    return result
