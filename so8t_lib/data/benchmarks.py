"""The public prompt sets, in one registry: where each file lives, how its rows become the project's
table, which metrics mean something on it, and whom to cite.

They are for evaluation only: the corpus build refuses any request that equals one of their prompts.
``load_any`` is the one entry point for "a data set by name": a corpus split, a registered benchmark,
or any JSONL/CSV file (a benchmark file elsewhere is recognised by its columns).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..core.paths import BENCHMARKS_DIR, CORPUS_DIR
from ..core.schema import NOT_ALLOW, SPLITS
from .tables import COLUMNS, DataError, csv_header, load_split, load_table, read_records, stratified_sample


@dataclass(frozen=True)
class Benchmark:
    """One public prompt set (read-only, evaluation only)."""

    name: str
    relative_path: str  # under shared/benchmarks
    text_column: str
    signature: frozenset[str]  # columns that identify its CSV files
    headline: tuple[str, ...]  # the metrics that say something on it
    citation: str
    row: Callable[[dict, int], dict]  # raw CSV record (and line number) -> the project's row

    def default_path(self) -> Path:
        return BENCHMARKS_DIR / self.relative_path

    def load(self, path: str | Path | None = None) -> pd.DataFrame:
        path = Path(path) if path else self.default_path()
        if not path.is_file():
            raise DataError(
                f"{self.name} benchmark file not found: {path}. The public sets live in shared/benchmarks beside "
                "the repository; pass the file's path explicitly if yours is elsewhere.")
        rows = []
        for line_no, record in read_records(path):
            try:
                rows.append(self.row(record, line_no) | {"source": self.name})
            except DataError as exc:
                raise DataError(f"{path}:{line_no}: {exc}") from None
        return pd.DataFrame(rows, columns=COLUMNS)


def _xstest_row(record: dict, line_no: int) -> dict:
    gold = (record.get("label") or "").strip()
    if gold not in ("safe", "unsafe") or not (record.get("prompt") or "").strip():
        raise DataError("expected columns prompt and label (safe|unsafe)")
    return {"id": f"xstest-{record.get('id') or line_no}", "context": "", "user_request": record["prompt"],
            "label": "ALLOW" if gold == "safe" else NOT_ALLOW, "category": "none", "lang": "en",
            "rationale": "", "task_output": "", "family": f"xstest-{record.get('type', '')}",
            "split": "benchmark", "hard": True}


def _sst_row(record: dict, line_no: int) -> dict:
    if not (record.get("prompts_final") or "").strip():
        raise DataError("field 'prompts_final' is missing or empty")
    return {"id": record.get("id") or f"sst-{line_no}", "context": "", "user_request": record["prompts_final"],
            "label": "REFUSE", "category": "general", "lang": "en", "rationale": "", "task_output": "",
            "family": f"sst-{record.get('harm_area', '')}", "split": "benchmark", "hard": False}


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark(
        name="xstest", relative_path="xstest/xstest_prompts.csv", text_column="prompt",
        signature=frozenset({"prompt", "type", "label"}),
        # no gold REFUSE or ESCALATE rows: over-refusal on the safe half (XSTest counts an escalation as a block,
        # so that measure comes first), "not allowed" on the unsafe contrasts
        headline=("over_refusal_incl_escalate", "not_allowed_rate_unsafe", "over_refusal", "escalation_rate",
                  "unsafe_f1_strict", "unsafe_f1_loose"),
        citation="XSTest v2: Röttger et al., NAACL 2024 (CC-BY-4.0)", row=_xstest_row),
    Benchmark(
        name="sst", relative_path="simplesafetytests/sst_test_cases.csv", text_column="prompts_final",
        signature=frozenset({"prompts_final"}),
        # only gold REFUSE rows
        headline=("refuse_recall", "not_allowed_rate", "dangerous_compliance", "escalation_rate"),
        citation="SimpleSafetyTests: Vidgen et al., 2023 (CC-BY-4.0)", row=_sst_row),
)}


def load_xstest(path: str | Path | None = None) -> pd.DataFrame:
    """XSTest v2: safe prompts -> ALLOW, unsafe contrasts -> NOT_ALLOW."""
    return BENCHMARKS["xstest"].load(path)


def load_sst(path: str | Path | None = None) -> pd.DataFrame:
    """SimpleSafetyTests: every prompt is clearly harmful -> REFUSE."""
    return BENCHMARKS["sst"].load(path)


def recognise(path: Path) -> Benchmark | None:
    """The registered benchmark whose columns a CSV file has (a project table has user_request instead)."""
    if path.suffix.lower() != ".csv" or not path.is_file():
        return None
    # as read_records reads the rows (utf-8-sig: an Excel-saved file's byte order mark would stick to the first
    # column's name, "\ufeffprompt", and hide the signature), with its errors for a file that is not UTF-8 or CSV
    header = set(csv_header(path))
    if "user_request" in header:
        return None
    found = next((b for b in BENCHMARKS.values() if b.signature <= header), None)
    if found is not None and "label" in header and "label" not in found.signature:  # its labels would be replaced
        raise DataError(f"{path}: has {found.citation.split(':')[0]}'s {found.text_column} column and a label column "
                        f"of its own, but {found.name} rows take the benchmark's labels; rename {found.text_column} "
                        "to user_request to score it with yours")
    return found


def _split_and_size(text: str) -> tuple[str, int | None] | None:
    """(split, sample size or None) when ``text`` names a corpus split or ``split:N``; None for anything else."""
    split, colon, size = text.partition(":")
    if split not in SPLITS:
        return None
    if not colon:
        return split, None
    if not (size.isascii() and size.isdigit()) or int(size) < 1:  # isdigit alone takes "²"
        raise DataError(f"{text!r}: a split sample is written split:N with N a positive number of rows")
    return split, int(size)


def load_any(name_or_path: str | Path) -> pd.DataFrame:
    """A corpus split name, a registered benchmark name, or a JSONL/CSV file. ``split:N`` is a stratified
    sample of N rows of a split (seed 0, the same rows every time): quick comparisons on a CPU."""
    text = str(name_or_path)
    if text in BENCHMARKS:
        return BENCHMARKS[text].load()
    if named := _split_and_size(text):
        split, size = named
        return load_split(split) if size is None else stratified_sample(load_split(split), size, seed=0)
    path = Path(text)
    if not path.suffix and not path.exists():  # a misspelt name, not a missing file
        raise DataError(f"{text}: no such data set; give a split ({', '.join(SPLITS)}, or split:N), a public set "
                        f"({', '.join(BENCHMARKS)}) or a JSONL/CSV file")
    benchmark = recognise(path)
    return benchmark.load(path) if benchmark else load_table(path)


def source_file(name_or_path: str | Path) -> Path:
    """The file ``load_any`` reads for this name (a split, ``split:N``, a benchmark or a path): what a command's
    output must not be written over."""
    text = str(name_or_path)
    if text in BENCHMARKS:
        return BENCHMARKS[text].default_path()
    if named := _split_and_size(text):
        return CORPUS_DIR / f"{named[0]}.jsonl"
    return Path(text)


def benchmark_files(benchmarks_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(registered benchmark files found under ``benchmarks_dir``, those missing): what a contamination guard
    would compare with, for its report."""
    paths = [Path(benchmarks_dir) / bench.relative_path for bench in BENCHMARKS.values()]
    return [p for p in paths if p.is_file()], [p for p in paths if not p.is_file()]


def benchmark_prompts(normalize: Callable[[str], str], benchmarks_dir: str | Path | None = BENCHMARKS_DIR,
                      ) -> dict[str, str]:
    """Normalised prompt -> "file:line" over every registered benchmark found under ``benchmarks_dir``:
    what the corpus must never contain. Empty for None (no guard, asked for) and, with a warning, when the
    folder is absent: an installed package has no shared/benchmarks beside it, and a guard that checks
    nothing must not pass for one that ran."""
    if benchmarks_dir is None:
        return {}
    if not Path(benchmarks_dir).is_dir():
        warnings.warn(f"no benchmarks folder at {benchmarks_dir}: the contamination guard is skipped and nothing is "
                      "compared with the public benchmark prompts; pass the folder that holds xstest/ and "
                      "simplesafetytests/ (benchmarks_dir), or None to skip the guard on purpose", stacklevel=2)
        return {}
    prompts: dict[str, str] = {}
    for bench in BENCHMARKS.values():
        path = Path(benchmarks_dir) / bench.relative_path
        if not path.is_file():
            warnings.warn(f"{path} is missing; the contamination guard skips it", stacklevel=2)
            continue
        for line_no, record in read_records(path):
            if bench.text_column not in record:
                raise DataError(f"{path}: expected a column {bench.text_column!r}, found {sorted(record)}")
            text = record.get(bench.text_column) or ""
            if text.strip():
                prompts.setdefault(normalize(text), f"{bench.relative_path}:{line_no}")
    return prompts
