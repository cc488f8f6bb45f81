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
from .textforms import matching_form, unleet

KEYWORDS = {
    "medical": ["health", "medical", "diagnos", "medicine", "prescription", "illness", "sick leave", "mental",
                "健康", "診断", "病気", "医療", "薬", "通院", "メンタル", "健診", "休職"],
    "legal": ["legal", "lawyer", "contract", "lawsuit", "litigation", "compliance", "regulation", "copyright",
              "法務", "契約", "訴訟", "弁護士", "コンプライアンス", "規制", "著作権", "法的"],
    "hr": ["harass", "salary", "evaluation", "promotion", "dismiss", "fire ", "hiring", "personnel", "overtime",
           "ハラスメント", "パワハラ", "セクハラ", "給与", "人事", "評価", "昇進", "解雇", "採用", "残業"],
    "security": ["password", "credential", "access", "admin", "firewall", "vpn", "malware", "hack", "phishing",
                 "exploit", "root", "パスワード", "権限", "アクセス", "管理者", "ウイルス", "マルウェア", "不正", "脆弱性"],
    "finance": ["invoice", "payment", "expense", "budget", "wire transfer", "bank", "accounting", "refund",
                "請求", "支払", "経費", "予算", "振込", "送金", "口座", "会計", "返金"],
}


def _pattern(keyword: str) -> str:
    """ASCII keywords match at a word start ("mental" not inside "departmental"; "harass" still finds
    "harassment"); Japanese has no spaces, so its keywords match anywhere."""
    return rf"\b{re.escape(keyword)}" if keyword.isascii() else re.escape(keyword)


def categorize(request: str, context: str | None = None) -> str:
    """The category with the most keyword hits in request + context; ``general`` when none."""
    raw = f"{context or ''} {request}"
    forms = [matching_form(t) for t in [raw, *encoded_payloads(raw)]]
    text = " ".join(forms + [unleet(forms[0])])
    scores = {cat: sum(len(re.findall(_pattern(k), text)) for k in words) for cat, words in KEYWORDS.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else FALLBACK_CATEGORY
