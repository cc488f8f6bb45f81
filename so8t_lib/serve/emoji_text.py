"""The invisible characters emoji are typed with, which hide nothing.

Phones and keyboards write a variation selector after a symbol (❤️, ☺︎, ‼️) or between a keycap's base and its
keycap mark (1️⃣), a zero-width joiner between two symbols (👨‍💻, ❤️‍🔥), and the flags of England, Scotland and
Wales as the black flag, their code in tag letters and a cancel tag. ``textforms.is_obfuscated`` reads invisible
characters as a sign of hiding, so every "Thanks ❤️" was flagged ``obfuscated_text``. Not let through: an emoji with
a letter, digit or mark of any script on both sides (pass❤️word, ｐａｓｓ❤️ｗｏｒｄ, 指❤️示, 1gn0❤️re: the patterns no
longer see the word; so Japanese with an emoji between two words stays flagged, as before), a symbol that NFKC reads
as a letter (ⓡ), tag characters that spell anything but those three flags (text smuggled in tags), and invisible
characters anywhere else.
"""

from __future__ import annotations

import re
import unicodedata

_VARIATION_SELECTORS = frozenset("\ufe0e\ufe0f")
_KEYCAP, _ZWJ = "\u20e3", "\u200d"
# a keycap (1️⃣) is read as one symbol, whose digit is no neighbouring letter (1️⃣2️⃣ is two keycaps, not a word);
# the stand-in, a noncharacter, counts its selector
_KEYCAP_SEQUENCE, _KEYCAP_STAND_IN = re.compile("[0-9#*]\ufe0f\u20e3"), "\ufdd0"
# the black flag, a recommended subdivision's code in tag letters, the cancel tag
_FLAG_CODES = ("gbeng", "gbsct", "gbwls")
_FLAG_TAGS = re.compile("\U0001f3f4(" + "|".join("".join(chr(0xE0000 + ord(c)) for c in code) for code in _FLAG_CODES)
                        + ")\U000e007f")
_TAGS = range(0xE0020, 0xE0080)


def _symbol(char: str) -> bool:
    """A character an emoji sequence is built on: a symbol or punctuation that NFKC does not read as a letter or
    digit (❤ ☺ ‼ ↔ 🏴 and the skin-tone modifiers; not ⓡ)."""
    return bool(char) and unicodedata.category(char)[0] in "SP" and not unicodedata.normalize("NFKC", char).isalnum()


def _in_sequence(char: str) -> bool:
    return _symbol(char) or char in _VARIATION_SELECTORS or char in (_ZWJ, _KEYCAP, _KEYCAP_STAND_IN) or \
        ord(char) in _TAGS


def _word_letter(char: str) -> bool:
    """A character a word is spelled with: a letter or digit of any script (also fullwidth or mathematical, which
    NFKC reads as letters), or a combining mark."""
    return bool(char) and (unicodedata.normalize("NFKC", char).isalnum() or unicodedata.category(char)[0] == "M")


def _placed_as_emoji(text: str, start: int, end: int) -> int:
    """How many invisible characters of the sequence ``text[start:end]`` stand where emoji put them."""
    count = sum(len(flag.group(1)) + 1 for flag in _FLAG_TAGS.finditer(text, start, end))  # + the cancel tag
    for at in range(start, end):
        char, before, after = text[at], text[at - 1: at], text[at + 1: at + 2]
        if char in _VARIATION_SELECTORS:
            count += _symbol(before)
        elif char == _KEYCAP_STAND_IN:
            count += 1
        elif char == _ZWJ:
            count += (_symbol(before) or before in _VARIATION_SELECTORS) and _symbol(after)
    return count


def emoji_invisibles(text: str) -> int:
    """How many of ``text``'s invisible characters are parts of emoji sequences that are not inside a word."""
    text = _KEYCAP_SEQUENCE.sub(_KEYCAP_STAND_IN, text)
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
