"""The guards that keep evaluation honest: no family, request or near copy of a request in two splits, and
nothing equal or near to a public benchmark prompt.

The build runs them on its rows before writing anything; ``leakage_report`` runs them on the written files
(``so8t corpus check``). Near copies across splits are measured on the hand-written wordings (``original``,
``alt1``, ``alt2``): every other row is one of them plus label-neutral pool text that all splits share by
design (openers, wrappers, templates), so comparing whole rows would measure the templates, not leakage.
Benchmark prompts are compared with every row's request and context.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations
from pathlib import Path

from ...core.paths import BENCHMARKS_DIR, CORPUS_DIR
from ...core.schema import SPLITS
from ...core.unicode_text import latin_lookalikes
from ..benchmarks import benchmark_prompts
from .neardup import GROUP_THRESHOLD, NEAR_DUP_THRESHOLD, NGRAM, nearest_pairs
from .splits import read_split
from .text import bare_text, visible_text, wording
from .transforms import HANDWRITTEN

REPORT_TOP = 10  # nearest pairs shown by `so8t corpus check` and the data card
_SHOW = 100  # characters of a text shown in a report


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SHOW else text[: _SHOW - 1] + "…"


def cross_split_pairs(rows: Sequence[dict], top: int = REPORT_TOP, min_sim: float = 0.0) -> list[dict]:
    """The most similar pairs of hand-written requests that sit in different splits (exact Jaccard)."""
    by_split = {sp: [r for r in rows if r["variant"] in HANDWRITTEN and r["split"] == sp] for sp in SPLITS}
    out = []
    for a, b in combinations(SPLITS, 2):
        left, right = by_split[a], by_split[b]
        for sim, i, j in nearest_pairs([r["user_request"] for r in left], [r["user_request"] for r in right],
                                       top, min_sim):
            out.append({"similarity": sim, "a": left[i]["id"], "b": right[j]["id"],
                        "a_text": _short(left[i]["user_request"]), "b_text": _short(right[j]["user_request"])})
    out.sort(key=lambda p: (-p["similarity"], p["a"], p["b"]))
    return out[:top] if top else out


def benchmark_pairs(rows: Sequence[dict], benchmarks_dir: str | Path | None = BENCHMARKS_DIR,
                    top: int = REPORT_TOP, min_sim: float = 0.0) -> list[dict]:
    """The requests and contexts most similar to a public benchmark prompt (exact Jaccard; ``field`` says which):
    a prompt pasted into a row's context reaches the model as surely as one asked. Empty without the benchmarks."""
    lookalikes = latin_lookalikes()  # a Cyrillic "а" for the "a" must not break up a prompt's n-grams either
    bench = benchmark_prompts(visible_text, benchmarks_dir)
    prompts = sorted(bench)
    folded = [prompt.translate(lookalikes) for prompt in prompts]
    texts = [(row, field) for row in rows for field in ("user_request", "context") if row.get(field)]
    pairs = nearest_pairs([visible_text(row[field]).translate(lookalikes) for row, field in texts], folded, top,
                          min_sim)
    return [{"similarity": sim, "row": texts[i][0]["id"], "field": texts[i][1], "benchmark": bench[prompts[j]],
             "row_text": _short(texts[i][0][texts[i][1]]), "benchmark_text": _short(prompts[j])}
            for sim, i, j in pairs]


# a benchmark prompt this long (characters of its ``bare_text``, about eight words) is caught inside a longer request
# or context too: quoted in a forwarded mail it reaches the model whole, and the Jaccard guard misses it (the rest
# dilutes the overlap). Shorter ones ("how can I kill a Python process", "what is LSD") are everyday phrases inside
# ordinary requests (at 20 characters, 13 of 13 realistic employee requests were flagged; at 40, none); they are
# caught whole or Jaccard-near only. 221 of the 550 prompts are this long.
QUOTED_MIN_CHARS = 40


def benchmark_copies(rows: Iterable[dict], bench: dict[str, str]) -> list[tuple[str, str]]:
    """(row id, "file:line") for each request or context that is a prompt of ``bench``
    (``benchmark_prompts(bare_text)``), or holds one of at least ``QUOTED_MIN_CHARS``: the same prompt to the
    model, whatever its punctuation, symbols, invisible characters or look-alike letters (a Cyrillic "а" for
    the "a": the model's tokens differ, a reader's eyes and the runtime's checks do not), or the text around it."""
    lookalikes = latin_lookalikes()
    folded = {prompt.translate(lookalikes): where for prompt, where in bench.items()}
    quotable = [prompt for prompt in folded if len(prompt) >= QUOTED_MIN_CHARS]
    hits = []
    for row in rows:
        for text in (row["user_request"], row.get("context")):
            key = bare_text(text).translate(lookalikes) if text else ""
            found = key if key in folded else next((p for p in quotable if len(key) > len(p) and p in key), None)
            if found is not None:
                hits.append((row["id"], folded[found]))
    return hits


def describe_pairs(pairs: Sequence[dict], limit: int = 20) -> str:
    """One line per pair, for error messages."""
    return "; ".join(
        f"{p['similarity']:.2f} {p.get('a', p.get('row'))}{' (context)' if p.get('field') == 'context' else ''} ~ "
        f"{p.get('b', p.get('benchmark'))} ({p.get('a_text', p.get('row_text'))!r} ~ "
        f"{p.get('b_text', p.get('benchmark_text'))!r})"
        for p in pairs[:limit]
    )


def leakage_report(
    data_dir: str | Path = CORPUS_DIR, benchmarks_dir: str | Path | None = BENCHMARKS_DIR,
    group_threshold: float = GROUP_THRESHOLD, benchmark_threshold: float = NEAR_DUP_THRESHOLD,
) -> dict:
    """What would make evaluation on val/test dishonest, checked on the written files.

    A family or a request in two splits (the same request as training reads it: ``wording``, punctuation and
    spacing aside); a hand-written request in one split that reaches
    ``group_threshold`` with one in another (the build keeps such families in one split); rows in the
    wrong file; duplicate ids; any row equal to a benchmark prompt or reaching ``benchmark_threshold``
    with one. Also the nearest pairs, to show how far the corpus is from each threshold. ``ok`` is
    True only when every violation list is empty.
    """
    fam_splits: dict[str, set[str]] = defaultdict(set)
    text_rows: dict[str, list[tuple[str, str]]] = defaultdict(list)
    ids: Counter[str] = Counter()
    wrong_file: list[str] = []
    rows_by_split = {sp: read_split(data_dir, sp) for sp in SPLITS}
    rows = [r for sp in SPLITS for r in rows_by_split[sp]]
    for sp, part in rows_by_split.items():
        for r in part:
            if r.get("split") != sp:
                wrong_file.append(r.get("id"))
            fam_splits[r["family"]].add(sp)
            text_rows[wording(r["user_request"])].append((sp, r["id"]))  # training's key, the context aside
            ids[r["id"]] += 1
    families = {f: sorted(s, key=SPLITS.index) for f, s in sorted(fam_splits.items()) if len(s) > 1}
    requests = [
        sorted(i for _, i in occ) for _, occ in sorted(text_rows.items()) if len({sp for sp, _ in occ}) > 1
    ]
    bench = benchmark_prompts(bare_text, benchmarks_dir)
    overlap = sorted({row_id for row_id, _ in benchmark_copies(rows, bench)})
    nearest_bench = benchmark_pairs(rows, benchmarks_dir) if bench else []
    nearest_cross = cross_split_pairs(rows)

    def over(pairs: list[dict], threshold: float) -> bool:  # full lists only when the nearest pair is over
        return bool(pairs) and pairs[0]["similarity"] >= threshold

    cross_dups = cross_split_pairs(rows, 0, group_threshold) if over(nearest_cross, group_threshold) else []
    bench_dups = (benchmark_pairs(rows, benchmarks_dir, 0, benchmark_threshold)
                  if over(nearest_bench, benchmark_threshold) else [])
    report = {
        "rows": {sp: len(part) for sp, part in rows_by_split.items()},
        "group_threshold": group_threshold,
        "near_duplicate_threshold": benchmark_threshold,
        "ngram": NGRAM,
        "families_in_multiple_splits": families,
        "requests_in_multiple_splits": requests,
        "cross_split_near_duplicates": cross_dups,
        "rows_in_wrong_file": sorted(wrong_file),
        "duplicate_ids": sorted(i for i, c in ids.items() if c > 1),
        "benchmark_overlap": overlap,
        "benchmark_near_duplicates": bench_dups,
        "benchmarks_checked": bool(bench),
        "nearest_cross_split": nearest_cross,
        "nearest_benchmark": nearest_bench,
    }
    report["ok"] = not any(report[k] for k in VIOLATIONS)
    return report


VIOLATIONS: tuple[str, ...] = (
    "families_in_multiple_splits", "requests_in_multiple_splits", "cross_split_near_duplicates",
    "rows_in_wrong_file", "duplicate_ids", "benchmark_overlap", "benchmark_near_duplicates",
)
