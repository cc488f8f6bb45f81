"""The train and val tables a run reads, refused when they cannot be trusted.

The checks read the whole corpus and compare it with every public benchmark prompt (seven seconds on the project
corpus); a process that starts many runs on the same files (a sweep, a notebook, the test suite) pays once: a result
is kept per content digest of every file the checks read, and a changed byte in any of them checks again. A pass is
also remembered on disk (``$SO8T_CACHE/checks/``, keyed by those digests and by the source of the checking code), so
each new process (``so8t train``, a sweep's runs, ``make demo``) reads the tables without checking them again; a
change to the data, the benchmarks or the checks checks again, and a failure is never remembered.

A data folder that ``so8t retrain preprocess`` wrote lists the rows it added in ``new_rows.jsonl``: under
``train_max_rows`` every one of its train rows is kept and only the corpus rows beside them are sampled (to
``train_max_rows`` less the new rows, none when the new rows alone reach it), since the point of retraining is to
learn what reviewers decided. A folder without that file is sampled exactly as before.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import sys
import threading
import unicodedata
from pathlib import Path
from types import ModuleType

import pandas as pd

from ..core.io import atomic_write_text, sha256_file
from ..core.paths import BENCHMARKS_DIR, cache_root
from .benchmarks import BENCHMARKS, benchmark_prompts
from .corpus.guard import benchmark_copies, benchmark_pairs, describe_pairs
from .corpus.neardup import NEAR_DUP_THRESHOLD
from .corpus.text import bare_text
from .tables import DataError, asked_keys, load_table, stratified_sample

NEW_ROWS_FILE = "new_rows.jsonl"  # retrain preprocess's list of the rows it added to the corpus splits
PASSES_DIR = "checks"  # under the cache: one small file per set of inputs that passed the checks
# the modules whose code decides a pass, with every so8t_lib module they use (``checking_code``): a change to any of
# them checks again (read from their source files)
CHECKING_MODULES = ("so8t_lib.data.training_split", "so8t_lib.data.tables", "so8t_lib.data.benchmarks",
                    "so8t_lib.data.corpus.guard", "so8t_lib.data.corpus.neardup", "so8t_lib.data.corpus.text")
logger = logging.getLogger("so8t.data")
_KEPT_RESULTS = 4  # distinct corpora checked in one process whose tables stay in memory
_checked: dict[tuple[str, ...], tuple[pd.DataFrame, pd.DataFrame]] = {}
_checked_lock = threading.Lock()  # runs started from threads (a notebook, the stakeholder app) share it


def _inputs_digest(data_dir: Path) -> tuple[str, ...] | None:
    """The content of every file the checks read, or None when a benchmark file is absent (the guard then warns,
    and must warn every time: such a result is not kept)."""
    files = [data_dir / "train.jsonl", data_dir / "val.jsonl",
             *(BENCHMARKS_DIR / bench.relative_path for bench in BENCHMARKS.values())]
    if not all(path.is_file() for path in files):
        return None
    return tuple(sha256_file(path) for path in files)


def training_tables(data_dir: str | Path, train_max_rows: int | None, eval_max_rows: int | None,
                    seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val), each sampled as the config says. DataError for a row id in both files (the frozen-state cache
    keys rows by id: a train row would be trained on its val namesake's states) and for a public benchmark prompt
    in either, as its request or its context, whatever its punctuation, symbols or invisible characters, or a
    near copy of one (the corpus build's Jaccard guard): the benchmarks are for evaluation only. And for a val row
    that asks what a train row asks (``check_val_unseen``)."""
    data_dir = Path(data_dir)
    key = _inputs_digest(data_dir)
    with _checked_lock:
        kept = _checked.get(key) if key is not None else None
    if kept is None:
        passed = _pass_file(key)
        kept = _tables(data_dir) if passed is not None and passed.is_file() else _checked_tables(data_dir)
        _remember_pass(passed)
        if key is not None:
            with _checked_lock:
                while len(_checked) >= _KEPT_RESULTS:
                    _checked.pop(next(iter(_checked)))
                _checked[key] = kept
    train, val = (table.copy() for table in kept)  # a caller that edits its table edits its own copy
    return sampled_train(train, new_train_ids(data_dir), train_max_rows, seed), \
        stratified_sample(val, eval_max_rows, seed)


def new_train_ids(data_dir: str | Path) -> frozenset[str]:
    """The ids of the train rows retrain preprocess added (its ``new_rows.jsonl``, split train); none for a folder
    preprocess did not write."""
    path = Path(data_dir) / NEW_ROWS_FILE
    if not path.is_file():
        return frozenset()
    table = load_table(path)
    return frozenset(table["id"][table["split"] == "train"])


def sampled_train(train: pd.DataFrame, new_ids: frozenset[str], train_max_rows: int | None,
                  seed: int) -> pd.DataFrame:
    """``train`` sampled to ``train_max_rows``, keeping every row in ``new_ids`` and sampling the others to the
    rest of the budget (in the table's order). Without new rows it is the plain stratified sample, row for row."""
    is_new = train["id"].isin(new_ids)
    if train_max_rows is None or not is_new.any():
        return stratified_sample(train, train_max_rows, seed)
    corpus = stratified_sample(train[~is_new], max(train_max_rows - int(is_new.sum()), 0), seed)
    return train[is_new | train.index.isin(corpus.index)]


def _pass_file(key: tuple[str, ...] | None) -> Path | None:
    """Where a pass of these inputs under this checking code is remembered; None when it cannot be (a benchmark
    file absent, the cache setting unusable: the checks then run, and warn or fail, every time)."""
    if key is None:
        return None
    try:
        code = [Path(sys.modules[name].__file__).read_bytes() for name in checking_code()]
        root = cache_root()
    except (KeyError, OSError, TypeError):
        return None
    versions = [sys.version_info[:2], unicodedata.unidata_version, _version_of("confusable_homoglyphs"),
                _version_of("scikit-learn")]  # the look-alike tables, the Unicode data and the n-gram vectorizer
    digest = hashlib.sha256(json.dumps([list(key), versions], default=str).encode()
                            + b"".join(hashlib.sha256(c).digest() for c in code))
    return root / PASSES_DIR / f"{digest.hexdigest()[:32]}.json"


def checking_code() -> list[str]:
    """``CHECKING_MODULES`` and every so8t_lib module they use, found from what their namespaces hold (an imported
    module, or a function or class defined in one: ``guard`` reads ``core.unicode_text``'s look-alike table), sorted."""
    found, todo = set(), list(CHECKING_MODULES)
    while todo:
        name = todo.pop()
        if name in found or name not in sys.modules:
            continue
        found.add(name)
        for value in vars(sys.modules[name]).values():
            used = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            if isinstance(used, str) and used.startswith("so8t_lib.") and used not in found:
                todo.append(used)
    return sorted(found)


def _version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _remember_pass(passed: Path | None) -> None:
    """Write the pass file (called only after the checks passed); a cache that cannot be written costs the next
    process the checks, nothing else."""
    if passed is None or passed.is_file():
        return
    try:
        passed.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(passed, json.dumps({"passed": "training_split checks", "modules": list(CHECKING_MODULES)}))
    except OSError as exc:
        logger.debug("the data checks' pass was not remembered (%s): the next process checks again", exc)


def _tables(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_table(data_dir / "train.jsonl"), load_table(data_dir / "val.jsonl")


def _checked_tables(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both whole tables, or DataError naming what cannot be trusted (see ``training_tables``)."""
    train, val = _tables(data_dir)
    shared = sorted(set(train["id"]) & set(val["id"]))
    if shared:
        raise DataError(f"{data_dir}: {len(shared)} row id(s) are in both train.jsonl and val.jsonl (e.g. "
                        f"{shared[0]!r}); give every row an id of its own across the splits")
    bench = benchmark_prompts(bare_text)
    for name, table in (("train.jsonl", train), ("val.jsonl", val)):
        rows = table[["id", "user_request", "context"]].to_dict("records")
        hits = benchmark_copies(rows, bench)
        if hits:
            raise DataError(f"{data_dir / name}: {len(hits)} row(s) are public benchmark prompts or quote one (row "
                            f"{hits[0][0]!r}: {hits[0][1]}); the benchmarks are for evaluation only, remove them")
        near = benchmark_pairs(rows, top=0, min_sim=NEAR_DUP_THRESHOLD) if bench else []
        if near:
            raise DataError(f"{data_dir / name}: {len(near)} request(s) or context(s) are near copies (character "
                            f"4-gram Jaccard >= {NEAR_DUP_THRESHOLD}) of public benchmark prompts: "
                            f"{describe_pairs(near, 3)}; the benchmarks are for evaluation only, remove them")
    check_val_unseen(data_dir, train, val)
    return train, val


def check_val_unseen(data_dir: Path, train: pd.DataFrame, val: pd.DataFrame) -> None:
    """DataError for a val row that asks what a train row asks (``asked_keys``: the label-conflict check's "same
    request"), whatever the ids and labels: validation would score, and best/ and early stopping select on, rows
    the model trained on. The corpus build keeps every normalised request in one split; this holds hand-made data
    to the same rule."""
    trained = dict(zip(asked_keys(train), train["id"]))
    asked = asked_keys(val)
    leaked = [(row_id, trained[key]) for row_id, key in zip(val["id"], asked) if key in trained]
    if leaked:
        raise DataError(f"{data_dir}: {len(leaked)} val row(s) ask what a train row asks (e.g. val.jsonl "
                        f"{leaked[0][0]!r} and train.jsonl {leaked[0][1]!r}, the same request and context but for "
                        "punctuation and spacing); validation must not score rows the model trains on: remove them "
                        "from one of the two files")
