"""The SO8T safety corpus: hand-written seeds grown into families of variants, split and guarded.

Every example of ``data/so8t_safety/`` comes from one seed of ``data/seeds/*.yaml`` (labelled by the
project's SAFETY_POLICY.md). A seed becomes a *family* (family = seed id): its original wording, its
alternative phrasings and deterministic surface variants (``transforms``). Whole families go to
train/val/test (``splits``).

    so8t corpus build [--seed 0] [--seeds-dir data/seeds] [--out data/so8t_safety]
    so8t corpus stats [--data data/so8t_safety] [--markdown]
    so8t corpus check [--data data/so8t_safety]

The build is byte-identical for the same seeds and ``--seed``; it refuses to write anything if a
request equals an XSTest or SimpleSafetyTests prompt (those public sets, in ``shared/benchmarks``
beside the repository, are for evaluation only).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...core.io import atomic_write_text
from ...core.paths import BENCHMARKS_DIR, CORPUS_DIR, SEEDS_DIR
from ...core.schema import SPLITS
from ..benchmarks import benchmark_prompts
from .seeds import Seed, load_seeds
from .splits import assign_splits
from .text import normalize_text, seeded_rng
from .transforms import ROW_KEYS, expand_seed


def _check_coverage(rows: list[dict], seeds: list[Seed]) -> None:
    have = {sp: {(r["label"], r["category"], r["lang"]) for r in rows if r["split"] == sp} for sp in SPLITS}
    cells = {s.cell for s in seeds}
    for sp in ("train", "test"):
        missing = sorted(cells - have[sp])
        if missing:
            raise RuntimeError(f"split {sp!r} lacks (label, category, lang) cells {missing}; add seeds to them")


def _row_line(row: dict) -> str:
    return json.dumps({k: row[k] for k in ROW_KEYS}, ensure_ascii=False) + "\n"


def generate_rows(
    seeds: list[Seed], seed: int = 0, benchmarks_dir: str | Path | None = BENCHMARKS_DIR
) -> tuple[list[dict], dict[str, int]]:
    """Expand, dedup, split and guard all seeds in memory; returns (rows sorted by id, build info)."""
    splits = assign_splits(seeds, seed)
    seen = {normalize_text(t) for s in seeds for t in s.texts}  # hand-written wordings always win
    rows: list[dict] = []
    dropped = 0
    for s in sorted(seeds, key=lambda x: x.id):
        for row in expand_seed(s, seeded_rng(seed, "expand", s.id)):
            if row["variant"] not in ("original", "alt1", "alt2"):
                n = normalize_text(row["user_request"])
                if n in seen:
                    dropped += 1
                    continue
                seen.add(n)
            row["split"] = splits[s.id]
            rows.append(row)
    rows.sort(key=lambda r: r["id"])
    bench = benchmark_prompts(normalize_text, benchmarks_dir)
    if bench:
        hits = [(r["id"], bench[n]) for r in rows if (n := normalize_text(r["user_request"])) in bench]
        if hits:
            shown = ", ".join(f"{i} = {where}" for i, where in hits[:20])
            raise RuntimeError(
                f"contamination: {len(hits)} request(s) equal a public benchmark prompt ({shown}); "
                "benchmarks are for evaluation only: reword the seed(s)"
            )
    _check_coverage(rows, seeds)
    return rows, {"dropped_duplicates": dropped, "families": len(seeds)}


def build_corpus(
    seeds_dir: str | Path = SEEDS_DIR,
    out_dir: str | Path = CORPUS_DIR,
    seed: int = 0,
    *,
    benchmarks_dir: str | Path | None = BENCHMARKS_DIR,
) -> dict[str, int]:
    """Seeds -> ``{train,val,test}.jsonl``; byte-identical for the same seeds and ``seed``.

    Nothing is written unless every check passes (validation, dedup, coverage of
    every cell in train and test, no benchmark prompt). Returns rows per split,
    plus ``total`` and ``dropped_duplicates``.
    """
    seeds = load_seeds(seeds_dir)
    rows, info = generate_rows(seeds, seed, benchmarks_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for sp in SPLITS:
        part = [r for r in rows if r["split"] == sp]
        atomic_write_text(out / f"{sp}.jsonl", "".join(_row_line(r) for r in part))
        counts[sp] = len(part)
    counts["total"] = len(rows)
    counts["dropped_duplicates"] = info["dropped_duplicates"]
    return counts
