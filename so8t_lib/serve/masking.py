"""Masking personal data: e-mail addresses, phone numbers, payment card numbers and 12-digit
individual numbers (マイナンバー). Used on task responses and, by default, on audit-log inputs."""

from __future__ import annotations

import re

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# 13-19 digits in groups (cards) before 12-digit My Number and phones, so the longest match wins.
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
MY_NUMBER = re.compile(r"(?<!\d)\d{4}[ -]?\d{4}[ -]?\d{4}(?!\d)")
PHONE = re.compile(r"(?<![\d\w+])(?:\+\d{1,3}[ -]?\d{1,4}|\(?0\d{1,4}\)?)[ -]?\d{1,4}[ -]?\d{3,4}(?!\d)")


def mask_personal_data(text: str) -> str:
    """The text with personal identifiers replaced by ``[EMAIL]``, ``[CARD]``, ``[MY_NUMBER]``, ``[PHONE]``."""
    text = EMAIL.sub("[EMAIL]", text)

    def card(match: re.Match) -> str:
        digits = re.sub(r"\D", "", match.group())
        if len(digits) == 12:
            return "[MY_NUMBER]"
        return "[CARD]"  # any 13-19 digit run: masking an order number beats leaking a card

    text = CARD.sub(card, text)
    text = MY_NUMBER.sub("[MY_NUMBER]", text)
    return PHONE.sub("[PHONE]", text)
