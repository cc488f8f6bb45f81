"""Load safety data into one validated table.

Accepted inputs: the project corpus (``data/so8t_safety/*.jsonl``), a user's own JSONL
or CSV with at least ``user_request`` and ``label`` (``context`` optional), and the
public benchmarks (``so8t_lib.data.benchmarks``), which are for evaluation only. A bad row raises ``DataError`` naming the file, line and field.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.json_objects import RepeatedKey, unique_keys
from ..core.paths import CORPUS_DIR
from ..core.schema import CATEGORIES, LABELS, LANGS, NOT_ALLOW, SPLITS

COLUMNS = ["id", "context", "user_request", "label", "category", "lang", "rationale", "task_output",
           "family", "split", "hard", "source"]
MAX_REQUEST_CHARS = 20_000
_HARD_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}
_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")


class DataError(ValueError):
    """A data file or row that cannot be used; the message names file, line and field."""


def detect_lang(text: str) -> str:
    """'ja' when the text contains kana or kanji, else 'en' (the corpus has only these two)."""
    return "ja" if _JAPANESE.search(text) else "en"


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, raw record) pairs from a JSONL or CSV file (UTF-8; a CSV may start with a byte order mark)."""
    try:
        yield from _records(path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8, naming its first bad byte and that byte's line: a decoding error
    raised while reading a text stream counts from the start of the chunk it decoded, not of the file."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return DataError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                         "save it as UTF-8 (from Excel: 'CSV UTF-8'; a Shift_JIS file: iconv -f shift_jis -t utf-8)")
    return DataError(f"{path}: not UTF-8 text; save it as UTF-8")  # changed while read: no byte to name


def _csv_error(path: Path, line_no: int, exc: csv.Error) -> DataError:
    """A CSV the csv module cannot read: a field over its limit said with the project's own bound, anything else
    in the module's words."""
    if "field limit" in str(exc):
        return DataError(f"{path}:{line_no}: a field is longer than {csv.field_size_limit()} characters; a text may "
                         f"hold at most {MAX_REQUEST_CHARS} (a quote left open runs the field on to the next one)")
    return DataError(f"{path}:{line_no}: not a readable CSV ({exc})")


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file, read as ``read_records`` reads its rows (UTF-8, a byte order mark dropped);
    a file that is not UTF-8 or not CSV is a ``DataError`` naming it."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            return next(reader, [])
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as exc:
            raise _csv_error(path, reader.line_num, exc) from None


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8-sig") as handle:  # a byte order mark, as Windows editors write, is not data
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line, object_pairs_hook=unique_keys)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
                except RepeatedKey as exc:
                    raise DataError(f"{path}:{line_no}: the key {exc.key!r} is given twice in one object; "
                                    "JSON readers keep the last, so say it once") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
                yield line_no, record
    elif suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            try:
                yield from _csv_records(path, reader)
            except csv.Error as exc:  # DictReader's own line_num is that of the last row it returned
                raise _csv_error(path, reader.reader.line_num, exc) from None
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .csv")


def _csv_records(path: Path, reader: csv.DictReader) -> Iterator[tuple[int, dict]]:
    header = reader.fieldnames or []
    repeated = next((name for i, name in enumerate(header) if name and name in header[:i]), None)
    if repeated is not None:  # DictReader would keep the last column of that name
        raise DataError(f"{path}:{reader.line_num}: the column {repeated!r} is named twice in the header; "
                        "name each column once")
    for record in reader:
        if None in record:  # more fields than the header names: an unquoted comma in a text
            raise DataError(f"{path}:{reader.line_num}: more fields than the header names; quote a text "
                            "that holds a comma")
        yield reader.line_num, record


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


def _identifier(record: dict, field: str, where: str) -> str | None:
    """An id or family as text: a string, or a whole number written either way (1 and 1.0 are one id, as a CSV
    column with an empty cell reads them); None when absent. A bool, a fraction or a structure is refused: read
    as text it would merge or split rows silently."""
    value = record.get(field)
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: a CSV's empty cell
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise DataError(f"{where}: field {field!r} must be text or a whole number, got {value!r}")


def _validated_row(record: dict, path: Path, line_no: int, allowed_labels: tuple[str, ...]) -> dict:
    where = f"{path}:{line_no}"
    request = _text(record, "user_request", where, required=True)
    label = _text(record, "label", where, required=True).strip().upper()
    if label not in allowed_labels:
        raise DataError(f"{where}: field 'label' must be one of {', '.join(allowed_labels)} (got {record.get('label')!r})")
    category = _text(record, "category", where).strip().lower() or "none"
    if category not in CATEGORIES:
        raise DataError(f"{where}: field 'category' must be one of {', '.join(CATEGORIES)} (got {category!r})")
    if category == "none" and label in ("REFUSE", "ESCALATE"):  # SAFETY_POLICY.md: each one names its category
        raise DataError(f"{where}: a {label} row needs its category (one of "
                        f"{', '.join(c for c in CATEGORIES if c != 'none')})")
    lang = _text(record, "lang", where).strip().lower() or detect_lang(request)
    if lang not in LANGS:
        raise DataError(f"{where}: field 'lang' must be ja or en (got {lang!r})")
    hard = record.get("hard", False)
    if isinstance(hard, str):  # a CSV cell; an unknown word ("ture", "2") must not read as false
        if hard.strip().lower() not in _HARD_WORDS:
            raise DataError(f"{where}: field 'hard' must be true or false (got {hard!r}; also accepted: "
                            "1/0, yes/no, or empty for false)")
        hard = _HARD_WORDS[hard.strip().lower()]
    elif hard is None or (not isinstance(hard, bool) and hard not in (0, 1)):  # NaN would read as true
        raise DataError(f"{where}: field 'hard' must be true or false (got {hard!r})")
    row_id = _identifier(record, "id", where)
    return {
        "id": row_id if row_id is not None else f"{path.stem}:{line_no}",
        "context": _text(record, "context", where),
        "user_request": request,
        "label": label,
        "category": category,
        "lang": lang,
        "rationale": _text(record, "rationale", where),
        "task_output": _text(record, "task_output", where),
        "family": next((v for v in (_identifier(record, "family", where), row_id) if v is not None),
                       f"{path.stem}:{line_no}"),
        "split": str(record.get("split") or ""),
        "hard": bool(hard),
        "source": str(record.get("source") or path.name),
    }


def asked_keys(table: pd.DataFrame) -> pd.Series:
    """What each row asks, as one comparable text (context and request as the model reads them, punctuation and
    spacing aside: ``wording``): two rows with the same key are the same question whatever their ids or files,
    a zero-width space or a "?" apart."""
    from .corpus.text import wording  # here: the corpus package imports this module

    return table["context"].map(wording) + "\x00" + table["user_request"].map(wording)


REQUIRED_COLUMNS: tuple[str, ...] = ("user_request", "label")
_OTHER_DELIMITERS = (";", "\t", "|")


def _check_header(path: Path) -> None:
    """A CSV whose header lacks a required column is named by its header: read with commas, a file separated by
    semicolons has one column, and ' label' (a space after the comma) is no 'label', so every row would be said to
    lack the field."""
    header = csv_header(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if not header or not missing:
        return  # an empty file: "no rows" says it
    hints = [f"{name!r} is {column!r} with spaces or capitals: rename it" for column in missing for name in header
             if name != column and name.strip().lower() == column]
    hints += [f"the header looks separated by {sep!r}: save the file with commas between the fields"
              for sep in _OTHER_DELIMITERS if any(sep in name for name in header)][:1]
    raise DataError(f"{path}:1: the header has no column {' or '.join(map(repr, missing))}; its columns are "
                    f"{header!r}" + "".join(f"; {hint}" for hint in hints))


def load_table(path: str | Path, allow_not_allow: bool = False) -> pd.DataFrame:
    """Read a JSONL/CSV file of requests into the validated table (columns: ``COLUMNS``)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; name a JSONL or CSV data file in it")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix.lower() == ".csv":
        _check_header(path)
    allowed = LABELS + ((NOT_ALLOW,) if allow_not_allow else ())
    rows = [_validated_row(record, path, line_no, allowed) for line_no, record in read_records(path)]
    if not rows:
        raise DataError(f"{path}: no rows")
    table = pd.DataFrame(rows, columns=COLUMNS)
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{path}: duplicate id {duplicated.iloc[0]!r}")
    asked = asked_keys(table)
    labels = table.groupby(asked)["label"].nunique()
    if (labels > 1).any():  # one request, one context, two answers: a model cannot learn both
        twice = table[asked == labels[labels > 1].index[0]]
        raise DataError(f"{path}: rows {', '.join(map(repr, twice['id']))} ask the same thing with different labels "
                        f"({', '.join(sorted(set(twice['label'])))})")
    return table


def load_split(split: str, data_dir: str | Path = CORPUS_DIR) -> pd.DataFrame:
    """One split of the project corpus: 'train', 'val' or 'test'."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file() and Path(data_dir).resolve() == CORPUS_DIR.resolve():
        raise DataError(f"{path} is missing: the corpus is built from data/seeds, not committed whole; "
                        "run `make venv` or `so8t corpus build`")
    return load_table(path)


def requests_and_contexts(rows: list[dict]) -> tuple[list[str], list[str | None]]:
    """The two arguments ``decide`` and ``decision_states`` take, from table rows (an empty context is none)."""
    return [r["user_request"] for r in rows], [r.get("context") or None for r in rows]


def stratified_sample(table: pd.DataFrame, n: int | None, seed: int = 0,
                      by: tuple[str, ...] = ("label", "lang")) -> pd.DataFrame:
    """``n`` rows of ``table`` with each (label, lang) cell's share kept (largest remainder), drawn with a seeded
    generator and returned in the table's order; the whole table when ``n`` is None or not smaller."""
    if n is None or n >= len(table):
        return table
    rng = np.random.default_rng(seed)
    groups = {key: np.asarray(index) for key, index in table.groupby(list(by), sort=True).groups.items()}
    quotas = {key: n * len(index) / len(table) for key, index in groups.items()}
    counts = {key: int(q) for key, q in quotas.items()}
    for key in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[key] += 1
    chosen = np.concatenate([rng.permutation(groups[key])[: counts[key]] for key in sorted(groups)])
    return table.loc[sorted(chosen, key=table.index.get_loc)]


SHORT_FAMILY_PREFIX = "brief-"  # the families of data/seeds/brief_*.yaml: corpus v3's short requests


def is_short_family(family: object) -> bool:
    """Whether a row comes from the short, blunt seeds, which the docs score apart from the rest."""
    return str(family).startswith(SHORT_FAMILY_PREFIX)


def rows_digest(table: pd.DataFrame) -> str:
    """SHA-256 of what a model is scored on (id, context, request, label, in order): two evaluations with the
    same digest scored the same rows, so their numbers may be compared row for row."""
    digest = hashlib.sha256()
    contexts = table["context"] if "context" in table else [None] * len(table)
    for row_id, context, request, label in zip(table["id"], contexts, table["user_request"], table["label"]):
        fields = [None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
                  for value in (row_id, context, request, label)]
        digest.update(json.dumps(fields, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()
