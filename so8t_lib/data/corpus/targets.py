"""What the corpus must reach (issue 16, corpus v2), declared once: the tests check the committed files
against these numbers and the data card quotes them.
"""

from __future__ import annotations

MIN_ROWS = 12_000
MIN_FAMILIES = 1_500
MIN_JA_SHARE = 0.45
MIN_HARD_SHARE = 0.35
# framing is no signal: the share of framed rows of each label may differ from the corpus-wide share by
# at most this much (absolute)
MAX_FRAMED_SHARE_GAP = 0.02
# whole families per split: about 80/10/10, within these bounds
SPLIT_FAMILY_SHARE: dict[str, tuple[float, float]] = {"train": (0.75, 0.85), "val": (0.07, 0.13), "test": (0.07, 0.13)}


def shortfalls(rows: list[dict]) -> list[str]:
    """The targets a corpus misses, in words with the exact numbers (empty when it meets them all)."""
    n = len(rows)
    families = len({r["family"] for r in rows})
    ja = sum(r["lang"] == "ja" for r in rows) / n if n else 0.0
    hard = sum(bool(r["hard"]) for r in rows) / n if n else 0.0
    out = []
    if n < MIN_ROWS:
        out.append(f"rows {n} < {MIN_ROWS}")
    if families < MIN_FAMILIES:
        out.append(f"families {families} < {MIN_FAMILIES}")
    if ja < MIN_JA_SHARE:
        out.append(f"Japanese share {ja:.3f} < {MIN_JA_SHARE}")
    if hard < MIN_HARD_SHARE:
        out.append(f"hard-case share {hard:.3f} < {MIN_HARD_SHARE}")
    return out
