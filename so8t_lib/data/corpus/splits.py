"""Families to splits, and the guard that keeps evaluation honest.

Whole families are assigned to train/val/test, stratified by (label, category, lang), so no
wording of a request can leak from training into evaluation; ``leakage_report`` checks the written
files for exactly that (and for public benchmark prompts).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from ...core.paths import BENCHMARKS_DIR, CORPUS_DIR
from ...core.schema import SPLITS
from ..benchmarks import benchmark_prompts
from .seeds import Seed
from .text import normalize_text, seeded_rng

SPLIT_FRACTIONS: dict[str, float] = {"val": 0.1, "test": 0.1}  # the rest is train


def assign_splits(seeds: Iterable[Seed], seed: int = 0) -> dict[str, str]:
    """Family -> split, whole families only and stratified by (label, category, lang).

    Each cell is shuffled by its own RNG (``seed`` + crc32 of the cell) and cut about
    80/10/10, with at least one family in val and test when the cell has three or more,
    so every cell the seeds have is in train and test and evaluation never sees a
    wording of a training request.
    """
    by_cell: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for s in seeds:
        by_cell[s.cell].append(s.id)
    out: dict[str, str] = {}
    for cell in sorted(by_cell):
        fams = sorted(by_cell[cell])
        seeded_rng(seed, "split", *cell).shuffle(fams)
        n = len(fams)
        if n >= 3:
            n_test = max(1, int(n * SPLIT_FRACTIONS["test"] + 0.5))
            n_val = max(1, int(n * SPLIT_FRACTIONS["val"] + 0.5))
        else:  # too small to cover three splits: train first, then test
            n_test, n_val = (1 if n == 2 else 0), 0
        for i, fam in enumerate(fams):
            out[fam] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def read_split(data_dir: str | Path, split: str) -> list[dict]:
    """Rows of one split file; a missing file or a bad line is an error naming it."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run: so8t corpus build)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON: {e}") from e
    return rows


def read_corpus(data_dir: str | Path = CORPUS_DIR) -> list[dict]:
    """All rows of train, val and test (``split`` as stored in each row)."""
    return [r for sp in SPLITS for r in read_split(data_dir, sp)]


def leakage_report(
    data_dir: str | Path = CORPUS_DIR, benchmarks_dir: str | Path | None = BENCHMARKS_DIR
) -> dict:
    """What would make evaluation on val/test dishonest: a family or a request in two splits.

    Also reports rows stored in the wrong file, duplicate ids, and requests equal
    to a public benchmark prompt (when ``shared/benchmarks`` is present). ``ok`` is
    True only when every list is empty.
    """
    fam_splits: dict[str, set[str]] = defaultdict(set)
    text_rows: dict[str, list[tuple[str, str]]] = defaultdict(list)
    ids: Counter[str] = Counter()
    wrong_file: list[str] = []
    rows_by_split = {sp: read_split(data_dir, sp) for sp in SPLITS}
    for sp, rows in rows_by_split.items():
        for r in rows:
            if r.get("split") != sp:
                wrong_file.append(r.get("id"))
            fam_splits[r["family"]].add(sp)
            text_rows[normalize_text(r["user_request"])].append((sp, r["id"]))
            ids[r["id"]] += 1
    families = {f: sorted(s, key=SPLITS.index) for f, s in sorted(fam_splits.items()) if len(s) > 1}
    requests = [
        sorted(i for _, i in occ) for _, occ in sorted(text_rows.items()) if len({sp for sp, _ in occ}) > 1
    ]
    bench = benchmark_prompts(normalize_text, benchmarks_dir)
    overlap = sorted(i for n, occ in text_rows.items() if n in bench for _, i in occ)
    report = {
        "rows": {sp: len(rows) for sp, rows in rows_by_split.items()},
        "families_in_multiple_splits": families,
        "requests_in_multiple_splits": requests,
        "rows_in_wrong_file": sorted(wrong_file),
        "duplicate_ids": sorted(i for i, c in ids.items() if c > 1),
        "benchmark_overlap": overlap,
        "benchmarks_checked": bool(bench),
    }
    report["ok"] = not any(report[k] for k in (
        "families_in_multiple_splits", "requests_in_multiple_splits", "rows_in_wrong_file",
        "duplicate_ids", "benchmark_overlap",
    ))
    return report
