"""Which human an escalation goes to: a category from keywords of the request and its context.

SafetyHeadB decides ALLOW / REFUSE / ESCALATE; it has no category output, so routing uses this
transparent keyword table (Japanese and English) and falls back to ``general`` (the direct manager).
Keywords are matched on ``textforms.matching_form`` (look-alike letters mapped to Latin, spaced
letters joined, invisible characters removed) and on text decoded from base64, hex or percent
encoding, so "раsswоrd" in Cyrillic or "p a s s w o r d" still goes to security.
"""

from __future__ import annotations

import re

from ..core.schema import FALLBACK_CATEGORY
from .injection import encoded_payloads
from .textforms import matching_form, matching_forms, unleet

KEYWORDS = {  # the routing table of ../shared/SAFETY_POLICY.md ("Categories"), in both languages
    "medical": ["health", "medical", "diagnos", "medicine", "medication", "prescription", "illness", "sick leave",
                "mental", "symptom", "overdose", "injur", "self-harm", "suicid", "ambulance", "unconscious",
                "健康", "診断", "病気", "医療", "薬", "通院", "メンタル", "健診", "休職", "症状", "体調",
                "過剰摂取", "怪我", "けが", "救急", "自殺", "自傷", "死にたい", "倒れ", "意識がない"],
    "legal": ["legal", "lawyer", "contract", "lawsuit", "litigation", "compliance", "regulat", "copyright",
              "personal data", "personal information", "export control", "insider trading", "forged", "forgery",
              "forging", "fraud", "法務", "契約", "訴訟", "弁護士", "コンプライアンス", "規制", "著作権", "法的", "個人情報",
              "輸出管理", "インサイダー", "偽造", "詐欺"],
    "hr": ["harass", "salary", "evaluation", "promotion", "dismiss", "fire ", "hiring", "personnel", "overtime",
           "discriminat", "retaliat", "doxx", "ハラスメント", "パワハラ", "セクハラ", "給与", "人事", "評価", "昇進",
           "解雇", "採用", "残業", "差別", "報復", "懲戒"],
    "security": ["password", "credential", "access", "admin", "firewall", "vpn", "malware", "ransomware", "hack",
                 "phishing", "exploit", "root", "authentication", "incident", "パスワード", "権限", "アクセス",
                 "管理者", "ウイルス", "マルウェア", "不正", "脆弱性", "認証", "インシデント", "フィッシング", "監視"],
    "finance": ["invoice", "payment", "expense", "budget", "wire transfer", "bank", "accounting", "refund",
                "embezzl", "launder", "請求", "支払", "経費", "予算", "振込", "送金", "口座", "会計", "返金", "横領",
                "着服", "粉飾", "マネーロンダリング", "資金洗浄"],
}


def _pattern(keyword: str) -> str:
    """ASCII keywords match at a word start ("mental" not inside "departmental"; "harass" still finds
    "harassment"); Japanese has no spaces, so its keywords match anywhere."""
    return rf"\b{re.escape(keyword)}" if keyword.isascii() else re.escape(keyword)


def keyword_scores(request: str, context: str | None = None) -> dict[str, int]:
    """Keyword hits per category in request + context (and in text decoded from base64, hex or percent)."""
    raw = f"{context or ''} {request}"
    forms = [matching_form(t) for t in [raw, *encoded_payloads(raw)]]
    text = " ".join(forms + [unleet(forms[0])] + matching_forms(raw)[1:])  # a spaced word split by a wider gap
    return {cat: sum(len(re.findall(_pattern(k), text)) for k in words) for cat, words in KEYWORDS.items()}


def categorize(request: str, context: str | None = None) -> str:
    """The category with the most keyword hits in request + context (a tie: the first in the table); ``general``
    when none."""
    scores = keyword_scores(request, context)
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else FALLBACK_CATEGORY
