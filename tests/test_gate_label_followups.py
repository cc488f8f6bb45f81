"""Follow-ups to gate labels on resolutions and to the desk replay keeping its notify intent.

- The replay sent a "new escalation" notice, with the request's text, for a case a reviewer had resolved between
  the pass that queued it (its audit write failed) and the pass that finished it.
- A case's gate label was read from a copy in its ``cases`` row; a replica still on the version before gate labels
  supersedes without touching that copy, so ``retrain extract --db`` trained the stale label while the log alone
  (rightly) gave none. The label is now read from the case's last resolution.
- Opening a queue made before gate labels ran ALTER TABLE even to read it: a read-only file or role could no longer
  be read at all ("attempt to write a readonly database"). It is now read with the columns it has.
- The notification's and the docs' resolve examples gave no ``--gate-label``."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
from desk_support import scratch_desk, spooled_case
from pg_support import cluster

from so8t_lib.serve import queue_sql
from so8t_lib.serve.audit import AuditLog, AuditWriteError
from so8t_lib.serve.config import EscalationConfig
from so8t_lib.serve.escalation import EscalationQueue, QueueError
from so8t_lib.serve.escalation_desk import EscalationDesk
from so8t_lib.serve.notify import Notifier
from so8t_lib.serve.outcome import utc_timestamp
from so8t_lib.serve.resolutions import resolve_audited
from so8t_lib.workbench import retrain

HARASSMENT = "上司からのパワハラについて相談したい"  # the policy's ESCALATE (hr), however a reviewer settles it
ROOT = Path(__file__).resolve().parents[1]


# ----- the replay and a case resolved meanwhile -------------------------------------------------------------------
@pytest.fixture
def desk(tmp_path):
    desk = scratch_desk(tmp_path, record_notices=True)
    yield desk
    desk.close()


def _spooled(desk: EscalationDesk, n: int) -> str:
    case, record = spooled_case(n)
    desk.spool.put(case, record).release()
    return case["case_id"]


def _queued_but_not_audited(desk: EscalationDesk, monkeypatch, case_id: str) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(desk.audit, "append", lambda record: (_ for _ in ()).throw(AuditWriteError("disk full")))
        assert desk.replay()["finished"] == []
    assert desk.store.get(case_id)["status"] == "open" and desk.sent == []


def test_the_replay_does_not_announce_a_case_a_reviewer_resolved_meanwhile(desk, monkeypatch):
    case_id = _spooled(desk, 1)
    _queued_but_not_audited(desk, monkeypatch, case_id)
    resolve_audited(desk.store, desk.audit, case_id, "REFUSE", "bob")
    assert desk.replay() == {"finished": [case_id], "failed": []}
    assert desk.sent == []  # audited, and nobody is told of a case already settled
    assert desk.spool.count() == 0


def test_the_replay_still_announces_an_unresolved_case_and_keeps_the_entry_while_the_queue_is_away(desk,
                                                                                                    monkeypatch):
    case_id = _spooled(desk, 2)
    _queued_but_not_audited(desk, monkeypatch, case_id)
    with monkeypatch.context() as patch:  # the audit write works now, reading the case back does not
        patch.setattr(desk.store, "get", lambda case_id: (_ for _ in ()).throw(QueueError("queue gone")))
        assert desk.replay()["finished"] == []
    assert desk.sent == [] and desk.spool.count() == 1  # kept: the intent is not lost
    assert desk.replay() == {"finished": [case_id], "failed": []}
    assert desk.sent == [case_id]


# ----- the gate label is the last resolution's, whoever wrote it -------------------------------------------------
def _escalated(folder: Path, target) -> tuple[EscalationQueue, AuditLog]:
    audit, queue = AuditLog(folder / "audit.jsonl"), EscalationQueue(target)
    audit.append({"event": "decision", "timestamp": "2026-12-01T09:00:00.000000Z", "request_id": "req_1",
                  "input": HARASSMENT, "context": "", "decision": "ESCALATE", "category": "hr",
                  "escalation_id": "esc_1"})
    queue.add({"case_id": "esc_1", "request_id": "req_1", "input": HARASSMENT, "context": "", "category": "hr"})
    return queue, audit


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_supersede_by_an_earlier_version_leaves_no_stale_gate_label(tmp_path, store):
    target = tmp_path / "escalations.sqlite" if store == "sqlite" else cluster().database()
    queue, audit = _escalated(tmp_path, target)
    resolve_audited(queue, audit, "esc_1", "ALLOW", "Sato", gate_label="ESCALATE")
    # a replica on the version before gate labels supersedes: its resolution and record carry no label, and it
    # writes the case row's decision but not the case row's gate_label, which keeps ESCALATE
    resolve_audited(queue, audit, "esc_1", "REFUSE", "Ito", supersede=True)
    with queue.engine.begin() as conn:
        conn.execute(queue_sql.cases.update().values(gate_label="ESCALATE"))
    assert queue.get("esc_1")["gate_label"] is None
    assert [c["gate_label"] for c in queue.list("resolved")] == [None]
    assert [h["gate_label"] for h in queue.history("esc_1")] == ["ESCALATE", None]
    for db in (None, target):  # the log alone and the queue beside it agree: no label
        rows, report = retrain.extract_rows([tmp_path], queue=db)
        assert (rows, report["left_out"]["no_gate_label"]) == ([], 1), db
    resolve_audited(queue, audit, "esc_1", "REFUSE", "Ito", supersede=True, gate_label="REFUSE")
    assert queue.get("esc_1")["gate_label"] == "REFUSE"
    (row,), _ = retrain.extract_rows([tmp_path], queue=target)
    assert row["label"] == "REFUSE"
    queue.close()


# ----- a queue made before gate labels, opened where it may only be read ----------------------------------------
def _old_queue(target) -> None:
    """A queue as the version before gate labels left it: one case, resolved."""
    queue = EscalationQueue(target)
    queue.add({"case_id": "esc_1", "request_id": "req_1", "input": HARASSMENT, "category": "hr", "test": False})
    queue.resolve("esc_1", "ALLOW", "Sato")
    with queue.engine.begin() as conn:
        for table in ("cases", "resolutions"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN gate_label")
    queue.close()


def _columns(path: Path, table: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as raw:
        return {row[1] for row in raw.execute(f"PRAGMA table_info({table})")}


def _reads_without_migrating(target, refused: str) -> None:
    queue = EscalationQueue(target, create=False)
    (case,) = queue.list("resolved", include_tests=False)
    assert (case["human_decision"], case["gate_label"]) == ("ALLOW", None)
    assert queue.get("esc_1")["gate_label"] is None and queue.history("esc_1")[0]["gate_label"] is None
    assert queue.count() == {"cases": 1, "resolutions": 1}
    with pytest.raises(QueueError, match=refused):
        queue.resolve("esc_1", "REFUSE", "Ito", supersede=True, gate_label="ESCALATE")
    queue.close()


@contextlib.contextmanager
def _read_only_file(path: Path):
    """The file as the operating system refuses to write it: mode 0444, or under root, which ignores modes, the
    immutable attribute (skipped where the file system has none). Its folder stays writable: SQLite cannot open a
    WAL queue whose folder refuses it the shared-memory file."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (root ignores file modes)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("how", ["uri mode=ro", "read-only file"])
def test_a_queue_made_before_gate_labels_is_read_where_it_cannot_be_written(tmp_path, monkeypatch, how):
    db = tmp_path / "escalations.sqlite"
    _old_queue(db)
    AuditLog(tmp_path / "logs" / "audit.jsonl").append({  # today's log; the case's records rotated away
        "event": "decision", "timestamp": utc_timestamp(), "request_id": "req_2", "input": "経費精算の締め日は",
        "context": "", "decision": "ALLOW", "category": "none"})
    if how == "uri mode=ro":
        connect = sqlite3.connect
        with monkeypatch.context() as patch:  # the queue's own connections, opened read-only
            patch.setattr(queue_sql.sqlite3, "connect",
                          lambda target, **kwargs: connect(target.replace("mode=rw", "mode=ro"), **kwargs))
            _reads_without_migrating(db, "may only read the escalation queue")
            rows, report = retrain.extract_rows([tmp_path / "logs"], queue=db)
    else:
        with _read_only_file(db):
            _reads_without_migrating(db, "may only read the escalation queue")
            rows, report = retrain.extract_rows([tmp_path / "logs"], queue=db)
    assert rows == [] and report["left_out"]["no_gate_label"] == 1
    assert "gate_label" not in _columns(db, "resolutions")  # nothing was written
    EscalationQueue(db, create=False).close()  # a process that may write migrates it
    assert "gate_label" in _columns(db, "resolutions") and "gate_label" in _columns(db, "cases")


def test_a_postgresql_role_that_may_only_read_reads_a_queue_made_before_gate_labels():
    import psycopg

    pg = cluster()
    url = pg.database()
    _old_queue(url)
    reader, dbname = f"reader_{uuid.uuid4().hex[:8]}", url.rsplit("/", 1)[1]
    with psycopg.connect(pg.dsn(dbname), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{reader}" LOGIN')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{reader}"')
    _reads_without_migrating(url.replace("//so8t@", f"//{reader}@"), "the escalation queue refused this role")
    queue = EscalationQueue(url, create=False)  # the owner migrates it
    assert queue.history("esc_1")[0]["gate_label"] is None
    queue.close()


# ----- what a reviewer is shown ----------------------------------------------------------------------------------
def test_the_resolve_examples_give_a_gate_label():
    text = Notifier(EscalationConfig())._message({"case_id": "esc_1", "category": "hr", "request_id": "req_1",
                                                  "input": "x", "rationale": "r"}, reminder=False)
    (line,) = [line for line in text.splitlines() if line.startswith("Resolve:")]
    assert "--gate-label ALLOW|REFUSE|ESCALATE" in line
    resolves = [line for line in (ROOT / "docs" / "runtime.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("so8t escalation resolve")]
    assert resolves and all("--gate-label" in line for line in resolves)
