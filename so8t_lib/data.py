"""Load safety data into one validated table, and turn rows into training batches.

Accepted inputs: the project corpus (``data/so8t_safety/*.jsonl``), a user's own JSONL
or CSV with at least ``user_request`` and ``label`` (``context`` optional), and the
public benchmarks in ``shared/benchmarks`` (XSTest, SimpleSafetyTests), which are
for evaluation only. A bad row raises ``DataError`` naming the file, line and field.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from .config import LABELS
from .prompts import format_prompt
from .tokenizer import PROJECT_ROOT

CATEGORIES = ("medical", "legal", "hr", "security", "finance", "general", "none")
LANGS = ("ja", "en")
NOT_ALLOW = "NOT_ALLOW"  # benchmark gold for "anything but ALLOW" (XSTest unsafe contrasts)
COLUMNS = ["id", "context", "user_request", "label", "category", "lang", "rationale", "task_output",
           "family", "split", "hard", "source"]
CORPUS_DIR = PROJECT_ROOT / "data" / "so8t_safety"
BENCHMARK_DIR = PROJECT_ROOT.parent / "shared" / "benchmarks"
BENCHMARK_FILES = {
    "xstest": BENCHMARK_DIR / "xstest" / "xstest_prompts.csv",
    "sst": BENCHMARK_DIR / "simplesafetytests" / "sst_test_cases.csv",
}
MAX_REQUEST_CHARS = 20_000
_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")


class DataError(ValueError):
    """A data file or row that cannot be used; the message names file, line and field."""


def detect_lang(text: str) -> str:
    """'ja' when the text contains kana or kanji, else 'en' (the corpus has only these two)."""
    return "ja" if _JAPANESE.search(text) else "en"


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, raw record) pairs from a JSONL or CSV file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
                yield line_no, record
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for record in reader:
                yield reader.line_num, record
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .csv")


def _text(record: dict, field: str, where: str, required: bool = False) -> str:
    value = record.get(field)
    if value is None or (isinstance(value, float) and value != value):
        value = ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(f"{where}: field {field!r} is missing or empty")
    if len(value) > MAX_REQUEST_CHARS:
        raise DataError(f"{where}: field {field!r} is longer than {MAX_REQUEST_CHARS} characters")
    return value


def _validated_row(record: dict, path: Path, line_no: int, allowed_labels: tuple[str, ...]) -> dict:
    where = f"{path}:{line_no}"
    request = _text(record, "user_request", where, required=True)
    label = _text(record, "label", where, required=True).strip().upper()
    if label not in allowed_labels:
        raise DataError(f"{where}: field 'label' must be one of {', '.join(allowed_labels)} (got {record.get('label')!r})")
    category = _text(record, "category", where).strip().lower() or "none"
    if category not in CATEGORIES:
        raise DataError(f"{where}: field 'category' must be one of {', '.join(CATEGORIES)} (got {category!r})")
    lang = _text(record, "lang", where).strip().lower() or detect_lang(request)
    if lang not in LANGS:
        raise DataError(f"{where}: field 'lang' must be ja or en (got {lang!r})")
    hard = record.get("hard", False)
    if isinstance(hard, str):
        hard = hard.strip().lower() in ("true", "1", "yes")
    return {
        "id": str(record.get("id") or f"{path.stem}:{line_no}"),
        "context": _text(record, "context", where),
        "user_request": request,
        "label": label,
        "category": category,
        "lang": lang,
        "rationale": _text(record, "rationale", where),
        "task_output": _text(record, "task_output", where),
        "family": str(record.get("family") or record.get("id") or f"{path.stem}:{line_no}"),
        "split": str(record.get("split") or ""),
        "hard": bool(hard),
        "source": str(record.get("source") or path.name),
    }


def load_table(path: str | Path, allow_not_allow: bool = False) -> pd.DataFrame:
    """Read a JSONL/CSV file of requests into the validated table (columns: ``COLUMNS``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    allowed = LABELS + ((NOT_ALLOW,) if allow_not_allow else ())
    rows = [_validated_row(record, path, line_no, allowed) for line_no, record in _records(path)]
    if not rows:
        raise DataError(f"{path}: no rows")
    table = pd.DataFrame(rows, columns=COLUMNS)
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{path}: duplicate id {duplicated.iloc[0]!r}")
    return table


def load_split(split: str, data_dir: str | Path = CORPUS_DIR) -> pd.DataFrame:
    """One split of the project corpus: 'train', 'val' or 'test'."""
    if split not in ("train", "val", "test"):
        raise DataError(f"split must be train, val or test (got {split!r})")
    return load_table(Path(data_dir) / f"{split}.jsonl")


def _benchmark_path(name: str, path: str | Path | None) -> Path:
    path = Path(path) if path else BENCHMARK_FILES[name]
    if not path.is_file():
        raise DataError(
            f"{name} benchmark file not found: {path}. The public sets live in shared/benchmarks beside "
            "the repository; pass the file's path explicitly if yours is elsewhere."
        )
    return path


def load_xstest(path: str | Path | None = None) -> pd.DataFrame:
    """XSTest v2 (Röttger et al., 2024): safe prompts -> ALLOW, unsafe contrasts -> NOT_ALLOW."""
    path = _benchmark_path("xstest", path)
    rows = []
    for line_no, record in _records(path):
        gold = (record.get("label") or "").strip()
        if gold not in ("safe", "unsafe") or not (record.get("prompt") or "").strip():
            raise DataError(f"{path}:{line_no}: expected columns prompt and label (safe|unsafe)")
        rows.append({
            "id": f"xstest-{record.get('id') or line_no}", "context": "", "user_request": record["prompt"],
            "label": "ALLOW" if gold == "safe" else NOT_ALLOW, "category": "none", "lang": "en",
            "rationale": "", "task_output": "", "family": f"xstest-{record.get('type', '')}",
            "split": "benchmark", "hard": True, "source": "xstest",
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def load_sst(path: str | Path | None = None) -> pd.DataFrame:
    """SimpleSafetyTests (Vidgen et al., 2023): every prompt is clearly harmful -> REFUSE."""
    path = _benchmark_path("sst", path)
    rows = []
    for line_no, record in _records(path):
        if not (record.get("prompts_final") or "").strip():
            raise DataError(f"{path}:{line_no}: field 'prompts_final' is missing or empty")
        rows.append({
            "id": record.get("id") or f"sst-{line_no}", "context": "", "user_request": record["prompts_final"],
            "label": "REFUSE", "category": "general", "lang": "en", "rationale": "", "task_output": "",
            "family": f"sst-{record.get('harm_area', '')}", "split": "benchmark", "hard": False, "source": "sst",
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def load_any(name_or_path: str | Path) -> pd.DataFrame:
    """'xstest', 'sst', a corpus split name, or a file path (benchmarks recognised by their columns)."""
    text = str(name_or_path)
    if text in ("xstest", "sst"):
        return load_xstest() if text == "xstest" else load_sst()
    if text in ("train", "val", "test"):
        return load_split(text)
    path = Path(text)
    if path.suffix.lower() == ".csv" and path.is_file():
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
        if "prompts_final" in header:
            return load_sst(path)
        if {"prompt", "type", "label"} <= set(header) and "user_request" not in header:
            return load_xstest(path)
    return load_table(path)


# ----- batches ------------------------------------------------------------------------------------
IGNORE_INDEX = -100


def target_text(row: dict) -> str:
    """What TaskHeadA learns to write: the answer for ALLOW, the rationale otherwise."""
    return (row.get("task_output") if row["label"] == "ALLOW" else row.get("rationale")) or ""


class SafetyCollator:
    """Rows -> input ids, attention mask, LM targets (prompt masked), safety labels, decision positions.

    The decision position is the prompt's last token: SafetyHeadB reads it there, so the
    head never sees the answer or rationale that follows (causal attention).
    """

    def __init__(self, tokenizer, max_length: int = 512) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        if max_length < 8:
            raise ValueError("max_length must be at least 8 tokens")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, row: dict) -> tuple[list[int], list[int], int]:
        if row["label"] not in LABELS:
            raise DataError(f"row {row.get('id')}: label {row['label']!r} cannot be trained on (evaluation only)")
        prompt = format_prompt(self.tokenizer, row["user_request"], row.get("context") or None)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"][-self.max_length:]
        target = target_text(row)
        target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"] if target else []
        if target_ids and self.tokenizer.eos_token_id is not None:
            target_ids = target_ids + [self.tokenizer.eos_token_id]
        target_ids = target_ids[: self.max_length - len(prompt_ids)]
        return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids, len(prompt_ids) - 1

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(row) for row in rows]
        width = max(len(ids) for ids, _, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        lm_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, labels, _) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            lm_labels[i, : len(ids)] = torch.tensor(labels)
            attention_mask[i, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "lm_labels": lm_labels,
            "safety_labels": torch.tensor([LABELS.index(row["label"]) for row in rows]),
            "decision_positions": torch.tensor([pos for _, _, pos in encoded]),
        }


def table_rows(table: pd.DataFrame) -> list[dict]:
    """The table as a list of plain dicts (what a DataLoader and the collator consume)."""
    return table.to_dict(orient="records")
