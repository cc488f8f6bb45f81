"""Code points no reader sees, in one place: the runtime removes them before the model reads a request
(``serve.textforms``), and the benchmark guards drop them before comparing prompts (``data.corpus.text``), so
the two layers agree on what "the same text" is."""

from __future__ import annotations

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt) outside the format category Cf, which the
# runtime takes from unicodedata: the combining grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian
# free variation selectors, variation selectors, and the unassigned default-ignorable ranges.
IGNORABLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2065, 0x2065), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
IGNORABLE_CODE_POINTS: frozenset[int] = frozenset(cp for lo, hi in IGNORABLE_RANGES for cp in range(lo, hi + 1))
