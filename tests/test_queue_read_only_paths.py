"""An escalation queue made by an earlier version, opened where it may only be read (a SELECT-only PostgreSQL role,
a SQLite file opened read-only), along the paths other than listing it.

- ``so8t backup`` of such a PostgreSQL queue exported every column the current version knows, ``gate_label``
  included, and failed with a traceback (an untranslated UndefinedColumn). It now exports the columns the queue
  has; the backup checks, and restores with the missing column empty.
- A queue older than the ``resolutions`` table (only ``cases``), opened read-only, failed with a traceback
  (NoSuchTableError): it is now a QueueError naming the table and saying a writer must migrate it first."""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing

import pytest
from pg_support import cluster

from so8t_lib.serve import queue_sql
from so8t_lib.serve.audit import AuditLog
from so8t_lib.serve.escalation import EscalationQueue, QueueError
from so8t_lib.workbench.backup import backup, check_backup, restore
from so8t_lib.workbench.backup.queue_copy import QueueSnapshot, export_rows, read_rows


def _old_queue(target) -> None:
    """A queue as the version before gate labels left it: one case, resolved."""
    queue = EscalationQueue(target)
    queue.add({"case_id": "esc_1", "request_id": "req_1", "input": "x", "category": "hr", "test": False})
    queue.resolve("esc_1", "ALLOW", "Sato")
    with queue.engine.begin() as conn:
        for table in ("cases", "resolutions"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN gate_label")
    queue.close()


def _reader_url(pg, url: str) -> str:
    """``url`` as a new role that may only SELECT the queue's tables."""
    reader, dbname = f"reader_{uuid.uuid4().hex[:8]}", url.rsplit("/", 1)[1]
    import psycopg

    with psycopg.connect(pg.dsn(dbname), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{reader}" LOGIN')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{reader}"')
    return url.replace("//so8t@", f"//{reader}@")


def _read_only_sqlite(patch: pytest.MonkeyPatch) -> None:
    """The queue's own SQLite connections opened with mode=ro, as on a file or mount it may not write (the module
    is shared: the backup's new copy is still written)."""
    connect = sqlite3.connect
    patch.setattr(queue_sql.sqlite3, "connect", lambda target, **kwargs: connect(
        target.replace("mode=rw", "mode=ro") if isinstance(target, str) else target, **kwargs))


def test_a_select_only_role_backs_up_a_queue_made_before_gate_labels_and_it_restores(tmp_path):
    pg = cluster()
    url = pg.database()
    _old_queue(url)
    logs = tmp_path / "logs"
    AuditLog(logs / "audit.jsonl")
    made = backup(tmp_path / "b", logs, queue=_reader_url(pg, url))
    assert (made["queue"]["cases"], made["queue"]["resolutions"]) == (1, 1)
    (case,), (resolution,) = read_rows(tmp_path / "b" / "queue")
    assert "gate_label" not in case and "gate_label" not in resolution  # only what the queue has
    assert (case["human_decision"], resolution["decision"]) == ("ALLOW", "ALLOW")
    assert check_backup(tmp_path / "b")["problems"] == []
    fresh = pg.database()
    restore(tmp_path / "b", tmp_path / "r1", queue_url=fresh)
    restore(tmp_path / "b", tmp_path / "r2")
    for target in (fresh, tmp_path / "r2" / "logs" / "escalations.sqlite"):
        queue = EscalationQueue(target, create=False)
        assert queue.count() == {"cases": 1, "resolutions": 1}
        assert (queue.get("esc_1")["human_decision"], queue.get("esc_1")["gate_label"]) == ("ALLOW", None)
        assert [h["gate_label"] for h in queue.history("esc_1")] == [None]
        queue.close()


def test_the_export_has_the_columns_of_its_snapshot_not_of_the_moment_the_queue_was_opened(tmp_path):
    """A writer may migrate the queue after a read-only process opened it: the labels it writes then are copied."""
    pg = cluster()
    url = pg.database()
    _old_queue(url)
    store = EscalationQueue(_reader_url(pg, url), create=False)
    assert "gate_label" in store._absent["resolutions"]
    owner = EscalationQueue(url)  # migrates, then labels a new resolution
    owner.resolve("esc_1", "REFUSE", "Ito", supersede=True, gate_label="REFUSE")
    owner.close()
    snapshot = QueueSnapshot(store)
    snapshot.take()
    export_rows(store, tmp_path / "queue", snapshot.connection)
    snapshot.close()
    store.close()
    _, resolutions = read_rows(tmp_path / "queue")
    assert [r["gate_label"] for r in resolutions] == [None, "REFUSE"]


def test_a_read_only_sqlite_queue_made_before_gate_labels_backs_up_and_restores(tmp_path, monkeypatch):
    """The copy is the file as it is: its digest records the columns it has, and the backup checks."""
    logs = tmp_path / "logs"
    AuditLog(logs / "audit.jsonl")
    db = logs / "escalations.sqlite"
    _old_queue(db)
    with monkeypatch.context() as patch:
        _read_only_sqlite(patch)
        made = backup(tmp_path / "b", logs, queue=db)
    assert "gate_label" not in made["queue_digest"]["resolutions"]["columns"]
    assert check_backup(tmp_path / "b")["problems"] == []
    fresh = cluster().database()
    restore(tmp_path / "b", tmp_path / "r1", queue_url=fresh)
    queue = EscalationQueue(fresh, create=False)
    assert queue.count() == {"cases": 1, "resolutions": 1}
    assert (queue.get("esc_1")["human_decision"], queue.get("esc_1")["gate_label"]) == ("ALLOW", None)
    queue.close()


def test_a_queue_older_than_the_resolutions_table_opened_read_only_says_a_writer_must_migrate_it(
        tmp_path, monkeypatch):
    db = tmp_path / "escalations.sqlite"
    with closing(sqlite3.connect(db)) as raw:
        raw.execute("CREATE TABLE cases (case_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, status TEXT NOT NULL)")
        raw.execute("INSERT INTO cases VALUES ('esc_1', '2026-11-30T00:00:00+00:00', 'open')")
        raw.commit()
    with monkeypatch.context() as patch:
        _read_only_sqlite(patch)
        with pytest.raises(QueueError, match=r"has no resolutions table .*may write the queue migrate it first"):
            EscalationQueue(db, create=False)
    with closing(sqlite3.connect(db)) as raw:  # nothing was written
        assert [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["cases"]
    queue = EscalationQueue(db, create=False)  # what the message advises: a process that may write opens it
    assert queue.count() == {"cases": 1, "resolutions": 0} and queue.get("esc_1")["status"] == "open"
    queue.close()
