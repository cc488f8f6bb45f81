"""Code points no reader sees, in one place: the runtime removes them before the model reads a request
(``serve.textforms``), and the benchmark guards drop them before comparing prompts (``data.corpus.text``), so
the two layers agree on what "the same text" is."""

from __future__ import annotations

import functools
import re
import unicodedata

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt) outside the format category Cf, which the
# runtime takes from unicodedata: the combining grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian
# free variation selectors, variation selectors, and the unassigned default-ignorable ranges.
IGNORABLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2065, 0x2065), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
IGNORABLE_CODE_POINTS: frozenset[int] = frozenset(cp for lo, hi in IGNORABLE_RANGES for cp in range(lo, hi + 1))

_KEEP_CONTROLS = frozenset("\t\n\r")
# what ends a line or steers the terminal a text is shown in: C0 and C1 controls, the line and paragraph separators,
# bidi embeddings, overrides and isolates. A name or a reason holding one could forge or hide lines of a log or a
# listing: the review schema and the queue refuse them, the application log writes them as escapes.
LINE_STEERING_RANGES: tuple[tuple[int, int], ...] = (
    (0x00, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029), (0x202A, 0x202E), (0x2066, 0x2069))
LINE_STEERING: frozenset[str] = frozenset(chr(cp) for lo, hi in LINE_STEERING_RANGES for cp in range(lo, hi + 1))


def steers_lines(text: str) -> bool:
    """Whether ``text`` holds a character of ``LINE_STEERING``."""
    return not LINE_STEERING.isdisjoint(text)


def _ranges_to_class(points: list[int]) -> str:
    """A regex character class for sorted code points, written as ranges."""
    parts, start, prev = [], None, None
    for cp in points:
        if start is None:
            start = prev = cp
        elif cp == prev + 1:
            prev = cp
        else:
            parts.append((start, prev))
            start = prev = cp
    if start is not None:
        parts.append((start, prev))
    return "[" + "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in parts) + "]"


@functools.cache
def _invisible_pattern() -> re.Pattern:
    """Format characters (Cf: soft hyphen, bidi isolates and overrides, zero-width marks, tags),
    controls other than tab and newlines, and the other default-ignorable code points."""
    points = set()
    for lo, hi in ((0, 0x2FFFF), (0xE0000, 0xE0FFF)):
        for cp in range(lo, hi + 1):
            cat = unicodedata.category(chr(cp))
            if cat == "Cf" or (cat == "Cc" and chr(cp) not in _KEEP_CONTROLS):
                points.add(cp)
    for lo, hi in IGNORABLE_RANGES:  # the default-ignorable code points outside Cf
        points.update(range(lo, hi + 1))
    return re.compile(_ranges_to_class(sorted(points)))


# the kana voicing marks: NFD splits が into か + U+3099, and dropping it would read another word
_KANA_MARKS = frozenset({0x3099, 0x309A})


@functools.cache
def combining_marks() -> re.Pattern:
    """Runs of combining marks (Mn, Me: accents, overlays, zalgo) other than the kana voicing marks."""
    points = [cp for cp in range(0x300, 0x20000) if cp not in _KANA_MARKS
              and unicodedata.category(chr(cp)) in ("Mn", "Me")]
    return re.compile(_ranges_to_class(points) + "+")


def strip_invisible(text: str) -> tuple[str, int]:
    """(text without invisible characters, how many were removed)."""
    return _invisible_pattern().subn("", text)


# scripts the corpus is written in: their letters are never remapped (〇 is not "O" in Japanese); Latin letters that
# no word of the corpus's languages is spelled with are (``_latin_stand_ins``)
_OWN_SCRIPTS = frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"})
# Latin letters named after an ASCII letter: small capitals (ᴀ ʀ ɢ ɴ, and ᶦ after NFKC), dotless ı and ȷ; with
# "WITH ..." the letter carries a stroke, hook or bar that no decomposition removes (ø ł đ ɓ)
_LATIN_NAME = re.compile(r"LATIN (?:SMALL |CAPITAL )?LETTER (SMALL CAPITAL |DOTLESS )?([A-Z])( WITH .+)?")
_LATIN_BLOCKS = range(0x80, 0x1E000)  # Latin letters outside these are fullwidth (NFKC makes them ASCII)


def _ascii_look_alikes(char: str) -> list[str]:
    """The single ASCII letters Unicode's confusables data lists for ``char`` (and the l / I partner of each)."""
    from confusable_homoglyphs import confusables

    def letters(glyphs):
        return [g["c"] for g in glyphs if len(g["c"]) == 1 and g["c"].isascii() and g["c"].isalpha()]

    found = letters(confusables.confusables_data.get(char, ()))
    for letter in list(found):  # the table lists one of l / I; the other is its own look-alike
        found += letters(confusables.confusables_data.get(letter, ()))
    return found


def _latin_letters(marked: bool) -> dict[int, str]:
    """Latin letters without a decomposition that are an ASCII letter by name: plain stand-ins (small capitals,
    dotless) when ``marked`` is False, letters with a stroke, hook or bar when True."""
    table: dict[int, str] = {}
    for cp in _LATIN_BLOCKS:
        char = chr(cp)
        found = _LATIN_NAME.fullmatch(unicodedata.name(char, ""))
        if found and char.isalpha() and not unicodedata.decomposition(char) and bool(found.group(3)) == marked:
            table[cp] = found.group(2).lower()
    return table


def _latin_stand_ins() -> dict[int, str]:
    """Latin letters that only stand in for an ASCII letter: small capitals and dotless letters by name, and the
    Latin letters Unicode's confusables data lists as an ASCII letter (ɑ, ɡ, ɩ). Dotless ı and ȷ are among them
    for matching, though words are spelled with them (``SPELLED_DOTLESS``)."""
    from confusable_homoglyphs import categories, confusables

    table = _latin_letters(marked=False)
    for char in confusables.confusables_data:
        if len(char) == 1 and not char.isascii() and char.isalpha() and categories.alias(char) == "LATIN":
            letters = _ascii_look_alikes(char)
            if letters and ord(char) not in table and not unicodedata.decomposition(char):
                table[ord(char)] = letters[0].lower()
    return table


@functools.cache
def latin_lookalikes() -> dict[int, str]:
    """Letters that imitate an ASCII letter, mapped to it: other scripts' letters that Unicode lists as confusable
    (Cyrillic а -> a, Greek ο -> o, ...) and Latin stand-ins (small capital ᴀ -> a, dotless ı -> i). Kanji, kana
    and ordinary Latin letters stay as they are. In core: the runtime's pattern checks (``serve.textforms``) and
    the benchmark copy guard read look-alikes the same way."""
    from confusable_homoglyphs import categories, confusables

    table: dict[int, str] = {}
    for char in confusables.confusables_data:
        if len(char) != 1 or char.isascii() or not char.isalpha() or categories.alias(char) in _OWN_SCRIPTS:
            continue
        ascii_letters = _ascii_look_alikes(char)
        same_case = [g for g in ascii_letters if g.isupper() == char.isupper()]  # І -> I, not l
        if ascii_letters:
            table[ord(char)] = (same_case or ascii_letters)[0].lower()
    return table | _latin_stand_ins()


# dotless ı and ȷ: read as i and j for matching like any stand-in, but Turkish and Azerbaijani spell words with ı
# (Yıldız, Kadıköy), so unlike a small capital they are no sign that a text hides its letters
SPELLED_DOTLESS: dict[int, str] = {0x0131: "i", 0x0237: "j"}


@functools.cache
def marked_latin() -> dict[int, str]:
    """Latin letters that are an ASCII letter with a stroke, hook or bar (ø -> o, ł -> l, đ -> d): for the
    pattern checks only, as accents are dropped there. Names are spelled with them (Søren, Łódź), so unlike
    ``latin_lookalikes`` they are no sign that a text hides its letters."""
    return _latin_letters(marked=True)
