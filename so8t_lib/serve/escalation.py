"""Escalation cases: the queue people work through (``so8t escalation``), behind a small interface.

``CaseStore`` is everything the runtime and the command line need from a queue; ``EscalationQueue``
implements it with SQLAlchemy on a SQLite file (the embedded default; WAL, a bounded busy wait) or
on PostgreSQL (a URL: several server processes share one queue); ``queue_sql`` holds what differs.
A case moves open -> notified | notify_failed -> resolved; it is *overdue* once
``escalation_timeout`` has passed without a resolution. Resolutions are append-only: each one is a
row of ``resolutions`` (who, when, what, note, which one it supersedes, a ``gate_label``), a second one needs
``supersede=True`` (the case row is locked while it is checked, so two replicas never both record
a first resolution), and ``before_commit`` lets the caller write its audit record inside the same
transaction. With an encryption key, the user id, input, rationale and notes are stored encrypted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from sqlalchemy import exc, func, or_, select, update
from sqlalchemy.engine import Connection

from ..core.schema import HUMAN_DECISIONS, LABELS
from . import queue_sql
from .audit_verify import make_fernet
from .fields import bounded, masked_bounded
from .queue_errors import (  # noqa: F401 - re-exported: callers catch them from here
    AlreadyResolved,
    NothingToSupersede,
    QueueError,
    QueueUnavailable,
    ResolutionConflict,
    ResolvedButUnread,
)
from .queue_sql import cases, resolutions
from .reviewer_names import MAX_NAME_CHARS, checked_name, unseen  # noqa: F401 - re-exported

CLI_CHANNEL = "command line"  # how a resolution arrived when no API key brought it

logger = logging.getLogger("so8t.escalation")

ENCRYPTED_FIELDS = ("user_id", "input", "context", "rationale", "note")
REDACTED_FIELDS = ENCRYPTED_FIELDS  # what retention blanks: every text that may hold personal data
ENCRYPTED_MARK = "enc:"
UNRESOLVED_STATUSES = ("open", "notified", "notify_failed")  # waiting for a person, whatever became of its notice
CASE_STATUSES = (*UNRESOLVED_STATUSES, "resolved")
UNRESOLVED = "unresolved"  # a list filter: every case of UNRESOLVED_STATUSES


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
    # status: one of CASE_STATUSES, UNRESOLVED (any of UNRESOLVED_STATUSES) or None (all), oldest first

    def record_notifications(self, case_id: str, outcomes: list[dict]) -> None: ...

    def resolve(self, case_id: str, decision: str, by: str, note: str | None = None, supersede: bool = False,
                before_commit: Callable[[dict], None] | None = None, via: str = CLI_CHANNEL,
                gate_label: str | None = None) -> dict: ...

    def history(self, case_id: str) -> list[dict]: ...

    def mark_overdue(self, now: dt.datetime | None = None) -> list[str]: ...


# what a reader is shown for a text it cannot decrypt; never a request's text (retrain extract leaves such cases out)
NO_KEY_TEXT = "[encrypted: set the audit key (SO8T_AUDIT_KEY) to read]"
OTHER_KEY_TEXT = "[encrypted with another key]"
UNREADABLE_TEXTS = (NO_KEY_TEXT, OTHER_KEY_TEXT)


def _notifications(case: dict) -> list:
    """A case's recorded notifications; a cell that cannot be read (edited by hand, cut off) is shown as such
    rather than failing every command that lists the queue."""
    try:
        value = json.loads(case.get("notifications") or "[]")
        if isinstance(value, list):
            return value
    except ValueError:
        pass
    logger.error("escalation %s: its notifications column could not be read; shown as unreadable", case.get("case_id"))
    return [{"error": "unreadable notifications record"}]


class EscalationQueue:
    """The CaseStore on SQLAlchemy. ``target`` is a SQLite file (or ``sqlite:///`` URL) or a
    ``postgresql://`` URL. ``create=False`` refuses a target that is not already a queue (a mistyped
    ``--db`` must not create an empty database); ``timeout_s`` bounds every wait for a lock or a server. A
    reviewer's note is stored as the audit log stores it (``logging.mask_personal_data``, ``max_field_chars``)."""

    def __init__(self, target: str | Path, timeout_s: float = 2.0, create: bool = True,
                 encryption_key: str | bytes | None = None, escalation_timeout_s: float = 300.0, *,
                 mask_personal_data: bool = True, max_field_chars: int = 8192) -> None:
        self.timeout_s = timeout_s
        self.mask_personal_data, self.max_field_chars = mask_personal_data, max_field_chars
        self.escalation_timeout_s = escalation_timeout_s
        self._fernet = make_fernet(encryption_key) if encryption_key else None
        try:
            self.path = queue_sql.sqlite_path(target)  # None for a server
        except ValueError as error:
            raise QueueError(str(error)) from None
        self._raw_connect = None
        if self.path is not None:
            self.where = str(self.path)
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.is_file():
                raise QueueError(f"no escalation queue at {self.path} (check --db, SO8T_ESCALATION_DB, "
                                 f"{queue_sql.URL_ENV} or SO8T_LOG_DIR)")
            self.engine, self._raw_connect = queue_sql.sqlite_engine(self.path, create, timeout_s)
        else:
            try:
                url = queue_sql.server_url(str(target))
            except ValueError as exc_:
                raise QueueError(str(exc_)) from None
            self.where = queue_sql.display(url)
            self.engine = queue_sql.postgres_engine(url, timeout_s)
        self.dialect = self.engine.dialect.name
        self._ready, self._absent = False, {}
        self._unavailable: tuple[float, QueueUnavailable] | None = None
        try:
            self._ensure_schema(create)
        except QueueUnavailable as error:
            if not create:
                raise  # the command line says so at once; the runtime retries later
            # the first use, just after, reports this wait rather than wait once more (the runtime opens the queue at
            # its first escalation: a locked queue cost that escalation twice queue_timeout_s)
            self._unavailable = time.monotonic(), error

    def close(self) -> None:
        """Let go of pooled connections (a server's; SQLite keeps none)."""
        self.engine.dispose()

    # ----- connections ----------------------------------------------------------------------------
    @contextmanager
    def _db(self, write: bool = False) -> Iterator[Connection]:
        """One transaction (BEGIN IMMEDIATE on SQLite when writing); driver errors become QueueError."""
        try:
            with self.engine.connect().execution_options(so8t_write=write) as conn, conn.begin():
                yield conn
        except (exc.DBAPIError, exc.TimeoutError) as error:
            found = queue_sql.translate(error, self.where, self.timeout_s)
            raise (QueueUnavailable if found.unavailable else QueueError)(str(found)) from None

    def _ensure_schema(self, create: bool = True, writing: bool = False) -> None:
        """Create or migrate the tables, once. Opened without ``create`` where writes are refused (a read-only file
        or role), a queue an earlier version made is read with the columns it has (``_absent``); the first write
        migrates it first, or fails saying the queue cannot be written."""
        if self._ready and not (writing and self._absent):
            return
        failed, self._unavailable = self._unavailable, None
        if failed is not None and time.monotonic() - failed[0] < self.timeout_s:
            raise failed[1]
        try:
            present = queue_sql.has_queue_tables(self.engine)
            if not present and not create:
                kind = "an SQLite database" if self.path is not None else "a database"
                raise QueueError(f"{self.where} is {kind} but not an escalation queue (no cases table)")
            self._absent = queue_sql.migrate(self.engine, read_only_ok=not (create or writing))
            if self._absent:
                logger.warning("%s cannot be written here and lacks columns added since it was made (%s): they "
                               "read as empty until a process that may write the queue opens it", self.where,
                               ", ".join(f"{t}.{c}" for t, cols in self._absent.items() for c in sorted(cols)))
        except (exc.DBAPIError, exc.TimeoutError) as error:
            found = queue_sql.translate(error, self.where, self.timeout_s)
            raise (QueueUnavailable if found.unavailable else QueueError)(str(found)) from None
        except exc.NoSuchTableError as error:  # so old it lacks a table, and it may not be created here
            raise QueueError(f"{self.where} has no {error} table (made by an early version) and cannot be written "
                             "here to add it: let a process that may write the queue migrate it first (the service, "
                             "or `so8t escalation list` run with write access), then read it") from None
        if self._raw_connect is not None:
            try:
                with closing(self._raw_connect()) as raw:
                    raw.execute("PRAGMA journal_mode=WAL")
            except Exception:  # noqa: BLE001 - WAL is an optimisation; the queue works without it
                pass
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
            return NO_KEY_TEXT
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(value[len(ENCRYPTED_MARK):].encode("ascii")).decode("utf-8")
        except InvalidToken:
            return OTHER_KEY_TEXT

    def _row(self, row) -> dict:
        mapping = row._mapping
        case = {k: (self._open(mapping[k]) if k in ENCRYPTED_FIELDS else mapping[k]) for k in mapping.keys()}
        case["notifications"] = _notifications(case)
        case["test"] = bool(case.get("test"))
        case["urgent"] = bool(case.get("urgent"))
        # overdue means waiting past its due time *without a resolution*: a resolved case is not, even one the sweep
        # marked before a person decided it (its ``overdue_at`` stays, the record that it was late)
        case["overdue"] = case["status"] != "resolved" and (case.get("overdue_at") is not None or (
            case.get("due_at") is not None and case["due_at"] <= iso(utc_now())))
        return case

    def _insert(self):
        """INSERT that ignores a case_id already there (the same case from a replay or another replica)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(cases).on_conflict_do_nothing(index_elements=["case_id"])

    # ----- the CaseStore protocol -------------------------------------------------------------------
    def add(self, case: dict) -> bool:
        self._ensure_schema(writing=True)
        created = case.get("created_at") or iso(utc_now())
        due = iso(dt.datetime.fromisoformat(created) + dt.timedelta(seconds=self.escalation_timeout_s))
        row = {"case_id": case["case_id"], "created_at": created, "due_at": due, "request_id": case.get("request_id"),
               "user_id": self._seal(case.get("user_id")), "category": case.get("category"),
               "input": self._seal(case.get("input")), "context": self._seal(case.get("context")),
               "rationale": self._seal(case.get("rationale")),
               "confidence": case.get("confidence"), "status": "open", "notifications": "[]",
               "test": int(bool(case.get("test"))), "error": case.get("error"), "urgent": int(bool(case.get("urgent"))),
               "client": case.get("client")}
        with self._db(write=True) as db:
            return db.execute(self._insert().values(**row).returning(cases.c.case_id)).first() is not None

    def get(self, case_id: str) -> dict:
        self._ensure_schema()
        with self._db() as db:
            row = db.execute(queue_sql.case_query(self._absent).where(cases.c.case_id == case_id)).first()
        if row is None:
            raise KeyError(f"no escalation case {case_id!r} in {self.where}")
        return self._row(row)

    def list(self, status: str | None = None, overdue_only: bool = False, include_tests: bool = True) -> list[dict]:
        self._ensure_schema()
        query = queue_sql.case_query(self._absent).order_by(cases.c.created_at, cases.c.case_id)
        if status == UNRESOLVED:  # every case waiting for a person, whatever became of its notification
            query = query.where(cases.c.status.in_(UNRESOLVED_STATUSES))
        elif status:
            query = query.where(cases.c.status == status)
        if not include_tests:
            query = query.where(queue_sql.readable(cases, "test", self._absent) == 0)
        with self._db() as db:
            rows = db.execute(query).fetchall()
        found = [self._row(r) for r in rows]
        return [c for c in found if c["overdue"]] if overdue_only else found

    def count(self) -> dict[str, int]:
        """Cases and resolutions held (for backups and reports)."""
        self._ensure_schema()
        with self._db() as db:
            return {"cases": db.execute(select(func.count()).select_from(cases)).scalar_one(),
                    "resolutions": db.execute(select(func.count()).select_from(resolutions)).scalar_one()}

    def record_notifications(self, case_id: str, outcomes: list[dict]) -> None:
        """Append one sending's outcomes (a reminder's carry ``reminder: true``) to the case's record. A failure
        never takes back ``notified``: a failed OVERDUE reminder does not undo the notice a person already got."""
        ok = bool(outcomes) and all(o["ok"] for o in outcomes)
        self._ensure_schema(writing=True)
        with self._db(write=True) as db:
            found = db.execute(select(cases).where(cases.c.case_id == case_id).with_for_update()).first()
            if found is not None:
                kept = found.status == "resolved" or (found.status == "notified" and not ok)
                db.execute(update(cases).where(cases.c.case_id == case_id).values(
                    status=found.status if kept else "notified" if ok else "notify_failed",
                    notifications=json.dumps([*_notifications(found._mapping), *outcomes], ensure_ascii=False)))

    def history(self, case_id: str) -> list[dict]:
        self._ensure_schema()
        with self._db() as db:
            rows = db.execute(queue_sql.resolution_query(self._absent).where(resolutions.c.case_id == case_id)
                              .order_by(resolutions.c.id)).fetchall()
        return [{**dict(r._mapping), "note": self._open(r._mapping["note"])} for r in rows]

    @staticmethod
    def _last_resolution(db: Connection, case_id: str):
        return db.execute(select(resolutions).where(resolutions.c.case_id == case_id)
                          .order_by(resolutions.c.id.desc()).limit(1)).first()

    def resolve(self, case_id: str, decision: str, by: str, note: str | None = None, supersede: bool = False,
                before_commit: Callable[[dict], None] | None = None, via: str = CLI_CHANNEL,
                gate_label: str | None = None) -> dict:
        """Record a person's decision. ``by`` is the name they give; ``via`` the channel (the API key that sent
        it, kept because a desk's key can give any name); ``gate_label`` what the gate should have decided."""
        if decision not in HUMAN_DECISIONS:
            raise ValueError(f"decision must be one of {HUMAN_DECISIONS}, got {decision!r}")
        if gate_label is not None and gate_label not in LABELS:
            raise ValueError(f"gate_label must be one of {LABELS} (or none), got {gate_label!r}")
        by = checked_name(by)
        if note is not None:  # what the audit record stores (AuditLog.MASKED_FIELDS), so the record and the row agree
            note = (masked_bounded if self.mask_personal_data else bounded)(note, self.max_field_chars)
        self._ensure_schema(writing=True)
        now = iso(utc_now())
        with self._db(write=True) as db:
            found = db.execute(select(cases).where(cases.c.case_id == case_id).with_for_update()).first()
            if found is None:
                raise KeyError(f"no escalation case {case_id!r} in {self.where}")
            row = found._mapping
            last = self._last_resolution(db, case_id)
            last = last._mapping if last is not None else None
            if (last is not None or row["status"] == "resolved") and not supersede:
                who = last["decided_by"] if last is not None else row["resolved_by"]
                what = last["decision"] if last is not None else row["human_decision"]
                raise AlreadyResolved(f"case {case_id} was already resolved as {what} by {who}; pass --supersede to "
                                      "record a new decision (the earlier one stays in the history)")
            if last is None and row["status"] != "resolved" and supersede:
                raise NothingToSupersede(f"case {case_id} has no resolution ({row['status']}): there is nothing "
                                         "to supersede; check the case id, or resolve it without --supersede")
            if last is None and row["status"] == "resolved":  # resolved by an earlier version: keep it as history
                db.execute(resolutions.insert().values(
                    case_id=case_id, decided_at=row["resolved_at"] or now, decision=row["human_decision"],
                    decided_by=row["resolved_by"] or "?", note=row["note"]))
                last = self._last_resolution(db, case_id)._mapping
            inserted = db.execute(resolutions.insert().values(
                case_id=case_id, decided_at=now, decision=decision, decided_by=by, note=self._seal(note),
                supersedes=last["id"] if last is not None else None, via=via, gate_label=gate_label))
            db.execute(update(cases).where(cases.c.case_id == case_id).values(
                status="resolved", human_decision=decision, resolved_by=by, resolved_at=now,
                note=self._seal(note), gate_label=gate_label))
            resolution = {"resolution_id": inserted.inserted_primary_key[0], "case_id": case_id,
                          "request_id": row["request_id"], "decision": decision, "decided_by": by,
                          "decided_at": now, "note": note, "test": bool(row["test"]), "via": via,
                          "gate_label": gate_label,
                          "supersedes": None if last is None else {
                              "resolution_id": last["id"], **{k: last[k] for k in ("decision", "decided_by", "decided_at")}}}
            if before_commit is not None:
                before_commit(resolution)  # e.g. the audit record: if it fails, nothing is resolved
        try:
            return {**self.get(case_id), "resolution": resolution, "history": self.history(case_id)}
        except QueueError as exc:
            raise ResolvedButUnread(f"case {case_id} was resolved as {decision} by {by} (recorded and "
                                    f"audited), but could not be read back: {exc}") from None

    def mark_overdue(self, now: dt.datetime | None = None) -> list[str]:
        self._ensure_schema(writing=True)
        stamp = iso(now or utc_now())
        with self._db(write=True) as db:
            rows = db.execute(update(cases).where(cases.c.status != "resolved").where(cases.c.overdue_at.is_(None))
                              .where(cases.c.due_at.is_not(None)).where(cases.c.due_at <= stamp)
                              .values(overdue_at=stamp).returning(cases.c.case_id)).fetchall()
        return sorted(r[0] for r in rows)

    def redact_resolved(self, before: dt.datetime, dry_run: bool = False,
                        before_commit: Callable[[list[str]], None] | None = None) -> list[str]:
        """Blank the stored texts (``REDACTED_FIELDS``) of cases resolved before ``before``; the decisions, who made
        them and when, the category and the history rows stay. One statement per table, whatever the number of
        cases; ``before_commit`` (the audit record of the redaction) runs inside the transaction: if it fails,
        nothing is redacted."""
        self._ensure_schema(writing=not dry_run)
        old = (cases.c.status == "resolved") & (cases.c.resolved_at < iso(before))
        due = old & or_(*(queue_sql.readable(cases, f, self._absent).is_not(None) for f in REDACTED_FIELDS))
        with self._db(write=not dry_run) as db:
            if dry_run:
                return sorted(r[0] for r in db.execute(select(cases.c.case_id).where(due)).fetchall())
            ids = sorted(r[0] for r in db.execute(update(cases).where(due).values(
                {f: None for f in REDACTED_FIELDS}).returning(cases.c.case_id)).fetchall())
            db.execute(update(resolutions).where(resolutions.c.case_id.in_(select(cases.c.case_id).where(old)))
                       .where(resolutions.c.note.is_not(None)).values(note=None))
            if ids and before_commit is not None:
                before_commit(ids)
        return ids

    def raw_sqlite(self):
        """A plain sqlite3 connection to the queue file (SQLite's online backup API needs one)."""
        if self._raw_connect is None:
            raise QueueError(f"{self.where} is not a SQLite queue")
        return self._raw_connect()
