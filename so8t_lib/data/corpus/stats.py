"""What the corpus holds: rows per split, per variant, per (label, category, lang) cell.

``stats_text(markdown=True)`` is what the data card (``data/README.md``) pastes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...core.paths import CORPUS_DIR
from ...core.schema import CATEGORIES, LABELS, LANGS, SPLITS
from .splits import read_corpus
from .transforms import VARIANTS

if TYPE_CHECKING:
    import pandas


def corpus_stats(data_dir: str | Path = CORPUS_DIR) -> pandas.DataFrame:
    """Rows per (label, category, lang) × split with totals: what the data card shows, to check balance."""
    import pandas as pd

    df = pd.DataFrame(read_corpus(data_dir))
    df["split"] = pd.Categorical(df["split"], categories=list(SPLITS), ordered=True)
    df["label"] = pd.Categorical(df["label"], categories=list(LABELS), ordered=True)
    df["category"] = pd.Categorical(df["category"], categories=list(CATEGORIES), ordered=True)
    df["lang"] = pd.Categorical(df["lang"], categories=list(LANGS), ordered=True)
    tab = pd.crosstab([df["label"], df["category"], df["lang"]], df["split"], margins=True, margins_name="total",
                      dropna=True)
    return tab


def split_summary(data_dir: str | Path = CORPUS_DIR) -> pandas.DataFrame:
    """Per split: rows, families, % ja, % hard and rows per label."""
    import pandas as pd

    df = pd.DataFrame(read_corpus(data_dir))
    recs = []
    for name, part in [*((sp, df[df["split"] == sp]) for sp in SPLITS), ("total", df)]:
        n = len(part)
        rec = {
            "split": name, "rows": n, "families": part["family"].nunique(),
            "% ja": round(100 * (part["lang"] == "ja").mean(), 1) if n else 0.0,
            "% hard": round(100 * part["hard"].mean(), 1) if n else 0.0,
        }
        for lab in LABELS:
            rec[lab] = int((part["label"] == lab).sum())
        recs.append(rec)
    return pd.DataFrame(recs).set_index("split")


def variant_counts(data_dir: str | Path = CORPUS_DIR) -> pandas.DataFrame:
    """Rows per variant × split (how much of the corpus each template contributes)."""
    import pandas as pd

    df = pd.DataFrame(read_corpus(data_dir))
    df["split"] = pd.Categorical(df["split"], categories=list(SPLITS), ordered=True)
    df["variant"] = pd.Categorical(df["variant"], categories=list(VARIANTS), ordered=True)
    return pd.crosstab(df["variant"], df["split"], margins=True, margins_name="total")


def _markdown_table(df: pandas.DataFrame) -> str:
    """A GitHub markdown table without the optional ``tabulate`` dependency."""
    index_names = [n or "" for n in df.index.names]
    header = index_names + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(index_names) + ["---:"] * len(df.columns)) + "|"]
    for idx, vals in zip(df.index, df.itertuples(index=False)):  # itertuples keeps each column's dtype
        idx = idx if isinstance(idx, tuple) else (idx,)
        cells = [str(i) for i in idx] + [f"{v:.1f}" if isinstance(v, float) else str(v) for v in vals]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stats_text(data_dir: str | Path = CORPUS_DIR, markdown: bool = False) -> str:
    """The ``stats`` command's output (the markdown form is pasted into data/README.md)."""
    summary, variants, cells = split_summary(data_dir), variant_counts(data_dir), corpus_stats(data_dir)
    if not markdown:
        return f"{summary.to_string()}\n\n{variants.to_string()}\n\n{cells.to_string()}"
    return "\n\n".join([
        "**Per split**\n\n" + _markdown_table(summary),
        "**Rows per variant**\n\n" + _markdown_table(variants),
        "**Rows per label × category × lang**\n\n" + _markdown_table(cells),
    ])
