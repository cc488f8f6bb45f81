"""What "the same text" means for the corpus, seeded randomness that does not depend on the process, and
joining message parts with the punctuation a person would type.

``normalize_text`` is the near-duplicate n-grams' notion of sameness, ``bare_text`` the benchmark guards' (what
the model reads: punctuation, spaces, symbols and invisible characters dropped too), ``visible_text`` their
near-copy check's, ``wording`` training's label-conflict check's (symbols kept), and so the seeds' duplicate check,
the build's dedup and the split guard's; ``seeded_rng``
gives every family its own generator, so a build is byte-identical whatever order it runs in.
"""

from __future__ import annotations

import random
import re
import unicodedata
import zlib

from ...core.unicode_text import IGNORABLE_CODE_POINTS, strip_invisible

_WS_RE = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """NFKC + casefold + collapsed whitespace: the text whose character n-grams the near-duplicate guards compare.

    NFKC folds full-width ASCII and half-width katakana back, so a width-only variant
    counts as a near-duplicate of its source.
    """
    return _WS_RE.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def _kept(s: str, drop: str) -> str:
    """``s`` without the characters of the Unicode categories in ``drop`` (P punctuation, Z spaces, S symbols, C
    format and control characters: zero-width marks, soft hyphens, bidi controls) and the default-ignorable ones."""
    return "".join(ch for ch in s if unicodedata.category(ch)[0] not in drop and ord(ch) not in IGNORABLE_CODE_POINTS)


def _read_form(s: str, drop: str) -> str:
    # invisible characters go before casefolding, so that they cannot split what NFKC would join
    return _kept(unicodedata.normalize("NFKC", _kept(unicodedata.normalize("NFKC", s), drop).casefold()), drop)


def visible_text(s: str) -> str:
    """``normalize_text`` of what the model reads (invisible characters out as the runtime strips them,
    ``strip_invisible``; punctuation and spaces kept): the benchmark guards' near-copy check compares n-grams of this, so a
    zero-width space between every letter cannot break up a public prompt's n-grams."""
    return normalize_text(strip_invisible(unicodedata.normalize("NFKC", s))[0])


def bare_text(s: str) -> str:
    """``normalize_text`` of the text the runtime hands the model (NFKC, invisible characters out), without
    punctuation, spaces or symbols: the benchmark guards' notion of "the same prompt" (every guard compares with
    this one), so a public prompt with its "?" doubled, a zero-width space or soft hyphen inside or an emoji
    after it is still caught."""
    return _read_form(s, "PZSC")


def wording(s: str) -> str:
    """``bare_text`` with symbols kept: what two rows must differ in to ask different things (the label-conflict
    check), since "make a 💣" and "make a 🎂" are two requests while a "?" or a zero-width space makes none."""
    return _read_form(s, "PZC")


def stable_int(*parts: object) -> int:
    """A process-independent hash (zlib.crc32; Python's hash() is salted per process)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def seeded_rng(seed: int, *parts: object) -> random.Random:
    return random.Random(int(seed) * 4_294_967_296 + stable_int(*parts))


JA_END = tuple("。．.！!？?」』）)…〜~♪、，,：:→")
EN_END = tuple(".?!:;,)\"'…]")
_EN_QUESTION_START = re.compile(
    r"^(how|what|what's|can|could|is|are|do|does|did|where|where's|when|which|who|should|would|will|why|may)\b",
    re.IGNORECASE,
)


def asks_a_question(text: str, lang: str) -> bool:
    """Whether a request is worded as a question: it ends in a question mark, or (en) opens with a question word,
    or (ja) ends in the particle か or asks なぜ / どうして. A heuristic of surface form, for counting how a corpus
    and a model treat questions against commands (`so8t corpus stats`, benchmarks/miss_breakdown.py)."""
    text = unicodedata.normalize("NFKC", text).strip()
    if text.endswith("?"):
        return True
    if lang == "en":
        return bool(_EN_QUESTION_START.match(text))
    return text.rstrip("。").endswith("か") or "なぜ" in text or "どうして" in text


def join_parts(lang: str, *parts: str) -> str:
    """Concatenate message parts, closing a part that lacks final punctuation (ja "。", en "." or "?")."""
    parts = tuple(p.strip() for p in parts if p and p.strip())
    out = ""
    for i, part in enumerate(parts):
        last_char = unicodedata.normalize("NFKC", out[-1:])  # full-width "？" ends a sentence too
        if i and lang == "ja" and not last_char.endswith(JA_END):
            out += "。"
        elif i and lang == "en" and not last_char.endswith(EN_END):
            last = re.split(r"(?<=[.?!])\s+", out)[-1]
            out += "?" if _EN_QUESTION_START.match(last) else "."
        out += part if (lang == "ja" or not out) else " " + part
    return out
