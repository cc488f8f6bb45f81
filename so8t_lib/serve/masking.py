"""Masking personal data: e-mail addresses, phone numbers, payment card numbers, 12-digit individual
numbers (マイナンバー) and names marked by an honorific or a title. Used on task responses, on every
stored input, user id and note, and on the escalation queue.

The text is NFKC-normalised first, so full-width ``ｔａｎａｋａ＠ｅｘａｍｐｌｅ．ｃｏｍ`` or
``０９０－１２３４－５６７８`` is masked like its ASCII form. Every pattern runs in linear time: a
match can only start where a run of its characters starts (look-behind guards), and the repeats
are possessive or bounded, so a long run of letters or digits is scanned once, not once per
position. Names without an honorific or a title ("Tanaka Taro") are not recognised.
"""

from __future__ import annotations

import re
import unicodedata

EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)+")
_SEP = r"[ \-‐‑‒–—―−ー]"
# 13-19 digits in groups (cards) before 12-digit My Number and phones, so the longest match wins.
CARD = re.compile(rf"(?<!\d)(?:\d{_SEP}?){{12,18}}\d(?!\d)")
MY_NUMBER = re.compile(rf"(?<!\d)\d{{4}}{_SEP}?\d{{4}}{_SEP}?\d{{4}}(?!\d)")
PHONE = re.compile(rf"(?<![0-9A-Za-z+])(?:\+\d{{1,3}}{_SEP}?\d{{1,4}}|\(?0\d{{1,4}}\)?){_SEP}?\d{{1,4}}{_SEP}?\d{{3,4}}(?!\d)")
_HONORIFIC = r"(?:さん|様|さま|サマ|くん|君|ちゃん|氏|殿|先生|部長|課長|係長|主任|社長|専務|常務|室長|所長|支店長|本部長|次長)"
NAME_JA = re.compile(rf"(?<![\u3005\u4e00-\u9fff\u30a1-\u30fa\u30fc])([\u3005\u4e00-\u9fff]{{1,6}}|[\u30a1-\u30fa\u30fc]{{2,8}})"
                     rf"(?={_HONORIFIC})")
# words before an honorific that are roles or set phrases, not names (お客様, 皆さん, ご苦労様, ご担当者様)
_NOT_NAMES = frozenset({"客", "皆", "苦労", "担当者", "担当", "先方", "相手", "上司", "同僚", "部下", "社員", "世話", "奥",
                        "神", "王", "患者", "各位", "利用者", "管理者", "責任者", "関係者", "皆々", "方々", "御社", "貴社",
                        "営業", "経理", "人事", "総務", "法務", "技術", "開発", "支店", "本部", "部", "課", "係"})
NAME_EN = re.compile(r"\b((?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+)[A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)?")
NAME_SAN = re.compile(r"\b[A-Z][a-z]+(-(?:san|sama|kun|chan|sensei|bucho|kacho|shacho))\b")


def _ja_name(match: re.Match) -> str:
    return match.group() if match.group(1) in _NOT_NAMES else "[NAME]"


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[MY_NUMBER]" if len(digits) == 12 else "[CARD]"  # any 13-19 digit run: masking beats leaking


def mask_personal_data(text: str) -> str:
    """The text (NFKC) with personal identifiers replaced by ``[EMAIL]``, ``[CARD]``,
    ``[MY_NUMBER]``, ``[PHONE]`` and ``[NAME]``."""
    text = unicodedata.normalize("NFKC", text)
    text = EMAIL.sub("[EMAIL]", text)
    text = CARD.sub(_card, text)
    text = MY_NUMBER.sub("[MY_NUMBER]", text)
    text = PHONE.sub("[PHONE]", text)
    text = NAME_EN.sub(r"\1[NAME]", text)
    text = NAME_SAN.sub(lambda m: f"[NAME]{m.group(1)}", text)
    return NAME_JA.sub(_ja_name, text)
