"""Step 2: validate the extracted rows and make a data folder to train on, the corpus test split untouched.

- every row is validated as any data file is (``data.tables``: label, category, language, lengths);
- a row whose request and context are already in the corpus (any split, compared as ``load_table`` compares rows:
  NFKC, case folded, invisible characters, punctuation and spacing out) is dropped: it adds nothing, or it
  contradicts a reviewed label of the corpus, which training would refuse (both are counted);
- a row that is a near copy (character 4-gram Jaccard >= 0.5, the corpus's own threshold) of a val or
  test request, or whose request or context is equal (``bare_text``) or near to a public benchmark prompt, or
  quotes one, is dropped: training on it would leak into the evaluation the gate relies on;
- near-duplicate rows among themselves form one family (Jaccard >= 0.2, as the corpus build groups);
  whole families go to train or val (about 1 in 10 to val, by a seeded hash), never to test; a family with a
  near copy (>= 0.5) of a corpus train row goes to train: in val it would score a row the model trained on;
- a kept row whose id is a corpus row's id stops the step (PreprocessError naming the ids): the folder would
  hold two rows under one id, which training refuses.

The benchmark guard needs the benchmarks folder (``shared/benchmarks`` beside a clone; an installed
package has none): a missing folder, or one holding none of the benchmark files, is an error unless the
caller opts out with ``benchmarks_dir=None`` (``--no-benchmark-guard``). Without it an exact benchmark
prompt would be kept as a training row with no word said.

The folder holds ``train.jsonl`` (corpus train + new train rows), ``val.jsonl`` (corpus val + new val
rows), ``test.jsonl`` (the corpus test file, byte for byte: its sha256 is checked), ``new_rows.jsonl``
and ``preprocess.json`` (what was kept, dropped and why, and which benchmark files the guard compared
with, each with its sha256); it appears whole or not at all. It replaces an earlier preprocess output (a re-run)
or fills an empty or new folder, nothing else: any other folder, or one that holds the input file or the
corpus, would lose files preprocess never wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from ...core.checkpoint import atomic_folder
from ...core.io import sha256_file
from ...core.paths import BENCHMARKS_DIR, CORPUS_DIR
from ...core.schema import MANIFEST_FILE
from ...data.benchmarks import benchmark_files, benchmark_prompts
from ...data.corpus.guard import benchmark_copies, benchmark_pairs
from ...data.corpus.neardup import (
    GROUP_THRESHOLD,
    NEAR_DUP_THRESHOLD,
    groups_of,
    near_duplicate_pairs,
    nearest_pairs,
)
from ...data.corpus.splits import read_split
from ...data.corpus.text import bare_text, stable_int, visible_text
from ...data.tables import asked_keys, load_table, read_records

VAL_SHARE = 10  # one family in VAL_SHARE goes to val
REPORT_FILE = "preprocess.json"
OUTPUT_FILES = frozenset({"train.jsonl", "val.jsonl", "test.jsonl", "new_rows.jsonl", REPORT_FILE, MANIFEST_FILE})


class PreprocessError(ValueError):
    """The extracted rows cannot be made into training data; the message names the file and why."""


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _asked(rows: list[dict]) -> list[str]:
    """What each row asks, keyed as ``load_table`` keys its label-conflict check (``asked_keys``: a "?" or a
    zero-width space makes no other request): a row that load_table would find contradicting a corpus row is
    dropped here, not kept for training to refuse."""
    table = pd.DataFrame({"context": [r.get("context") or "" for r in rows],
                          "user_request": [r.get("user_request") or "" for r in rows]})
    return asked_keys(table).tolist() if rows else []


def benchmark_guard(benchmarks_dir: str | Path | None) -> dict:
    """What the benchmark guard will compare with, for preprocess.json: the folder and each benchmark file's
    sha256 (``guard`` False when ``benchmarks_dir`` is None, the explicit opt-out). PreprocessError when the
    folder is missing or holds none of the files: the guard would drop nothing and say nothing."""
    if benchmarks_dir is None:
        return {"guard": False, "folder": None, "files": {}, "missing": []}
    folder = Path(benchmarks_dir)
    found, missing = benchmark_files(folder) if folder.is_dir() else ([], [])
    if not found:
        what = "holds none of the benchmark files" if folder.is_dir() else "does not exist"
        raise PreprocessError(
            f"the benchmarks folder {folder} {what}, so the guard that keeps public benchmark prompts out of "
            "the training rows cannot run. Point it at the folder that holds xstest/ and simplesafetytests/ "
            "(so8t retrain preprocess --benchmarks DIR), or leave the guard out knowingly "
            "(--no-benchmark-guard; benchmarks_dir=None in Python)")
    return {"guard": True, "folder": str(folder), "files": {str(p.relative_to(folder)): sha256_file(p) for p in found},
            "missing": [str(p.relative_to(folder)) for p in missing]}


def check_out(out: str | Path, rows_file: str | Path, corpus_dir: str | Path) -> None:
    """PreprocessError unless ``out`` may be replaced whole (``atomic_folder`` swaps the folder): it is new, empty
    or an earlier preprocess output (``preprocess.json`` and only the files preprocess writes), and it neither
    holds the input file nor is, holds or lies in the corpus folder. Anything else would be deleted."""
    out, rows, corpus = (Path(p).resolve() for p in (out, rows_file, corpus_dir))
    if out == rows or out in rows.parents:
        raise PreprocessError(f"--out {out} holds the input file {rows}, which writing the data folder there would "
                              "delete; name a new folder for the output, e.g. data/retrain")
    if out == corpus or out in corpus.parents or corpus in out.parents:
        raise PreprocessError(f"--out {out} is, holds or lies inside the corpus folder {corpus}, which writing the "
                              "data folder there would change or delete; name a folder outside it, e.g. data/retrain")
    if out.exists() and not out.is_dir():
        raise PreprocessError(f"--out {out} is a file, not a folder; name a new folder for the output")
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if entries and (REPORT_FILE not in entries or not entries <= OUTPUT_FILES):
        others = sorted(entries - OUTPUT_FILES) or [f"no {REPORT_FILE}"]
        raise PreprocessError(f"--out {out} is a folder preprocess did not write ({', '.join(others[:5])}), and "
                              "preprocess replaces its output folder whole, which would delete those files; name a "
                              "new or empty folder, or move the files away first")


def check_ids(kept: list[dict], corpus: dict[str, list[dict]], rows_file: Path) -> None:
    """PreprocessError when a kept row carries a corpus row's id: the folder would hold two rows under one id,
    which training refuses (and the frozen-state cache would give one the other's states)."""
    taken = {str(r["id"]).strip(): split for split, part in corpus.items() for r in part}
    clash = [(r["id"], taken[r["id"]]) for r in kept if r["id"] in taken]
    if clash:
        named = ", ".join(f"{row_id!r} (corpus {split})" for row_id, split in clash[:5])
        raise PreprocessError(f"{rows_file}: {len(clash)} row id(s) are also corpus row ids: {named}"
                              f"{' and more' if len(clash) > 5 else ''}; training refuses a folder that holds two "
                              "rows under one id. Give these rows ids of their own (so8t retrain extract names its "
                              "rows ops-<request_id>) and run preprocess again; nothing was written")


def preprocess(rows_file: str | Path, out: str | Path, corpus_dir: str | Path = CORPUS_DIR,
               benchmarks_dir: str | Path | None = BENCHMARKS_DIR, seed: int = 0,
               input_as: str | Path | None = None) -> dict:
    """Write the data folder ``out`` from ``rows_file`` (so8t retrain extract's output); its report.
    ``benchmarks_dir`` None skips the benchmark guard (recorded in the report); a missing folder is an error.
    ``input_as``: the input's path as the report names it (``run_flow`` preprocesses a staged copy of the rows
    file, moved to that path once the run may go on)."""
    benchmarks = benchmark_guard(benchmarks_dir)  # before anything is read
    check_out(out, rows_file, corpus_dir)  # before anything is read or written
    rows_file, corpus_dir = Path(rows_file), Path(corpus_dir)
    table = load_table(rows_file)  # DataError names the file, line and field
    # request_id, case_id, origin: paired by line (load_table makes one row per record, in order), since its ids
    # are normalised (stripped, 7.0 -> 7, ``stem:line`` for none) and the raw record's are not
    extra = [r for _, r in read_records(rows_file)]
    if len(extra) != len(table):
        raise PreprocessError(f"{rows_file} changed while it was read; run preprocess again")
    new = [{**row, **{k: record.get(k) for k in ("request_id", "case_id", "origin", "decided_at")}}
           for row, record in zip(table.to_dict("records"), extra)]
    try:
        corpus = {split: read_split(corpus_dir, split) for split in ("train", "val", "test")}
    except ValueError as exc:  # read_split names the file and line; a damaged split cannot guard anything
        raise PreprocessError(str(exc)) from None
    every = [(split, r) for split, part in corpus.items() for r in part]
    seen = dict(zip(_asked([r for _, r in every]), [(split, r["label"]) for split, r in every]))
    dropped: dict[str, list[str]] = {"in_corpus": [], "contradicts_corpus": [], "near_val_or_test": [],
                                     "near_benchmark": []}
    kept = []
    for row, asked in zip(new, _asked(new)):
        found = seen.get(asked)
        if found is None:
            kept.append(row)
        else:
            dropped["in_corpus" if found[1] == row["label"] else "contradicts_corpus"].append(row["id"])
    held_out = [r for split in ("val", "test") for r in corpus[split]]
    pairs = nearest_pairs([visible_text(r["user_request"]) for r in kept],  # one pass: held-out rows, then train
                          [visible_text(r["user_request"]) for r in [*held_out, *corpus["train"]]],
                          top=0, min_sim=NEAR_DUP_THRESHOLD)
    near = {i for _, i, j in pairs if j < len(held_out)}
    near_train = {kept[i]["id"] for _, i, j in pairs if j >= len(held_out) and i not in near}
    dropped["near_val_or_test"] = [kept[i]["id"] for i in sorted(near)]
    kept = [r for i, r in enumerate(kept) if i not in near]
    bench: set[str] = set()
    if kept and benchmarks["guard"]:  # requests and contexts: a prompt pasted into a context reaches the model too
        bench = {row_id for row_id, _ in benchmark_copies(kept, benchmark_prompts(bare_text, benchmarks_dir))}
        bench |= {p["row"] for p in benchmark_pairs(kept, benchmarks_dir, top=0, min_sim=NEAR_DUP_THRESHOLD)}
    dropped["near_benchmark"] = sorted(bench)
    kept = [r for r in kept if r["id"] not in bench]
    ids = [r["id"] for r in kept]
    first_asking: dict[str, int] = {}  # rows asking the same thing are one family whatever their spelling
    same = [(1.0, first_asking.setdefault(asked, i), i) for i, asked in enumerate(_asked(kept))]
    families = groups_of(ids, near_duplicate_pairs([r["user_request"] for r in kept], GROUP_THRESHOLD) +
                         [pair for pair in same if pair[1] != pair[2]])  # else one in train, one in val: refused
    to_train = {families[row_id] for row_id in near_train if row_id in families}  # val would score trained rows
    for row in kept:
        row["family"] = families[row["id"]]
        row["split"] = "val" if row["family"] not in to_train and \
            stable_int(seed, "retrain", row["family"]) % VAL_SHARE == 0 else "train"
    check_ids(kept, corpus, rows_file)
    test_file = corpus_dir / "test.jsonl"
    test_sha = sha256_file(test_file)
    report = {"input": str(input_as or rows_file), "rows": len(new), "kept": len(kept),
              "splits": {s: sum(r["split"] == s for r in kept) for s in ("train", "val")},
              "near_corpus_train": sorted(r["id"] for r in kept if r["id"] in near_train),  # kept, in train
              "families": len(set(families.values())), "dropped": dropped,
              "corpus": str(corpus_dir), "corpus_rows": {s: len(p) for s, p in corpus.items()},
              "test_sha256": test_sha, "thresholds": {"near_copy": NEAR_DUP_THRESHOLD, "family": GROUP_THRESHOLD},
              "benchmarks": benchmarks}
    out = Path(out)
    with atomic_folder(out) as tmp:
        for split in ("train", "val"):
            added = [r for r in kept if r["split"] == split]
            text = (corpus_dir / f"{split}.jsonl").read_text(encoding="utf-8")
            (tmp / f"{split}.jsonl").write_text(text + ("" if not text or text.endswith("\n") else "\n") + _lines(added),
                                                encoding="utf-8")
        shutil.copyfile(test_file, tmp / "test.jsonl")
        if sha256_file(tmp / "test.jsonl") != test_sha:
            raise PreprocessError(f"{test_file} changed while it was copied; run preprocess again")
        (tmp / "new_rows.jsonl").write_text(_lines(kept), encoding="utf-8")
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        check_out(out, rows_file, corpus_dir)  # again just before the swap: a file put there meanwhile is kept
    return report
