"""The invisible characters emoji are typed with, which hide nothing.

Phones and keyboards write a variation selector after a symbol (❤️, ☺︎, ‼️) or between a keycap's base and its
keycap mark (1️⃣), a zero-width joiner between two symbols (👨‍💻, ❤️‍🔥), and a subdivision flag as the black flag,
four to six tag letters and a cancel tag (England's). ``textforms.is_obfuscated`` reads invisible characters as a
sign of hiding, so every "Thanks ❤️" was flagged ``obfuscated_text``. Not let through: an emoji put inside a word
(pass❤️word, パス❤️ワード: the patterns no longer see the word), a symbol that NFKC reads as a letter (ⓡ), tag
characters that spell more than a flag's code (text smuggled in tags), and invisible characters anywhere else.
"""

from __future__ import annotations

import re
import unicodedata

_VARIATION_SELECTORS = frozenset("\ufe0e\ufe0f")
_KEYCAP_BASES, _KEYCAP, _ZWJ = frozenset("0123456789#*"), "\u20e3", "\u200d"
# the black flag, a region's code in tag letters and digits (gbeng, gbsct, usca), the cancel tag
_FLAG_TAGS = re.compile("\U0001f3f4([\U000e0030-\U000e0039\U000e0061-\U000e007a]{4,6}\U000e007f)")
_TAGS = range(0xE0020, 0xE0080)
_KATAKANA = range(0x30A1, 0x30FD)  # ァ..ヺ, ・, ー: a katakana word (パスワード) parted by an emoji is hidden too


def _symbol(char: str) -> bool:
    """A character an emoji sequence is built on: a symbol or punctuation that NFKC does not read as a letter or
    digit (❤ ☺ ‼ ↔ 🏴 and the skin-tone modifiers; not ⓡ)."""
    return bool(char) and unicodedata.category(char)[0] in "SP" and not unicodedata.normalize("NFKC", char).isalnum()


def _in_sequence(char: str) -> bool:
    return _symbol(char) or char in _VARIATION_SELECTORS or char in (_ZWJ, _KEYCAP) or ord(char) in _TAGS


def _word_letter(char: str) -> bool:
    """A letter of a word that spaces or script changes bound: Latin (with accents) or katakana."""
    return bool(char) and (char.isalpha() and ord(char) < 0x250 or ord(char) in _KATAKANA)


def _placed_as_emoji(text: str, start: int, end: int) -> int:
    """How many invisible characters of the sequence ``text[start:end]`` stand where emoji put them."""
    count = sum(len(flag.group(1)) for flag in _FLAG_TAGS.finditer(text, start, end))
    for at in range(start, end):
        char, before, after = text[at], text[at - 1: at], text[at + 1: at + 2]
        if char in _VARIATION_SELECTORS:
            count += _symbol(before) or (before in _KEYCAP_BASES and after == _KEYCAP)
        elif char == _ZWJ:
            count += (_symbol(before) or before in _VARIATION_SELECTORS) and _symbol(after)
    return count


def emoji_invisibles(text: str) -> int:
    """How many of ``text``'s invisible characters are parts of emoji sequences that are not inside a word."""
    count, at = 0, 0
    while at < len(text):
        if not _in_sequence(text[at]):
            at += 1
            continue
        end = at
        while end < len(text) and _in_sequence(text[end]):
            end += 1
        if not (_word_letter(text[at - 1: at]) and _word_letter(text[end: end + 1])):
            count += _placed_as_emoji(text, at, end)
        at = end
    return count
