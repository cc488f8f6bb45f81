"""The escalation queue's tables and database connections, on SQLAlchemy Core.

Two stores speak the same SQL through it: a SQLite file (the embedded default: one machine, any
number of processes on it) and PostgreSQL (several server processes, on several machines, sharing
one queue). What differs is kept here:

- **SQLite**: a fresh connection per operation (``NullPool``: nothing is cached between calls, so a
  queue file replaced by a restore is seen at once), opened with a URI so ``create=False`` never
  makes a file, ``BEGIN IMMEDIATE`` for writes so two writers never deadlock on a lock upgrade,
  and ``timeout_s`` as SQLite's busy wait.
- **PostgreSQL** (psycopg 3): a small pool with a liveness check, ``connect_timeout`` (at least the
  2 s libpq allows) and ``lock_timeout`` from ``timeout_s``, and row locks (``SELECT ... FOR UPDATE``) where SQLite
  relies on its one writer. The schema is created under an advisory lock, so two replicas that
  start together do not both create it.

A queue made by an earlier version gains the columns added since when it is opened (``migrate``). Opened
only to read where writing is refused (a read-only file, a role that may only read), it is read with the
columns it has: ``readable`` and ``case_query`` give a missing one as NULL (or its default), and a writer
migrates it later. A case's ``gate_label`` is read from its last ``resolutions`` row, never from the copy
in its ``cases`` row: a replica of an earlier version supersedes without touching that copy.

``translate`` turns driver errors into the queue's own: a lock or a server that does not answer
within the bounded wait is ``QueueUnavailable`` (the runtime spools the case and retries), anything
else ``QueueError``; the message names the queue, never its password.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import (
    Column,
    ColumnElement,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    exc,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import Select

from .config_fields import PG_SHORTEST_CONNECT_S

metadata = MetaData()
cases = Table(
    "cases", metadata,
    Column("case_id", Text, primary_key=True), Column("created_at", Text, nullable=False), Column("due_at", Text),
    Column("request_id", Text), Column("user_id", Text), Column("category", Text), Column("input", Text),
    Column("rationale", Text), Column("confidence", Float), Column("status", Text, nullable=False),
    Column("notifications", Text), Column("human_decision", Text), Column("resolved_by", Text),
    Column("resolved_at", Text), Column("note", Text), Column("test", Integer, nullable=False, server_default="0"),
    Column("overdue_at", Text), Column("error", Text),
    Column("urgent", Integer, nullable=False, server_default="0"),  # the emergency screen marked the request
    Column("client", Text),  # the API key that asked over HTTP: the one that may read the outcome
    Column("context", Text),  # what the gate read with the request ("" for none; NULL in cases made before)
    # a copy of the gate_label this version last wrote, for replicas that read it here; readers take the label
    # from the last resolutions row (case_query): an earlier version's supersede leaves this copy stale
    Column("gate_label", Text),
)
resolutions = Table(
    "resolutions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("case_id", Text, nullable=False),
    Column("decided_at", Text, nullable=False), Column("decision", Text, nullable=False),
    Column("decided_by", Text, nullable=False), Column("note", Text), Column("supersedes", Integer),
    Column("via", Text),  # the channel: "api key NAME" or "command line" (NULL in resolutions made before)
    # what the gate should have decided (ALLOW, REFUSE or ESCALATE), the only label retraining takes from a
    # resolution; NULL when the reviewer gave none (and in resolutions made before)
    Column("gate_label", Text),
    sqlite_autoincrement=True,  # ids are never reused, as in queues made before SQLAlchemy
)
RESOLUTIONS_BY_CASE = Index("ix_resolutions_case_id", resolutions.c.case_id)
URL_ENV = "SO8T_ESCALATION_URL"
_SCHEMA_LOCK = 0x50387451  # any fixed number: the advisory lock two starting replicas share
# PostgreSQL's read_only_sql_transaction and insufficient_privilege (a role that may not ALTER the tables)
_WRITE_REFUSED_STATES = ("25006", "42501")
Absent = dict[str, frozenset[str]]  # table -> the columns a queue made by an earlier version still lacks


class StoreError(RuntimeError):
    """A driver error, translated; ``unavailable`` says whether waiting and retrying may help."""

    def __init__(self, message: str, unavailable: bool) -> None:
        super().__init__(message)
        self.unavailable = unavailable


def is_url(target: str | Path) -> bool:
    return "://" in str(target)


def _parsed(target: str) -> URL:
    """The URL, or ValueError naming it (without its password) and what is wrong with it."""
    try:
        return make_url(target)
    except (exc.ArgumentError, ValueError) as error:
        raise ValueError(f"unreadable escalation queue URL {display(target)!r} ({error}): write it as "
                         "postgresql://user@host:port/db or sqlite:///path") from None


def sqlite_path(target: str | Path) -> Path | None:
    """The file of a SQLite target (a path or a ``sqlite:///`` URL); None for a server URL. ValueError for a
    URL that cannot be read (a mistyped port)."""
    if not is_url(target):
        return Path(target)
    url = _parsed(str(target))
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None


def check_target(target: str | Path) -> None:
    """ValueError unless ``target`` is a SQLite path or URL or a PostgreSQL URL that can be read."""
    if sqlite_path(target) is None:
        server_url(str(target))


def server_url(target: str) -> URL:
    """A PostgreSQL URL with the psycopg 3 driver (``postgresql://`` alone would ask for psycopg2)."""
    url = _parsed(target)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"unsupported escalation queue URL {display(target)!r}: use postgresql://user@host/db "
                         "or a SQLite file path")
    return url.set(drivername="postgresql+psycopg")


def display(target: str | Path | URL) -> str:
    """How a queue is named in messages: a path, or a URL without its password."""
    if isinstance(target, URL):
        return target.render_as_string(hide_password=True)
    if is_url(target):
        try:
            return make_url(str(target)).render_as_string(hide_password=True)
        except (exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
            return re.sub(r"//[^@/]*@", "//***@", str(target))
    return str(target)


def sqlite_engine(path: Path, create: bool, timeout_s: float) -> tuple[Engine, Callable[[], sqlite3.Connection]]:
    """An engine on a SQLite file and the raw connection factory it uses (for PRAGMAs outside a
    transaction and for the online backup API)."""
    uri = f"file:{path}?mode={'rwc' if create else 'rw'}"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False)

    engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # writes take the lock up front: no deadlock on a read-to-write upgrade
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("so8t_write") else "BEGIN")

    return engine, connect


def connect_wait_s(timeout_s: float) -> int:
    """The longest a new connection to the server may take: ``timeout_s`` in whole seconds (never past it), but at
    least the 2 s libpq and psycopg allow (the runtime's config refuses a shorter queue_timeout_s for a server)."""
    return max(PG_SHORTEST_CONNECT_S, int(timeout_s))


def postgres_engine(url: URL, timeout_s: float) -> Engine:
    wait_ms = max(1, int(timeout_s * 1000))
    return create_engine(
        url, pool_size=2, max_overflow=8, pool_timeout=timeout_s, pool_pre_ping=True,
        connect_args={"connect_timeout": connect_wait_s(timeout_s), "application_name": "so8t",
                      "options": f"-c lock_timeout={wait_ms}"})


def has_queue_tables(engine: Engine) -> bool:
    return "cases" in inspect(engine).get_table_names()


def ensure_schema(engine: Engine) -> None:
    """Create what is missing: the tables, columns added since a queue was made, the index."""
    with engine.connect().execution_options(so8t_write=True) as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        metadata.create_all(conn, checkfirst=True)
        for table in (cases, resolutions):  # queues made by earlier versions
            have = {c["name"] for c in inspect(conn).get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    kind = column.type.compile(engine.dialect)
                    default = (f" NOT NULL DEFAULT {column.server_default.arg}" if column.server_default is not None
                               else "")
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}{default}")
        RESOLUTIONS_BY_CASE.create(conn, checkfirst=True)


def refused_write(error: exc.DBAPIError) -> bool:
    """Whether the database refused a write because this connection may only read (not a lock, not a fault)."""
    orig = getattr(error, "orig", None)
    if isinstance(orig, sqlite3.Error):
        return getattr(orig, "sqlite_errorname", "").startswith("SQLITE_READONLY") or "readonly" in str(orig)
    return getattr(orig, "sqlstate", None) in _WRITE_REFUSED_STATES


def missing_columns(bind: Engine | Connection) -> Absent:
    """The columns each table lacks; NoSuchTableError for a missing table (a queue older than ``resolutions``)."""
    found = inspect(bind)
    absent = {t.name: frozenset(c.name for c in t.columns) - {c["name"] for c in found.get_columns(t.name)}
              for t in (cases, resolutions)}
    return {name: columns for name, columns in absent.items() if columns}


def migrate(engine: Engine, read_only_ok: bool = False) -> Absent:
    """``ensure_schema``; with ``read_only_ok``, a database that refuses the write (opened read-only, or by a role
    that may not alter the tables) is left as it is, and the columns it lacks are returned for reads to do
    without: reading a queue must not need the right to write it. Errors are SQLAlchemy's."""
    try:
        ensure_schema(engine)
    except exc.DBAPIError as error:
        if not (read_only_ok and refused_write(error)):
            raise
        return missing_columns(engine)
    return {}


def readable(table: Table, name: str, absent: Absent) -> ColumnElement:
    """``table``'s column ``name`` as a query reads it: one the queue lacks as its default (NULL or 0)."""
    column = table.c[name]
    if name not in absent.get(table.name, ()):
        return column
    value = int(column.server_default.arg) if column.server_default is not None else None
    return literal(value, column.type).label(name)


def case_query(absent: Absent) -> Select:
    """SELECT of ``cases`` whose ``gate_label`` is the case's last resolution's (NULL with none, or none stored)."""
    if "gate_label" in absent.get(resolutions.name, ()):
        label = literal(None, Text)
    else:
        label = (select(resolutions.c.gate_label).where(resolutions.c.case_id == cases.c.case_id)
                 .order_by(resolutions.c.id.desc()).limit(1).scalar_subquery())
    return select(*(readable(cases, c.name, absent) for c in cases.columns if c.name != "gate_label"),
                  label.label("gate_label"))


def resolution_query(absent: Absent) -> Select:
    return select(*(readable(resolutions, c.name, absent) for c in resolutions.columns))


def translate(error: exc.DBAPIError | exc.SQLAlchemyError, where: str, timeout_s: float) -> StoreError:
    """A driver error as the queue reports it (see the module docstring)."""
    orig = getattr(error, "orig", None)
    lines = str(orig if orig is not None else error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    if isinstance(error, exc.TimeoutError):  # every pooled connection busy for the whole wait
        return StoreError(f"{where}: the escalation queue does not answer (no free connection within "
                          f"{timeout_s:g}s)", True)
    if isinstance(orig, sqlite3.Error):
        if isinstance(orig, sqlite3.OperationalError) and ("locked" in message or "busy" in message):
            return StoreError(f"{where}: the escalation queue is locked by another process (waited {timeout_s:g}s)",
                              True)
        if isinstance(orig, sqlite3.OperationalError) and refused_write(error):
            return StoreError(f"{where}: this process may only read the escalation queue ({message}); write it as "
                              "a user who may (check the file's and its folder's permissions)", False)
        if isinstance(orig, sqlite3.OperationalError):
            return StoreError(f"{where}: {message}", False)
        return StoreError(f"{where} is not an escalation queue ({message})", False)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in ("55P03", "57014"):
        return StoreError(f"{where}: the escalation queue does not answer within {timeout_s:g}s ({message})", True)
    if isinstance(error, exc.OperationalError) and sqlstate is None:  # no connection: its wait has a floor
        return StoreError(f"{where}: the escalation queue's server does not answer (no connection within "
                          f"{max(timeout_s, connect_wait_s(timeout_s)):g}s: {message})", True)
    if sqlstate in _WRITE_REFUSED_STATES:
        return StoreError(f"{where}: the escalation queue refused this role ({message}); writing it needs a role "
                          "that owns its tables, reading it one granted SELECT on them", False)
    if sqlstate in ("57P01", "57P02", "57P03", "08000", "08003", "08006"):  # server shutting down, connection lost
        return StoreError(f"{where}: the escalation queue's server is not available ({message})", True)
    return StoreError(f"{where}: {message}", False)
