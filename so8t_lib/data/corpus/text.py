"""What "the same text" means for the corpus, and seeded randomness that does not depend on the process.

``normalize_text`` is the one notion of sameness for deduplication and the leakage guards; ``seeded_rng``
gives every family its own generator, so a build is byte-identical whatever order it runs in.
"""

from __future__ import annotations

import random
import re
import unicodedata
import zlib

_WS_RE = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """NFKC + casefold + collapsed whitespace: the one notion of "same text" for dedup and leakage.

    NFKC folds full-width ASCII and half-width katakana back, so a width-only variant
    counts as a duplicate of its source.
    """
    return _WS_RE.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def stable_int(*parts: object) -> int:
    """A process-independent hash (zlib.crc32; Python's hash() is salted per process)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def seeded_rng(seed: int, *parts: object) -> random.Random:
    return random.Random(int(seed) * 4_294_967_296 + stable_int(*parts))
