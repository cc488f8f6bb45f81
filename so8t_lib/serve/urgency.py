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
from .textforms import APOSTROPHES, matching_form

URGENT_FLAG = "urgent"
URGENT_CATEGORY = "medical"
URGENT_NOTICE = {
    "en": "If anyone may be in danger now, call emergency services first (119 in Japan) and stay with them.",
    "ja": "命に関わるおそれがあるときは、まず119番に通報し、その人のそばを離れないでください。",
}
# signs of an emergency now: a person collapsed, not breathing, bleeding, poisoned, or at risk of suicide. Patterns,
# not exact strings, so polite and plain forms (意識がない / 意識がありません), contractions ("isn't breathing") and
# third persons ("he wants to die") match; phrases about a person now, not words that also describe servers or
# feelings ("not breathing room", 薬の飲み方, 昨日は飲みすぎた), a question about a case (飲みすぎてしまったとき) or a
# message to someone else ("tell him to kill himself")
_EN_URGENT = (
    r"(?:\bnot|n't|\bstopped|\bno longer)\s+breathing\b(?!\s+(?:room|space))",
    r"\b(?:he|she|they|i|someone|somebody|colleague|coworker|child|baby)\s+can(?:'t|not|\s+not)\s+breathe\b",
    r"\bunconscious\b", r"\bheart attack\b", r"\bhaving a seizure\b", r"\bbleeding (?:heavily|badly)\b",
    r"(?:won't|will not|doesn't|does not|can't|cannot) stop bleeding\b", r"\bbleeding (?:won't|will not|doesn't|does not) stop\b",
    r"\boverdosed\b", r"\btook an overdose\b", r"\btook too many (?:[a-z-]+ )?(?:pills|tablets)\b",
    r"\bkill(?:ing)? myself\b", r"\bend my (?:own )?life\b", r"\bwant(?:s|ed)? to die\b", r"\bsuicidal\b",
    r"\b(?:going to|gonna|about to|planning to)\s+(?:commit\s+)?suicide\b",  # intent, anyone's
    r"\bi(?:'m| am|'ve been| have been)?\s+(?:want to|thinking (?:about|of))\s+(?:committing\s+|commit\s+)?suicide\b",
    r"\bcall an ambulance\b",
)
_JA_URGENT = (
    r"(?:息|呼吸)を?して(?:い)?(?:ない|ません)", r"呼吸が(?:止まっ|止まり|ない|無い|ありません)", r"息が止まっ",
    r"意識が(?:ない|無い|ありません|戻らない|戻りません)", r"意識を失", r"意識不明", r"心停止", r"心肺停止", r"心臓発作",
    r"(?:けいれん|痙攣|ケイレン)(?:して|を起こし)", r"血が止まら(?:ない|ず)", r"血が止まりません", r"大量(?:に)?出血",
    r"救急車を呼", r"119番", r"過剰摂取し", r"(?:薬|錠剤)を大量に飲ん",
    r"(?:薬|錠剤)を(?:大量に)?(?:飲みすぎ|飲み過ぎ)(?:た|ました|てしまった|てしまいました)(?!とき|時|ら|場合)",
    r"死にたい", r"自殺したい", r"消えたい", r"命を絶ちたい", r"自殺するつもり(?![はも])",
    # an intent thought now, not a past one (思ったことがある人) or someone else's (自殺しようとする人)
    r"(?:(?:自殺|自死)しよう|死のう)と(?:思|考)(?!った(?:こと|人)|えた(?:こと|人)|う人|える人)",
)
_PATTERN = re.compile("|".join(_EN_URGENT + _JA_URGENT))


def is_urgent(request: str | None, context: str | None = None) -> bool:
    """Whether request + context name a sign of an emergency (on the raw text, casefolded, and on its matching
    form, so look-alike letters and letter spacing do not hide one; curly apostrophes read as straight ones)."""
    raw = f"{context or ''} {request or ''}".translate(APOSTROPHES).replace("`", "'")
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
    the table's hits per category (``categories.keyword_scores``). Medical where the table found nothing or
    medical is among its top desks; else ``routed`` where it is one of the top desks, else the table's first top
    desk (a learned router's guess, made where the table found nothing or disagrees with it, never decides an
    emergency). Without ``keywords``, ``routed`` is the table's own choice."""
    if keywords is None:
        return URGENT_CATEGORY if routed == FALLBACK_CATEGORY else routed
    top = max(keywords.values(), default=0)
    tops = [category for category, hits in keywords.items() if hits == top and hits > 0]
    if not tops or URGENT_CATEGORY in tops:
        return URGENT_CATEGORY
    return routed if routed in tops else tops[0]


def mark_urgent(result: dict, request: str | None) -> dict:
    """The emergency line first in the rationale (once), and the ``urgent`` flag."""
    notice = urgent_notice(request)
    rationale = result.get("rationale") or ""
    if not is_urgent_rationale(rationale):
        result["rationale"] = f"{notice} {rationale}" if rationale else notice
    result["flags"] = list(dict.fromkeys([*result.get("flags", []), URGENT_FLAG]))
    return result
