"""The safety corpus: seeds (``seeds``), phrase pools (``phrases``), surface variants (``transforms``),
jailbreak framings (``framings``), near-duplicates (``neardup``), splits (``splits``), the leakage guards
(``guard``), the build (``build``), its statistics (``stats``), the label audit (``audit``) and the
acceptance targets (``targets``).

``so8t corpus build | stats | check | audit`` (``python -m so8t_lib.data.corpus ...``) runs them.
"""

from .build import build_corpus, family_groups, generate_rows
from .framings import FRAMING_GROUPS, FRAMINGS, FRAMINGS_PER_FAMILY, encode, frame
from .guard import leakage_report
from .neardup import GROUP_THRESHOLD, NEAR_DUP_THRESHOLD, NGRAM, near_duplicate_pairs, nearest_pairs
from .seeds import CONTRASTS, HARD_KINDS, HAZARDS, Seed, load_seeds
from .splits import SPLIT_FRACTIONS, assign_splits, read_corpus, read_split
from .stats import corpus_stats, split_summary, stats_text, variant_counts
from .text import normalize_text
from .transforms import HANDWRITTEN, ROW_HARD_KINDS, ROW_KEYS, VARIANTS, add_typo, expand_seed, mix_width

__all__ = ["CONTRASTS", "FRAMINGS", "FRAMINGS_PER_FAMILY", "FRAMING_GROUPS", "GROUP_THRESHOLD", "HANDWRITTEN", "HARD_KINDS",
           "HAZARDS", "NEAR_DUP_THRESHOLD", "NGRAM", "ROW_HARD_KINDS", "ROW_KEYS", "SPLIT_FRACTIONS", "VARIANTS",
           "Seed", "add_typo", "assign_splits", "build_corpus", "corpus_stats", "encode", "expand_seed",
           "family_groups", "frame", "generate_rows", "leakage_report", "load_seeds", "mix_width",
           "near_duplicate_pairs", "nearest_pairs", "normalize_text", "read_corpus", "read_split",
           "split_summary", "stats_text", "variant_counts"]
