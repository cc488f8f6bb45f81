"""Copying the escalation queue out of a running system and back.

A SQLite queue is copied with SQLite's online backup API (``sqlite3.Connection.backup``): a
consistent snapshot while servers keep writing, page by page, never a half-written file. A PostgreSQL
queue is exported as JSON lines (cases, resolutions) from one REPEATABLE READ transaction, a
consistent snapshot too, and loaded back into an empty queue (a new SQLite file or an empty
PostgreSQL database). ``QueueSnapshot`` fixes the snapshot's moment apart from the copying, so that
backup can take it while it holds the audit chains' locks. ``check_sqlite`` is what restore asks of a
copy before using it.

A SQLite copy is one file that holds all of it. The backup API writes every page into the copy's file
(the copy's connection writes through a rollback journal, whatever the source's mode), so nothing of
it is ever in a ``-wal``; the header it copies from a WAL queue says WAL, and is left so: every so8t
tool opens a queue in WAL mode (``EscalationQueue``), and switching a copy's mode rewrites its header
(its sha256 would no longer match the backup's record). The side files SQLite makes beside the copy
when it is opened (``-shm``, an empty ``-wal``; a ``-journal`` while it is written) are therefore not
part of a backup: never listed, and only one that holds data (a write to the copy) is a problem.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from sqlalchemy import Table, exc, select, text
from sqlalchemy.engine import Connection

from ...serve import queue_sql
from ...serve.escalation import EscalationQueue, QueueError
from ...serve.queue_sql import cases, resolutions

SQLITE_FILE = "escalations.sqlite"
CASES_FILE, RESOLUTIONS_FILE = "cases.jsonl", "resolutions.jsonl"
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")  # SQLite's files beside a database it has open (or had)
SQLITE_MAGIC = b"SQLite format 3\x00"


def database_of(path: Path) -> Path | None:
    """The SQLite database ``path`` is a side file of (``<db>-wal``, ``-shm`` or ``-journal`` beside a file that
    is a SQLite database), else None."""
    for suffix in SIDE_SUFFIXES:
        if path.name.endswith(suffix) and path.name != suffix:
            database = path.with_name(path.name[:-len(suffix)])
            try:
                with open(database, "rb") as head:
                    return database if head.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC else None
            except OSError:
                return None
    return None


def side_files(database: Path) -> list[Path]:
    return [p for p in (database.with_name(database.name + s) for s in SIDE_SUFFIXES) if p.is_file()]


class QueueSnapshot:
    """A queue's rows as of the moment ``take`` is called, copied out afterwards from the open transaction
    (``copy_sqlite(queue, target, snapshot.sqlite)``, ``export_rows(queue, folder, snapshot.connection)``):
    backup takes the moment while it holds the audit chains' locks (so the chains' copies and the queue's are of
    one moment) and copies after letting go (a large queue's copy must not stall the gate's appends). The
    connection is opened here, so ``take`` only begins a transaction and reads: no connecting, no waiting."""

    def __init__(self, queue: EscalationQueue) -> None:
        self.queue = queue
        self.sqlite: sqlite3.Connection | None = None
        self.connection: Connection | None = None
        if queue.path is not None:
            try:
                self.sqlite = queue.raw_sqlite()
            except sqlite3.Error as error:
                raise QueueError(f"{queue.where}: cannot be read ({error})") from None
        else:
            conn = queue.engine.connect()
            self.connection = conn.execution_options(isolation_level="REPEATABLE READ") \
                if queue.dialect == "postgresql" else conn

    def take(self) -> None:
        """Fix the snapshot now: a read transaction that has read (a WAL reader's snapshot and a REPEATABLE READ
        one are fixed by the first read, not by BEGIN). Readers wait for no writer in either."""
        try:
            if self.sqlite is not None:
                self.sqlite.execute("BEGIN")
                self.sqlite.execute("SELECT count(*) FROM sqlite_master").fetchone()
            elif self.connection is not None:
                self.connection.begin()
                self.connection.execute(text("SELECT 1"))
        except (sqlite3.Error, exc.DBAPIError) as error:
            raise QueueError(f"{self.queue.where}: cannot be read ({error})") from None

    def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.connection is not None:
            self.connection.close()


def copy_sqlite(queue: EscalationQueue, target: Path, source: sqlite3.Connection | None = None) -> dict:
    """Online backup of a SQLite queue into ``target`` (a new file), of the snapshot ``source`` reads in (a
    connection inside a read transaction, left open) or else of now; its counts. The copy is one file: no side
    file of SQLite's is left beside it (see the module docstring)."""
    own = source is None
    try:
        if source is None:
            source = queue.raw_sqlite()
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    except sqlite3.Error as error:
        raise QueueError(f"{queue.where}: the online backup failed ({error})") from None
    finally:
        if own and source is not None:
            source.close()
    counts = check_sqlite(target)
    for side in side_files(target):  # none is made (the copy's connection closed last, the check reads immutable)
        if side.stat().st_size and not side.name.endswith("-shm"):
            raise QueueError(f"{side}: SQLite left {side.stat().st_size} bytes beside the queue's copy; the copy "
                             "would not be one file")
        side.unlink()
    return counts


def check_sqlite(path: Path) -> dict:
    """{"cases", "resolutions"} of a queue file that passes SQLite's integrity check; QueueError if not. The file
    is read as it is (``immutable``: no side file is made or read, so a backup on read-only storage is checked
    too, and the check reads exactly the bytes whose sha256 was compared)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise QueueError(f"{path}: SQLite integrity check failed ({result})")
            return {"cases": db.execute("SELECT count(*) FROM cases").fetchone()[0],
                    "resolutions": db.execute("SELECT count(*) FROM resolutions").fetchone()[0]}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise QueueError(f"{path}: not a readable escalation queue ({exc})") from None


def export_rows(queue: EscalationQueue, folder: Path, snapshot: Connection | None = None) -> dict:
    """Every case and resolution of a server queue, from one snapshot (``snapshot``: a connection inside the
    transaction that holds it; else one taken now), as JSON lines; their counts. Only the columns the queue has
    are written: one made by an earlier version and opened where it may only be read (a SELECT-only role, a hot
    standby) lacks those added since, and a restore leaves them empty, as a migration would."""
    folder.mkdir(parents=True, exist_ok=True)

    def read(conn: Connection) -> tuple[list[dict], list[dict]]:
        absent = queue_sql.missing_columns(conn)  # as this snapshot has them (a writer may have migrated it since)

        def rows(table: Table) -> list[dict]:
            have = [c for c in table.columns if c.name not in absent.get(table.name, ())]
            return [dict(r._mapping) for r in conn.execute(select(*have).order_by(*table.primary_key.columns))]

        return rows(cases), rows(resolutions)

    try:
        if snapshot is not None:
            case_rows, resolution_rows = read(snapshot)
        else:
            with queue.engine.connect() as conn:
                if queue.dialect == "postgresql":  # one snapshot for both tables (SQLite's transaction is one)
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    case_rows, resolution_rows = read(conn)
    except exc.DBAPIError as error:
        found = queue_sql.translate(error, queue.where, queue.timeout_s)
        raise QueueError(f"{found}; the escalation queue could not be copied") from None
    for name, rows in ((CASES_FILE, case_rows), (RESOLUTIONS_FILE, resolution_rows)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {"cases": len(case_rows), "resolutions": len(resolution_rows)}


def read_rows(folder: Path) -> tuple[list[dict], list[dict]]:
    def load(name: str) -> list[dict]:
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    return load(CASES_FILE), load(RESOLUTIONS_FILE)


def load_rows(folder: Path, target: str | Path) -> dict:
    """Put exported rows into an empty queue (a new SQLite file or an empty PostgreSQL database), ids
    kept; refuses a queue that already holds cases."""
    case_rows, resolution_rows = read_rows(folder)
    queue = EscalationQueue(target)
    try:
        if queue.count()["cases"]:
            raise QueueError(f"{queue.where} already holds cases; restore into an empty queue")
        with queue.engine.connect().execution_options(so8t_write=True) as conn, conn.begin():
            if case_rows:
                conn.execute(cases.insert(), case_rows)
            if resolution_rows:
                conn.execute(resolutions.insert(), resolution_rows)
            if queue.dialect == "postgresql" and resolution_rows:  # the next id continues after the restored ones
                conn.execute(text("SELECT setval(pg_get_serial_sequence('resolutions', 'id'), "
                                  "(SELECT max(id) FROM resolutions))"))
        return queue.count()
    finally:
        queue.close()
