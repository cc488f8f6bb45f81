"""Escalation cases: the queue people work through, behind a small interface.

    so8t escalation list [--status open] [--overdue]
    so8t escalation resolve CASE_ID --decision ALLOW|REFUSE --by NAME [--note TEXT] [--supersede]
    so8t escalation history CASE_ID

``CaseStore`` is everything the runtime and the command line need from a queue; ``EscalationQueue``
implements it on SQLite (WAL, a bounded busy wait). A server with a PostgreSQL queue implements the
same protocol. A case moves open -> notified | notify_failed -> resolved; it is *overdue* once
``escalation_timeout`` has passed without a resolution. Resolutions are append-only: each one is a
row of ``resolutions`` (who, when, what, note, which one it supersedes), a second one needs
``supersede=True``, and ``before_commit`` lets the caller write its audit record inside the same
transaction. With an encryption key, the user id, input, rationale and notes are stored encrypted.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..core.schema import HUMAN_DECISIONS
from .audit_verify import make_fernet

ENCRYPTED_FIELDS = ("user_id", "input", "rationale", "note")
ENCRYPTED_MARK = "enc:"
CASE_COLUMNS = {
    "case_id": "TEXT PRIMARY KEY", "created_at": "TEXT NOT NULL", "due_at": "TEXT", "request_id": "TEXT",
    "user_id": "TEXT", "category": "TEXT", "input": "TEXT", "rationale": "TEXT", "confidence": "REAL",
    "status": "TEXT NOT NULL", "notifications": "TEXT", "human_decision": "TEXT", "resolved_by": "TEXT",
    "resolved_at": "TEXT", "note": "TEXT", "test": "INTEGER NOT NULL DEFAULT 0", "overdue_at": "TEXT",
    "error": "TEXT",
}
_RESOLUTIONS = """CREATE TABLE IF NOT EXISTS resolutions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, case_id TEXT NOT NULL, decided_at TEXT NOT NULL, decision TEXT NOT NULL,
    decided_by TEXT NOT NULL, note TEXT, supersedes INTEGER)"""


class QueueError(RuntimeError):
    """The queue cannot be used: missing, not a queue, or not answering; the message names the file."""


class QueueUnavailable(QueueError):
    """The queue did not answer within the bounded wait (locked by another process, or unreachable)."""


class AlreadyResolved(ValueError):
    """A second resolution without ``supersede``: the first must not be overwritten silently."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


@runtime_checkable
class CaseStore(Protocol):
    """What the runtime and the CLI need from an escalation queue, whatever stores it."""

    def add(self, case: dict) -> bool: ...  # True if new; adding the same case_id again changes nothing

    def get(self, case_id: str) -> dict: ...

    def list(self, status: str | None = None, overdue_only: bool = False, include_tests: bool = True) -> list[dict]: ...

    def record_notifications(self, case_id: str, outcomes: list[dict]) -> None: ...

    def resolve(self, case_id: str, decision: str, by: str, note: str | None = None, supersede: bool = False,
                before_commit: Callable[[dict], None] | None = None) -> dict: ...

    def history(self, case_id: str) -> list[dict]: ...

    def mark_overdue(self, now: dt.datetime | None = None) -> list[str]: ...


class EscalationQueue:
    """The SQLite CaseStore. ``create=False`` refuses a path that is not already a queue (a mistyped
    ``--db`` must not create an empty database); ``timeout_s`` bounds every wait for a lock."""

    def __init__(self, path: str | Path, timeout_s: float = 2.0, create: bool = True,
                 encryption_key: str | bytes | None = None, escalation_timeout_s: float = 300.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.escalation_timeout_s = escalation_timeout_s
        self._fernet = make_fernet(encryption_key) if encryption_key else None
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._uri = f"file:{self.path}?mode=rwc"
        else:
            if not self.path.is_file():
                raise QueueError(f"no escalation queue at {self.path} (check --db, SO8T_ESCALATION_DB or SO8T_LOG_DIR)")
            self._uri = f"file:{self.path}?mode=rw"
        self._ready = False
        try:
            self._ensure_schema(create)
        except QueueUnavailable:
            if not create:
                raise  # the command line says so at once; the runtime retries later

    # ----- connections ----------------------------------------------------------------------------
    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        db = None
        try:
            db = sqlite3.connect(self._uri, uri=True, timeout=self.timeout_s, isolation_level=None)
            db.row_factory = sqlite3.Row
            if write:
                db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                if write:
                    db.execute("COMMIT")
            except BaseException:
                if write and db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise QueueUnavailable(f"{self.path}: the escalation queue is locked by another process (waited "
                                       f"{self.timeout_s:g}s)") from None
            raise QueueError(f"{self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise QueueError(f"{self.path} is not an escalation queue ({exc})") from None
        finally:
            if db is not None:
                db.close()

    def _ensure_schema(self, create: bool = True) -> None:
        if self._ready:
            return
        with self._db() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "cases" not in tables and not create:
                raise QueueError(f"{self.path} is an SQLite database but not an escalation queue (no cases table)")
        with self._db(write=True) as db:
            db.execute("CREATE TABLE IF NOT EXISTS cases (" +
                       ", ".join(f"{k} {v}" for k, v in CASE_COLUMNS.items()) + ")")
            have = {r["name"] for r in db.execute("PRAGMA table_info(cases)")}
            for column, kind in CASE_COLUMNS.items():  # queues made by earlier versions
                if column not in have:
                    db.execute(f"ALTER TABLE cases ADD COLUMN {column} {kind.replace(' PRIMARY KEY', '')}")
            db.execute(_RESOLUTIONS)
        try:
            with self._db() as db:
                db.execute("PRAGMA journal_mode=WAL")
        except QueueUnavailable:
            pass  # WAL is an optimisation; the queue works without it
        self._ready = True

    # ----- encryption at rest ---------------------------------------------------------------------
    def _seal(self, value: str | None) -> str | None:
        if value is None or self._fernet is None:
            return value
        return ENCRYPTED_MARK + self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def _open(self, value):
        if not isinstance(value, str) or not value.startswith(ENCRYPTED_MARK):
            return value
        if self._fernet is None:
            return "[encrypted: set the audit key (SO8T_AUDIT_KEY) to read]"
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(value[len(ENCRYPTED_MARK):].encode("ascii")).decode("utf-8")
        except InvalidToken:
            return "[encrypted with another key]"

    def _row(self, row: sqlite3.Row) -> dict:
        case = {k: (self._open(row[k]) if k in ENCRYPTED_FIELDS else row[k]) for k in row.keys()}
        case["notifications"] = json.loads(case.get("notifications") or "[]")
        case["test"] = bool(case.get("test"))
        case["overdue"] = case.get("overdue_at") is not None or (
            case["status"] != "resolved" and case.get("due_at") is not None and case["due_at"] <= iso(utc_now()))
        return case

    # ----- the CaseStore protocol -------------------------------------------------------------------
    def add(self, case: dict) -> bool:
        self._ensure_schema()
        created = case.get("created_at") or iso(utc_now())
        due = iso(dt.datetime.fromisoformat(created) + dt.timedelta(seconds=self.escalation_timeout_s))
        with self._db(write=True) as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO cases (case_id, created_at, due_at, request_id, user_id, category, input, "
                "rationale, confidence, status, notifications, test, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (case["case_id"], created, due, case.get("request_id"), self._seal(case.get("user_id")),
                 case.get("category"), self._seal(case.get("input")), self._seal(case.get("rationale")),
                 case.get("confidence"), "open", "[]", int(bool(case.get("test"))), case.get("error")))
            return cursor.rowcount == 1

    def get(self, case_id: str) -> dict:
        self._ensure_schema()
        with self._db() as db:
            row = db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            raise KeyError(f"no escalation case {case_id!r} in {self.path}")
        return self._row(row)

    def list(self, status: str | None = None, overdue_only: bool = False, include_tests: bool = True) -> list[dict]:
        self._ensure_schema()
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if not include_tests:
            where.append("test = 0")
        with self._db() as db:
            rows = db.execute("SELECT * FROM cases" + (" WHERE " + " AND ".join(where) if where else "") +
                              " ORDER BY created_at, case_id", args).fetchall()
        cases = [self._row(r) for r in rows]
        return [c for c in cases if c["overdue"]] if overdue_only else cases

    def record_notifications(self, case_id: str, outcomes: list[dict]) -> None:
        ok = bool(outcomes) and all(o["ok"] for o in outcomes)
        with self._db(write=True) as db:
            db.execute("UPDATE cases SET notifications = ?, status = CASE WHEN status = 'resolved' THEN status "
                       "ELSE ? END WHERE case_id = ?",
                       (json.dumps(outcomes, ensure_ascii=False), "notified" if ok else "notify_failed", case_id))

    def history(self, case_id: str) -> list[dict]:
        self._ensure_schema()
        with self._db() as db:
            rows = db.execute("SELECT * FROM resolutions WHERE case_id = ? ORDER BY id", (case_id,)).fetchall()
        return [{**dict(r), "note": self._open(r["note"])} for r in rows]

    def resolve(self, case_id: str, decision: str, by: str, note: str | None = None, supersede: bool = False,
                before_commit: Callable[[dict], None] | None = None) -> dict:
        if decision not in HUMAN_DECISIONS:
            raise ValueError(f"decision must be one of {HUMAN_DECISIONS}, got {decision!r}")
        if not by.strip():
            raise ValueError("--by must name the person who decided")
        self._ensure_schema()
        now = iso(utc_now())
        with self._db(write=True) as db:
            row = db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
            if row is None:
                raise KeyError(f"no escalation case {case_id!r} in {self.path}")
            last = db.execute("SELECT * FROM resolutions WHERE case_id = ? ORDER BY id DESC LIMIT 1",
                              (case_id,)).fetchone()
            if (last is not None or row["status"] == "resolved") and not supersede:
                who = last["decided_by"] if last is not None else row["resolved_by"]
                what = last["decision"] if last is not None else row["human_decision"]
                raise AlreadyResolved(f"case {case_id} was already resolved as {what} by {who}; pass --supersede to "
                                      "record a new decision (the earlier one stays in the history)")
            if last is None and row["status"] == "resolved":  # resolved by an earlier version: keep it as history
                db.execute("INSERT INTO resolutions (case_id, decided_at, decision, decided_by, note) VALUES (?,?,?,?,?)",
                           (case_id, row["resolved_at"] or now, row["human_decision"], row["resolved_by"] or "?",
                            row["note"]))
                last = db.execute("SELECT * FROM resolutions WHERE case_id = ? ORDER BY id DESC LIMIT 1",
                                  (case_id,)).fetchone()
            cursor = db.execute("INSERT INTO resolutions (case_id, decided_at, decision, decided_by, note, supersedes) "
                                "VALUES (?,?,?,?,?,?)", (case_id, now, decision, by.strip(), self._seal(note),
                                                         last["id"] if last is not None else None))
            db.execute("UPDATE cases SET status='resolved', human_decision=?, resolved_by=?, resolved_at=?, note=? "
                       "WHERE case_id=?", (decision, by.strip(), now, self._seal(note), case_id))
            resolution = {"resolution_id": cursor.lastrowid, "case_id": case_id, "request_id": row["request_id"],
                          "decision": decision, "decided_by": by.strip(), "decided_at": now, "note": note,
                          "test": bool(row["test"]),
                          "supersedes": None if last is None else {"resolution_id": last["id"], "decision": last["decision"],
                                                                   "decided_by": last["decided_by"],
                                                                   "decided_at": last["decided_at"]}}
            if before_commit is not None:
                before_commit(resolution)  # e.g. the audit record: if it fails, nothing is resolved
        return {**self.get(case_id), "resolution": resolution, "history": self.history(case_id)}

    def mark_overdue(self, now: dt.datetime | None = None) -> list[str]:
        self._ensure_schema()
        stamp = iso(now or utc_now())
        with self._db(write=True) as db:
            rows = db.execute("UPDATE cases SET overdue_at = ? WHERE status != 'resolved' AND overdue_at IS NULL "
                              "AND due_at IS NOT NULL AND due_at <= ? RETURNING case_id", (stamp, stamp)).fetchall()
        return [r["case_id"] for r in rows]
