"""What a SQLite queue copy holds, apart from its bytes: restore's test of a copy whose sha256 no longer matches.

Every so8t command that opens a queue migrates its schema (``queue_sql.ensure_schema`` adds the columns added
since), and SQLite may rewrite pages of a file it opens; so an operator who looks at an older backup's queue with
a newer so8t (``so8t escalation list --db <backup>/logs/escalations.sqlite``) changes the file's bytes, though
no case or resolution changed. ``backup`` therefore records, for each table it knows, the columns the copy has
and a sha256 over all its rows (those columns, in primary-key order, each row one line of canonical JSON: cells
as stored, encrypted ones too); restore recomputes it over the recorded columns, reading the file ``immutable``
(nothing is ever written to a backup), so columns added later are ignored and a recorded column that is gone, or
any row that differs, is a change.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

from ...serve.escalation import QueueError
from ...serve.queue_sql import cases, resolutions

TABLES = {t.name: tuple(c.name for c in t.primary_key.columns) for t in (cases, resolutions)}  # table -> its key
COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")


def digest_shape_problem(digest: object) -> str | None:
    """What in BACKUP.json's queue digest is not as ``backup`` writes it (its column names are put into SQL)."""
    if not isinstance(digest, dict) or set(digest) != set(TABLES) or not all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and SHA256.fullmatch(e["sha256"])
            and isinstance(e.get("columns"), list) and e["columns"]
            and all(isinstance(c, str) and COLUMN.fullmatch(c) for c in e["columns"]) for e in digest.values()):
        return f"the queue's digest is not a table of {', '.join(TABLES)} with their columns and sha256"
    return None


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    db.text_factory = lambda data: data.decode("utf-8", "surrogateescape")  # text as stored, even if not UTF-8
    return db


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]


def _quoted(names) -> str:
    return ", ".join(f'"{name}"' for name in names)  # checked names (COLUMN, TABLES): no quote inside


def _cell(value: object) -> object:
    if isinstance(value, bytes):  # a BLOB; a text cell is never an object, so this cannot be mistaken for one
        return {"blob": value.hex()}
    raise TypeError(f"a queue cell of type {type(value).__name__}")


def _rows_sha256(db: sqlite3.Connection, table: str, columns: list[str]) -> str:
    digest = hashlib.sha256()
    query = f'SELECT {_quoted(columns)} FROM "{table}" ORDER BY {_quoted(TABLES[table])}'
    for row in db.execute(query):
        digest.update(json.dumps(list(row), separators=(",", ":"), default=_cell).encode("ascii") + b"\n")
    return digest.hexdigest()


def queue_digest(path: Path) -> dict:
    """{table: {"columns", "sha256"}} of a queue file (a backup's copy), over every column each table has."""
    try:
        with closing(_open(path)) as db:
            return {table: {"columns": (columns := _columns(db, table)), "sha256": _rows_sha256(db, table, columns)}
                    for table in TABLES}
    except sqlite3.Error as exc:
        raise QueueError(f"{path}: its rows cannot be read ({exc})") from None


def rows_changed(path: Path, recorded: dict) -> str | None:
    """None when the queue file holds exactly the rows ``recorded`` (by ``queue_digest``; columns added since are
    ignored), else what differs."""
    try:
        with closing(_open(path)) as db:
            for table, entry in recorded.items():
                have = _columns(db, table)
                gone = [c for c in entry["columns"] if c not in have]
                if not have:
                    return f"it has no table {table}"
                if gone:
                    return f"{table} lacks the column(s) {', '.join(gone)} it had"
                if _rows_sha256(db, table, entry["columns"]) != entry["sha256"]:
                    return f"the rows of {table} differ from those backed up"
    except sqlite3.Error as exc:
        return f"its rows cannot be read ({exc})"
    return None
