"""Text as the gate compares it: invisible characters out, look-alike letters mapped to Latin, accents
dropped, letter-spaced words joined.

An attacker who writes "раsswоrd" with Cyrillic letters, "ɪɢɴᴏʀᴇ" with small capitals, "pássword" or
"i̴g̴n̴o̴r̴e̴" with combining marks, "p a s s w o r d" with spaces, or hides a soft hyphen inside "ign\u00adore"
must meet the same flags and the same routing as the plain spelling. ``clean_text`` is what the model sees (NFKC, no invisible characters); ``matching_form``
is only for the pattern checks (injection flags, routing keywords), because mapping letters to
Latin would damage genuine text. The look-alike table is Unicode's confusables data as shipped by
the ``confusable-homoglyphs`` package, not a hand list.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# in core: the benchmark guards use them too
from ..core.unicode_text import (
    SPELLED_DOTLESS,
    combining_marks,
    latin_lookalikes,
    marked_latin,
    strip_invisible,
)
from .emoji_text import emoji_invisibles

_KANJI_KANA = r"\u30a1-\u30fa\u30fc\u3005\u4e00-\u9fff"
# a space (or a run of spaces; never a tab or a line break, which is how tables and lists are pasted) between two
# kanji or katakana: Japanese puts no spaces inside words ("リ ス ト", "単  価")
_SPACED_JA = re.compile(rf"(?<=[{_KANJI_KANA}]) +(?=[{_KANJI_KANA}])")
# ... and the sign of a word pulled apart: a kanji or katakana standing alone between spaces ("単 価 表")
_WORDISH = rf"\u3041-\u309f{_KANJI_KANA}"
_SPLIT_JA = re.compile(rf"(?<![{_WORDISH}])[{_KANJI_KANA}] +[{_KANJI_KANA}]|"
                       rf"[{_KANJI_KANA}] +[{_KANJI_KANA}](?![{_WORDISH}])")
# letters pulled apart: three or more single letters apart by runs of spaces ("p a s s", "p  a  s  s"), or four
# or more apart by a run of one mark ("p,a,s,s", "p..a..s..s") or a mark between spaces ("p . a . s . s"). Never
# tabs or line breaks (a pasted table: "A\tB\tC"), nor a mark followed by a space only (lists and initials:
# "a, b, c", "J. R. R."); three cells of a table ("| y | n | y |", "Y,N,Y", "A - B - C") are not a word.
_LETTER = r"[^\W\d_]"
_MARK_RUN = "|".join(f"{re.escape(mark)}+" for mark in ".,-_*·|/")
_BY_SPACES = rf"{_LETTER}(?: +{_LETTER}){{2,}}"
_BY_MARKS = rf"{_LETTER}(?:(?: +(?:{_MARK_RUN}) +|(?:{_MARK_RUN})){_LETTER}){{3,}}"
_SPACED_LETTERS = re.compile(rf"(?<!{_LETTER})(?:{_BY_MARKS}|{_BY_SPACES})(?!{_LETTER})")
_SPACES = re.compile(r"\s+")
# leetspeak: an ASCII word that mixes letters with digits or symbols read as letters ("p4ssw0rd",
# "p@$$w0rd", "!gnore"); e-mail addresses, mentions ("@alice") and a closing "!" ("thanks!") are left alone, and
# "|" is a pipe, not an "l" (a table, "admin|root")
_LEET_CHARS = "0-9a-z@$!"
# (both branches start only where a run of their characters starts and are possessive, as masking.EMAIL: on a long
# run of kanji or kana, which are \w, the address branch rescanned the run from every position, quadratic time)
_LEET_WORD = re.compile(rf"(?<![\w.%+-])[\w.%+-]++@[\w-]++(?:\.[\w-]++)+|(?<![{_LEET_CHARS}])[{_LEET_CHARS}]++")
_LEET = str.maketrans("013457@$!", "oieastasi")


def clean_text(text: str) -> tuple[str, int]:
    """NFKC, then invisible characters removed: the text the model decides on. Returns the number
    of invisible characters removed (a sign of obfuscation when non-zero)."""
    return strip_invisible(unicodedata.normalize("NFKC", text))


_KATAKANA_LETTERS = range(0x30A1, 0x30FD)  # ァ..ヺ, ・, ー: ー's script is Common, so an alias check missed 一 -> ー


@functools.cache
def _kana_lookalikes() -> tuple[dict[int, str], re.Pattern]:
    """Kanji that Unicode lists as confusable with a katakana (力 -> カ, 亻 -> イ, 口 -> ロ, 一 -> ー), and a
    pattern that finds them where they stand in for katakana: before a katakana, after a katakana
    not before a kanji, or at a word start before a katakana (so 協力, 人口 and サクラ工業 stay). A stand-in
    for the long mark ー only counts after a katakana (ー never starts a word: 一ヶ月, 一人, 統一 stay), and not
    before つ, ヶ or ヵ (データ一つ)."""
    from confusable_homoglyphs import categories, confusables

    table: dict[int, str] = {}
    for char, homoglyphs in confusables.confusables_data.items():
        if len(char) == 1 and categories.alias(char) == "HAN":
            for glyph in homoglyphs:
                if len(glyph["c"]) == 1 and ord(glyph["c"]) in _KATAKANA_LETTERS:
                    table[ord(char)] = glyph["c"]
                    break
    chars = "".join(chr(c) for c, kana in table.items() if kana != "ー")
    longs = "".join(chr(c) for c, kana in table.items() if kana == "ー")
    pattern = re.compile(rf"(?<![\u3040-\u309f\u3005\u4e00-\u9fff])[{chars}](?=[\u30a1-\u30fa\u30fc])|"
                         rf"(?<=[\u30a1-\u30fa\u30fc])[{chars}](?![\u3005\u4e00-\u9fff])|"
                         rf"(?<=[\u30a1-\u30fa\u30fc])[{longs}](?![\u3005\u4e00-\u9fffつヶヵ])")
    return table, pattern


def _kana_for_kanji(text: str) -> str:
    table, pattern = _kana_lookalikes()
    return pattern.sub(lambda m: table[ord(m.group())], text)


def skeleton(text: str) -> str:
    """Casefolded text with look-alike letters replaced by the letters they imitate: ASCII for
    other scripts' letters, katakana for kanji standing in a katakana word."""
    table = latin_lookalikes()
    return _kana_for_kanji(text.translate(table).casefold().translate(table))


def drop_marks(text: str) -> str:
    """Accents, zalgo and other combining marks dropped ('pássword', 'i̴g̴n̴o̴r̴e̴' -> 'password', 'ignore'), and
    Latin letters with a stroke or hook read as their letter (ø -> o); the kana voicing marks stay (が is not
    か). For the pattern checks only: the model reads the accents."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFD", text).translate(marked_latin()).translate(latin_lookalikes())
    return unicodedata.normalize("NFC", combining_marks().sub("", decomposed))


@functools.lru_cache(maxsize=4096)
def _is_latin(char: str) -> bool:
    return char.isascii() or "LATIN" in unicodedata.name(char, "")


@functools.cache
def _letter_clusters() -> tuple[re.Pattern, re.Pattern]:
    """A word as letters each with its marks, and one such letter: for reading a word after NFD."""
    marks = combining_marks().pattern
    return re.compile(rf"(?:{_LETTER}(?:{marks})?)+"), re.compile(rf"{_LETTER}(?:{marks})?")


def stacked_marks(cleaned: str) -> bool:
    """Marks that hide a word rather than spell one: three or more on one character (zalgo; on a Latin letter,
    counting those NFC composed), an overlay mark on a Latin letter (i̴: no orthography strikes through its
    letters), or a mark on every letter of a Latin word of five or more (a dot under each letter of
    'instructions'). A mark or two on some letters is spelling (é, Vietnamese ệ, Yoruba ọ̀ in Adébáyọ̀, which NFC
    cannot compose), and NFKC writes a spacing accent as a space and a mark ("don´t", "¨"): not counted."""
    if cleaned.isascii():
        return False
    for run in combining_marks().finditer(cleaned):
        base = cleaned[run.start() - 1] if run.start() else " "
        if base.isspace():
            continue
        if run.end() - run.start() >= 3 or (_is_latin(base) and any(unicodedata.combining(m) == 1 for m in run.group())):
            return True
    decomposed = unicodedata.normalize("NFD", cleaned)  # é is e and a mark here
    if not combining_marks().search(decomposed):
        return False
    words, letter = _letter_clusters()
    for word in words.finditer(decomposed):
        # the Latin words inside a \w run ("passwordを" is one), each as its letters with their marks
        latin_only = "".join(c if _is_latin(c[0]) else " " for c in letter.findall(word.group()))
        for latin in latin_only.split():
            clusters = letter.findall(latin)
            if any(len(c) > 3 for c in clusters) or (len(clusters) >= 5 and all(len(c) > 1 for c in clusters)):
                return True
    return False


_GAPS = re.compile(r" +")


def _joined(spaced: re.Match, word_gaps: bool = True) -> str:
    """One run of spaced letters joined; with ``word_gaps`` a gap of spaces wider than the narrowest stays as one
    space, since it parts words ('i g n o r e   y o u r' -> 'ignore your': one word would hide from the
    word-anchored checks)."""
    text = spaced.group()
    if not re.fullmatch(rf"(?:{_LETTER}| )+", text):  # apart by marks: p,a,s,s and p . a . s
        return re.sub(r"[^\w]|_", "", text)
    narrowest = min(len(gap) for gap in _GAPS.findall(text))
    return _GAPS.sub(lambda gap: " " if word_gaps and len(gap.group()) > narrowest else "", text)


def join_spaced_letters(text: str, word_gaps: bool = True) -> str:
    """'p a s s w o r d', 'p  a  s  s', 'p,a,s,s', 'p . a . s . s' -> 'password' (words of one letter each, see
    ``_SPACED_LETTERS``), 'r e s e t   m y' -> 'reset my' (with ``word_gaps``, wider gaps part words); 'リ ス ト'
    -> 'リスト' (no space between two kanji or katakana)."""
    return _SPACED_JA.sub("", _SPACED_LETTERS.sub(lambda m: _joined(m, word_gaps), text))


def _unleet_word(word: str) -> str:
    if ("@" in word and "." in word) or word.startswith("@"):
        return word  # an e-mail address (the first branch of _LEET_WORD) or a mention ("@alice")
    body = word.rstrip("!")
    if not re.search("[a-z]", body):
        return word  # a price ("$5"), a number, "!!"
    return body.translate(_LEET) + word[len(body):]


def unleet(text: str) -> str:
    """'ign0r3 pr3v10u5' -> 'ignore previous', 'p@$$w0rd' -> 'password', '!gnore' -> 'ignore' (only in
    words that mix ASCII letters with digits or @ $ !; for the pattern checks, never the model's text)."""
    return _LEET_WORD.sub(lambda m: _unleet_word(m.group()), text)


# a spacing acute used as an apostrophe ("don´t"), which NFKC writes as a space and a combining acute ("don t")
_SPACING_ACUTE = re.compile(" \u0301")
# what phones and word processors type for an apostrophe ("don’t": iOS writes ’ by default), read as a straight one
# (not a backtick: in a request it mostly opens a code span, which the patterns must not read as a quote)
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "\u00b4": "'"})


def matching_form(text: str, word_gaps: bool = True) -> str:
    """The form pattern checks run on: clean, casefolded, look-alikes mapped to Latin, combining marks
    dropped, curly apostrophes straight, spaced letters joined, runs of white space collapsed to one space
    (``unleet`` is a second form)."""
    cleaned = _SPACING_ACUTE.sub("'", clean_text(text)[0]).translate(APOSTROPHES)
    return _SPACES.sub(" ", join_spaced_letters(drop_marks(skeleton(cleaned)), word_gaps)).strip()


def matching_forms(text: str) -> list[str]:
    """``matching_form``, and where it differs, the form with every spaced run joined whole: a wider gap parts
    words ('i g n o r e   y o u r'), but one put inside a word ('j a i l  b r e a k') must not split it."""
    forms = [matching_form(text), matching_form(text, word_gaps=False)]
    return forms[:1] if forms[0] == forms[1] else forms


def is_obfuscated(raw: str, cleaned: str) -> bool:
    """True when the text hides its letters: invisible characters other than those inside emoji, look-alike
    letters (another script's, small capitals; not dotless ı, which Turkish is spelled with), marks that hide a
    word (``stacked_marks``), or letter-spaced words."""
    invisible = strip_invisible(raw)[1]
    if (invisible and invisible > emoji_invisibles(raw)) or stacked_marks(cleaned):
        return True
    folded = cleaned.casefold()
    return skeleton(cleaned) != folded.translate(SPELLED_DOTLESS) or _SPACED_LETTERS.search(folded) is not None or \
        _SPLIT_JA.search(cleaned) is not None or len(_SPACED_JA.findall(cleaned)) >= 3
