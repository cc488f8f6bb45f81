"""The safety corpus: seeds (``seeds``), phrase pools (``phrases``), surface variants (``transforms``),
splits and the leakage guard (``splits``), the build (``build``) and its statistics (``stats``).

``so8t corpus build | stats | check`` (``python -m so8t_lib.data.corpus ...``) runs them.
"""

from .build import build_corpus, generate_rows
from .seeds import HARD_KINDS, Seed, load_seeds
from .splits import SPLIT_FRACTIONS, assign_splits, leakage_report, read_corpus, read_split
from .stats import corpus_stats, split_summary, stats_text, variant_counts
from .text import normalize_text
from .transforms import ROW_KEYS, VARIANTS, add_typo, expand_seed, mix_width

__all__ = ["HARD_KINDS", "ROW_KEYS", "SPLIT_FRACTIONS", "VARIANTS", "Seed", "add_typo", "assign_splits",
           "build_corpus", "corpus_stats", "expand_seed", "generate_rows", "leakage_report", "load_seeds",
           "mix_width", "normalize_text", "read_corpus", "read_split", "split_summary", "stats_text",
           "variant_counts"]
