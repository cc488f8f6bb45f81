"""What the corpus holds: rows per split, variant, framing and (label, category, lang) cell; the hazard
taxonomy and look-alike contrasts it covers; how close it comes to leaking; what the label audit found.

``stats_text(markdown=True)`` prints every table the data card (``data/README.md``) shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...core.paths import BENCHMARKS_DIR, CORPUS_DIR
from ...core.schema import CATEGORIES, LABELS, LANGS, SPLITS
from .audit import audit_path as default_audit
from .audit import corpus_digests, read_audit
from .framings import FRAMING_GROUP_OF, FRAMINGS
from .seeds import CONTRASTS, HARD_KINDS, HAZARDS
from .splits import read_corpus
from .text import asks_a_question
from .transforms import VARIANTS

if TYPE_CHECKING:
    import pandas

def _frame(data_dir: str | Path) -> pandas.DataFrame:
    import pandas as pd

    df = pd.DataFrame(read_corpus(data_dir))
    df["split"] = pd.Categorical(df["split"], categories=list(SPLITS), ordered=True)
    df["label"] = pd.Categorical(df["label"], categories=list(LABELS), ordered=True)
    df["category"] = pd.Categorical(df["category"], categories=list(CATEGORIES), ordered=True)
    df["lang"] = pd.Categorical(df["lang"], categories=list(LANGS), ordered=True)
    for key in ("framing", "hazard", "contrast"):
        if key not in df:
            df[key] = None
    return df


def corpus_stats(data_dir: str | Path = CORPUS_DIR, df: pandas.DataFrame | None = None) -> pandas.DataFrame:
    """Rows per (label, category, lang) × split with totals: what the data card shows, to check balance."""
    import pandas as pd

    df = _frame(data_dir) if df is None else df
    return pd.crosstab([df["label"], df["category"], df["lang"]], df["split"], margins=True, margins_name="total",
                       dropna=True)


def split_summary(data_dir: str | Path = CORPUS_DIR, df: pandas.DataFrame | None = None) -> pandas.DataFrame:
    """Per split: rows, families, % ja, % hard, % framed and rows per label."""
    import pandas as pd

    df = _frame(data_dir) if df is None else df
    recs = []
    for name, part in [*((sp, df[df["split"] == sp]) for sp in SPLITS), ("total", df)]:
        n = len(part)
        rec = {
            "split": name, "rows": n, "families": part["family"].nunique(),
            "% ja": round(100 * (part["lang"] == "ja").mean(), 1) if n else 0.0,
            "% hard": round(100 * part["hard"].mean(), 1) if n else 0.0,
            "% framed": round(100 * part["framing"].notna().mean(), 1) if n else 0.0,
        }
        for lab in LABELS:
            rec[lab] = int((part["label"] == lab).sum())
        recs.append(rec)
    return pd.DataFrame(recs).set_index("split")


def variant_counts(data_dir: str | Path = CORPUS_DIR, df: pandas.DataFrame | None = None) -> pandas.DataFrame:
    """Rows per variant × split (how much of the corpus each template contributes)."""
    import pandas as pd

    df = _frame(data_dir) if df is None else df
    variant = pd.Categorical(df["variant"], categories=list(VARIANTS), ordered=True)
    return pd.crosstab(variant, df["split"], margins=True, margins_name="total", rownames=["variant"])


def framing_counts(df: pandas.DataFrame) -> pandas.DataFrame:
    """Framed rows per kind × label, and the share of each label's rows that are framed (it should not differ)."""
    import pandas as pd

    framed = df[df["framing"].notna()]
    kind = pd.Categorical(framed["framing"], categories=list(FRAMINGS), ordered=True)
    tab = pd.crosstab(kind, framed["label"], margins=True, margins_name="total", rownames=["framing"],
                      dropna=False)
    tab.insert(0, "group", [FRAMING_GROUP_OF.get(k, "") for k in tab.index])
    share = {lab: round(100 * df.loc[df["label"] == lab, "framing"].notna().mean(), 1) for lab in LABELS}
    share["total"] = round(100 * df["framing"].notna().mean(), 1)
    tab = tab.astype(object)  # counts stay ints beside the shares
    tab.loc["% of the label's rows"] = ["", *(share[c] for c in tab.columns[1:])]
    return tab


def hazard_coverage(df: pandas.DataFrame) -> pandas.DataFrame:
    """Families per hazard × (label, lang), every hazard listed so a gap shows as a zero row."""
    import pandas as pd

    fam = df.drop_duplicates("family")
    hazard = pd.Categorical(fam["hazard"].fillna("(none)"), categories=[*HAZARDS, "(none)"], ordered=True)
    tab = pd.crosstab(hazard, [fam["label"], fam["lang"]], rownames=["hazard"], dropna=False)
    tab.columns = [f"{lab} {lang}" for lab, lang in tab.columns]
    tab["families"] = tab.sum(axis=1)
    tab["rows"] = df.assign(h=df["hazard"].fillna("(none)")).groupby("h").size().reindex(tab.index).fillna(0)
    tab["rows"] = tab["rows"].astype(int)
    return tab


def contrast_coverage(df: pandas.DataFrame) -> pandas.DataFrame:
    """Look-alike families per contrast type × (label, lang)."""
    import pandas as pd

    fam = df[df["hard_kind"] == "lookalike"].drop_duplicates("family")
    contrast = pd.Categorical(fam["contrast"].fillna("(unnamed)"), categories=[*CONTRASTS, "(unnamed)"],
                              ordered=True)
    tab = pd.crosstab(contrast, [fam["label"], fam["lang"]], rownames=["contrast"], dropna=False)
    tab.columns = [f"{lab} {lang}" for lab, lang in tab.columns]
    tab["families"] = tab.sum(axis=1)
    return tab


def hard_kind_counts(df: pandas.DataFrame) -> pandas.DataFrame:
    """Families per seed hard kind × label (framed rows of seeds without a kind are counted apart)."""
    import pandas as pd

    fam = df.drop_duplicates("family")
    seed_kind = fam["family"].map(df[df["framing"].isna()].groupby("family")["hard_kind"].first())
    kind = pd.Categorical(seed_kind.fillna("(none)"), categories=[*HARD_KINDS, "(none)"], ordered=True)
    return pd.crosstab(kind, fam["label"], margins=True, margins_name="total", rownames=["seed hard kind"],
                       dropna=False)


def question_share(df: pandas.DataFrame) -> pandas.DataFrame:
    """Original wordings (one per seed) asked as questions, per label and language: a label the form of a request
    predicts is a shortcut a model can learn instead of the request (``text.asks_a_question``)."""
    import pandas as pd

    seeds = df[df["variant"] == "original"]
    asked = [asks_a_question(text, lang) for text, lang in zip(seeds["user_request"], seeds["lang"])]
    tab = pd.crosstab([seeds["label"], seeds["lang"]], pd.Series(asked, index=seeds.index, name="question"))
    tab = tab.reindex(columns=[True, False], fill_value=0)
    out = pd.DataFrame({"seeds": tab.sum(axis=1), "questions": tab[True]})
    out["% questions"] = (100 * out["questions"] / out["seeds"]).round(1)
    return out


def leakage_table(data_dir: str | Path, benchmarks_dir: str | Path | None = BENCHMARKS_DIR, top: int = 5) -> str:
    """The guard's thresholds and the nearest cross-split and benchmark pairs, as markdown."""
    from .guard import leakage_report

    rep = leakage_report(data_dir, benchmarks_dir)
    lines = [f"Character {rep['ngram']}-grams of the normalised text, exact Jaccard. Families whose wordings "
             f"reach {rep['group_threshold']} share a split; a row at {rep['near_duplicate_threshold']} or more "
             "with a benchmark prompt stops the build. "
             f"Check: {'ok' if rep['ok'] else 'FAILED'}.", "",
             "| pair | similarity | text | text |", "|---|---:|---|---|"]
    for p in rep["nearest_cross_split"][:top]:
        lines.append(f"| {p['a']} ~ {p['b']} | {p['similarity']:.3f} | {_md(p['a_text'])} | {_md(p['b_text'])} |")
    for p in rep["nearest_benchmark"][:top]:
        lines.append(f"| {p['row']} ~ {p['benchmark']} | {p['similarity']:.3f} | {_md(p['row_text'])} "
                     f"| {_md(p['benchmark_text'])} |")
    return "\n".join(lines)


def audit_of(rep: dict, audit_path: str | Path, data_dir: str | Path) -> tuple[bool, str]:
    """(whether the audit is of the corpus in ``data_dir``, one line saying which corpus it is of or that it is not):
    an audit records its corpus's split files' SHA-256; one that records none (written before it did) is not shown,
    as nothing says which corpus it audited."""
    named = "" if Path(data_dir).resolve() == CORPUS_DIR.resolve() else f" --data {data_dir}"  # the card's: none
    name, again = Path(audit_path).name, f"run so8t corpus audit{named}"
    recorded, here = rep.get("corpus"), corpus_digests(data_dir)
    if recorded == here:
        shown = ", ".join(f"{f.removesuffix('.jsonl')} {d[:12]}" for f, d in here.items())
        return True, f"Of this corpus: {name} records the SHA-256 of its split files ({shown})."
    if not recorded:
        return False, f"Not shown: {audit_path} does not record which corpus it audited; {again}."
    differ = [f for f in here if recorded.get(f) != here[f]]
    return False, (f"Not shown: {audit_path} is the audit of another corpus (the SHA-256 it records for "
                   f"{', '.join(differ)} differ from this corpus's); {again}.")


def audit_table(audit_path: str | Path, data_dir: str | Path) -> str | None:
    """The label audit's counts from ``label_audit.json`` under a line saying which corpus it is of, or that line
    alone when it is not the audit of ``data_dir``'s corpus; None when no audit was run."""
    rep = read_audit(audit_path)
    if rep is None:
        return None
    mine, which = audit_of(rep, audit_path, data_dir)
    if not mine:
        return which
    s = rep["summary"]
    rows = [("families audited", s["families"]), ("flagged by cleanlab", s["flagged"]),
            ("reviewed", s["reviewed"]), ("fixed in the seeds", s["fixed"]), ("kept (label right)", s["kept"]),
            ("reported to the seed file's owner", s["reported"]), ("cross-validated accuracy (families)",
                                                                   f"{s['cv_accuracy']:.3f}")]
    return "\n".join([which, "", "| | count |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)])


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(df: pandas.DataFrame) -> str:
    """A GitHub markdown table without the optional ``tabulate`` dependency."""
    index_names = [n or "" for n in df.index.names]
    header = index_names + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * len(index_names) + ["---:"] * len(df.columns)) + "|"]
    for idx, vals in zip(df.index, df.itertuples(index=False)):  # itertuples keeps each column's dtype
        idx = idx if isinstance(idx, tuple) else (idx,)
        cells = [str(i) for i in idx] + [f"{v:.1f}" if isinstance(v, float) else str(v) for v in vals]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stats_text(data_dir: str | Path = CORPUS_DIR, markdown: bool = False,
               benchmarks_dir: str | Path | None = BENCHMARKS_DIR, audit_path: str | Path | None = None) -> str:
    """The ``stats`` command's output; the markdown form holds every table of data/README.md."""
    df = _frame(data_dir)
    tables = [
        ("Per split", split_summary(df=df)),
        ("Rows per variant", variant_counts(df=df)),
        ("Framed rows per kind and label", framing_counts(df)),
        ("Hazard taxonomy: families per hazard, label and language", hazard_coverage(df)),
        ("Look-alike contrast types: families", contrast_coverage(df)),
        ("Seed hard kinds: families", hard_kind_counts(df)),
        ("Requests asked as questions: original wordings per label and language", question_share(df)),
        ("Rows per label × category × lang", corpus_stats(df=df)),
    ]
    if not markdown:
        return "\n\n".join(f"{title}\n{tab.to_string()}" for title, tab in tables)
    parts = [f"**{title}**\n\n{_markdown_table(tab)}" for title, tab in tables]
    parts.append("**Leakage guard: nearest pairs**\n\n" + leakage_table(data_dir, benchmarks_dir))
    audit = audit_table(audit_path if audit_path is not None else default_audit(data_dir), data_dir)
    if audit:
        parts.append("**Label audit**\n\n" + audit)
    return "\n\n".join(parts)
