"""The SO8T safety corpus: hand-written seeds grown into families of variants, split and guarded.

Every example of ``data/so8t_safety/`` comes from one seed of ``data/seeds/*.yaml`` (labelled by the
project's SAFETY_POLICY.md). A seed becomes a *family* (family = seed id): its original wording, its
alternative phrasings, deterministic surface variants (``transforms``) and jailbreak framings
(``framings``). Families whose wordings are near-duplicates form a group (``neardup``); whole groups go to
train/val/test (``splits``).

    so8t corpus build [--seed 0] [--seeds-dir data/seeds] [--out data/so8t_safety]
    so8t corpus stats [--data data/so8t_safety] [--markdown]
    so8t corpus check [--data data/so8t_safety]
    so8t corpus audit [--data data/so8t_safety]

The build is byte-identical for the same seeds and ``--seed``; it refuses to write anything if a
request equals or nearly equals an XSTest or SimpleSafetyTests prompt (those public sets, in
``shared/benchmarks`` beside the repository, are for evaluation only).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ...core.io import atomic_write_text
from ...core.paths import BENCHMARKS_DIR, CORPUS_DIR, SEEDS_DIR
from ...core.schema import SPLITS
from ..benchmarks import benchmark_prompts
from .guard import benchmark_copies, benchmark_pairs, describe_pairs
from .neardup import GROUP_THRESHOLD, NEAR_DUP_THRESHOLD, groups_of, near_duplicate_pairs
from .seeds import Seed, load_seeds
from .splits import assign_splits
from .text import bare_text, normalize_text, seeded_rng
from .transforms import HANDWRITTEN, ROW_KEYS, expand_seed


def family_groups(seeds: list[Seed], threshold: float = GROUP_THRESHOLD) -> dict[str, str]:
    """Family -> group key (its smallest family id): families with near-duplicate wordings share a group."""
    texts = [(s.id, t) for s in sorted(seeds, key=lambda x: x.id) for t in s.texts]
    pairs = near_duplicate_pairs([t for _, t in texts], threshold)
    return groups_of([f for f, _ in texts], pairs)


def _check_coverage(rows: list[dict], seeds: list[Seed]) -> None:
    have = {sp: {(r["label"], r["category"], r["lang"]) for r in rows if r["split"] == sp} for sp in SPLITS}
    cells = {s.cell for s in seeds}
    for sp in SPLITS:
        missing = sorted(cells - have[sp])
        if missing:
            raise RuntimeError(
                f"split {sp!r} lacks (label, category, lang) cells {missing}; each cell needs 3+ families "
                "that are not near-duplicates of each other: add seeds to them")


def _check_benchmarks(rows: list[dict], benchmarks_dir: str | Path | None, threshold: float) -> None:
    bench = benchmark_prompts(bare_text, benchmarks_dir)
    if not bench:
        return
    hits = benchmark_copies(rows, bench)
    if hits:
        shown = ", ".join(f"{i} = {where}" for i, where in hits[:20])
        raise RuntimeError(
            f"contamination: {len(hits)} request(s) or context(s) equal or quote a public benchmark prompt ({shown}); "
            "benchmarks are for evaluation only: reword the seed(s)"
        )
    near = benchmark_pairs(rows, benchmarks_dir, top=0, min_sim=threshold)
    if near:
        raise RuntimeError(
            f"contamination: {len(near)} request(s) are near-duplicates (Jaccard >= {threshold}) of a public "
            f"benchmark prompt: {describe_pairs(near)}; benchmarks are for evaluation only: reword the seed(s)"
        )


def _row_line(row: dict) -> str:
    return json.dumps({k: row[k] for k in ROW_KEYS}, ensure_ascii=False) + "\n"


def generate_rows(
    seeds: list[Seed], seed: int = 0, benchmarks_dir: str | Path | None = BENCHMARKS_DIR,
    threshold: float = NEAR_DUP_THRESHOLD,
) -> tuple[list[dict], dict[str, int]]:
    """Group, split, expand, dedup and guard all seeds in memory; returns (rows sorted by id, build info).

    ``threshold`` is the near-duplicate Jaccard that a row may not reach with a benchmark prompt.
    """
    groups = family_groups(seeds)
    splits = assign_splits(seeds, seed, groups)
    seen = {normalize_text(t) for s in seeds for t in s.texts}  # hand-written wordings always win
    rows: list[dict] = []
    dropped = 0
    for s in sorted(seeds, key=lambda x: x.id):
        for row in expand_seed(s, seeded_rng(seed, "expand", s.id)):
            if row["variant"] not in HANDWRITTEN:
                n = normalize_text(row["user_request"])
                if n in seen:
                    dropped += 1
                    continue
                seen.add(n)
            row["split"] = splits[s.id]
            rows.append(row)
    rows.sort(key=lambda r: r["id"])
    _check_benchmarks(rows, benchmarks_dir, threshold)
    _check_coverage(rows, seeds)
    grouped = sum(n for n in Counter(groups.values()).values() if n > 1)
    return rows, {"dropped_duplicates": dropped, "families": len(seeds), "grouped_families": grouped,
                  "groups": len(set(groups.values()))}


def build_corpus(
    seeds_dir: str | Path = SEEDS_DIR,
    out_dir: str | Path = CORPUS_DIR,
    seed: int = 0,
    *,
    benchmarks_dir: str | Path | None = BENCHMARKS_DIR,
) -> dict[str, int]:
    """Seeds -> ``{train,val,test}.jsonl``; byte-identical for the same seeds and ``seed``.

    Nothing is written unless every check passes (validation, dedup, no near-duplicate across
    splits, every cell in every split, nothing equal or near to a benchmark prompt). Returns rows
    per split, plus ``total``, ``dropped_duplicates`` and the near-duplicate grouping counts.
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
    counts.update(info)
    return counts
