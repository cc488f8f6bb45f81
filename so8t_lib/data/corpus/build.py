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
import os
import shutil
from collections import Counter
from pathlib import Path

from ...core.checkpoint import atomic_folder
from ...core.io import unwritable_place
from ...core.paths import BENCHMARKS_DIR, CORPUS_DIR, SEEDS_DIR
from ...core.schema import MANIFEST_FILE, SPLITS
from ..benchmarks import benchmark_prompts
from .guard import benchmark_copies, benchmark_pairs, describe_pairs
from .neardup import GROUP_THRESHOLD, NEAR_DUP_THRESHOLD, groups_of, near_duplicate_pairs
from .seeds import Seed, load_seeds
from .splits import assign_splits
from .text import bare_text, seeded_rng, wording
from .transforms import HANDWRITTEN, ROW_KEYS, expand_seed

# what a build leaves in its folder, and the split files' checksums kept beside them (the Makefile's
# train.jsonl.sha256), which the build carries into the new folder: anything else there would be deleted by the swap
BUILD_FILES = frozenset({*(f"{sp}.jsonl" for sp in SPLITS), MANIFEST_FILE})
CHECKSUM_FILES = frozenset(f"{sp}.jsonl.sha256" for sp in SPLITS)


def check_out(out_dir: str | Path) -> None:
    """ValueError unless ``out_dir`` can take a build: new, or a folder holding only ``BUILD_FILES`` and
    ``CHECKSUM_FILES`` (the build replaces the folder whole), with a writable place beside it to stage in."""
    if why := unwritable_place(out_dir, "--out", folder=True):  # staged beside it, then swapped in
        raise ValueError(why)
    out = Path(os.path.abspath(out_dir))
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in BUILD_FILES | CHECKSUM_FILES or not p.is_file()) if out.is_dir() else []
    if foreign:
        named = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"--out {out_dir} holds files a corpus build does not write ({named}), and the build replaces "
                         "the folder whole, which would delete them; name a new or empty folder, or move them away first")


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
    # training's notion of the same request (``wording``, as in ``tables.asked_keys``; the context aside)
    seen = {wording(t) for s in seeds for t in s.texts}  # hand-written wordings always win
    rows: list[dict] = []
    dropped = 0
    for s in sorted(seeds, key=lambda x: x.id):
        for row in expand_seed(s, seeded_rng(seed, "expand", s.id)):
            if row["variant"] not in HANDWRITTEN:
                n = wording(row["user_request"])
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
    splits, every cell in every split, nothing equal or near to a benchmark prompt), and the three
    splits are swapped in together (``atomic_folder``): a failure leaves the old corpus whole, never a
    new train beside an old test. ``out_dir`` must pass ``check_out``. Returns rows per split, plus
    ``total``, ``dropped_duplicates`` and the near-duplicate grouping counts.
    """
    out_dir = Path(out_dir).resolve()  # a linked corpus folder (moved to another disk) is built where it lives
    check_out(out_dir)  # before the work, not after it
    seeds = load_seeds(seeds_dir)
    rows, info = generate_rows(seeds, seed, benchmarks_dir)
    out = out_dir
    counts: dict[str, int] = {}
    with atomic_folder(out, owned=True) as tmp:  # owned: check_out decided what may be replaced
        for sp in SPLITS:
            part = [r for r in rows if r["split"] == sp]
            (tmp / f"{sp}.jsonl").write_bytes("".join(_row_line(r) for r in part).encode("utf-8"))
            counts[sp] = len(part)
        for name in sorted(CHECKSUM_FILES):
            if (out / name).is_file():
                shutil.copyfile(out / name, tmp / name)
        check_out(out_dir)  # again just before the swap: a file put there meanwhile is kept
    counts["total"] = len(rows)
    counts.update(info)
    return counts
