"""A backup taken while an escalation is in flight: every ESCALATE record in the backup's chains has its case in
the backup's queue or in its spool, and replaying the restored spool neither loses the case nor doubles it.

The runtime's steps (spool entry held, queue, audit record, entry deleted) are run by the real Agent in a thread,
held at an exact step by an Event, so each test puts the backup at the same point of the case's path every run."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from fault_agent import make_agent

from so8t_lib.serve.audit import read_records
from so8t_lib.serve.escalation import EscalationQueue
from so8t_lib.serve.spool import SUFFIX
from so8t_lib.workbench.backup import backup, restore, snapshot

WAIT_S = 30


def _escalations(logs: Path, chains) -> list[str]:
    """The case ids of the ESCALATE records in these chains, one per record."""
    return [r["escalation_id"] for name in chains for r in read_records(logs, name)
            if r.get("decision") == "ESCALATE" and r.get("escalation_id")]


def _queued(queue_file: Path) -> set[str]:
    db = sqlite3.connect(f"file:{queue_file}?mode=ro&immutable=1", uri=True)  # leaves no file beside it
    try:
        return {row[0] for row in db.execute("SELECT case_id FROM cases")}
    finally:
        db.close()


def _spooled(spool: Path) -> set[str]:
    return {p.name.removesuffix(SUFFIX) for p in spool.glob(f"*{SUFFIX}")}


def cases_without_their_case(folder: Path) -> list[str]:
    """ESCALATE records of a backup whose case is neither in the backup's queue nor in its spool."""
    manifest = json.loads((folder / "BACKUP.json").read_text(encoding="utf-8"))
    logs = folder / "logs"
    held = _queued(logs / manifest["queue"]["file"]) | _spooled(logs / manifest["spool"]["name"])
    return [case for case in _escalations(logs, manifest["chains"]) if case not in held]


class HeldEscalation:
    """One escalation through the real Agent in a thread, stopped just before the step ``hold`` ("try_queue": the
    spool entry is written and held, nothing else happened; "finish": queued and audited, the entry still held)
    until ``release``."""

    def __init__(self, agent, hold: str, monkeypatch) -> None:
        self.agent, self.reached, self.go = agent, threading.Event(), threading.Event()
        real = getattr(agent.desk, hold)

        def held(*args, **kwargs):
            self.reached.set()
            assert self.go.wait(WAIT_S), "the test never let the escalation go on"
            return real(*args, **kwargs)

        monkeypatch.setattr(agent.desk, hold, held)
        self.result: dict = {}
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        self.result.update(self.agent.run_batch([{"user_request": "please escalate this: the one in flight"}])[0])

    def start(self) -> HeldEscalation:
        self.thread.start()
        assert self.reached.wait(WAIT_S), "the escalation never reached its step"
        return self

    def release(self) -> None:
        self.go.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()


@pytest.fixture
def live(tmp_path):
    """A gate's log folder with one finished escalation (the queue exists, in WAL mode) and its Agent."""
    agent = make_agent(tmp_path / "logs")
    agent.desk.background = False  # only the tests replay
    agent.run_batch([{"user_request": "please escalate this first one"}])
    yield agent
    agent.close()


def _finish_after_the_queue_copy(monkeypatch, escalation: HeldEscalation) -> None:
    """The held case goes on (queued, audited, its entry deleted) once the queue has been copied: as a case that
    waited for a busy queue does, racing the backup."""
    real = snapshot.copy_sqlite

    def copy_then_finish(*args, **kwargs):
        counts = real(*args, **kwargs)
        escalation.release()
        return counts

    monkeypatch.setattr(snapshot, "copy_sqlite", copy_then_finish)


def test_a_case_in_flight_when_the_backup_starts_is_in_the_backups_spool(live, tmp_path, monkeypatch):
    """The spool entry is held (in flight) while the spool is copied; the case is queued after the queue's copy and
    audited before the chains' copy used to be taken: the backup held its ESCALATE record and no case."""
    logs = tmp_path / "logs"
    escalation = HeldEscalation(live, "try_queue", monkeypatch).start()
    _finish_after_the_queue_copy(monkeypatch, escalation)
    made = backup(tmp_path / "b", logs)
    case = escalation.result["escalation_id"]
    assert escalation.result["escalation_status"] == "queued" and case in _queued(logs / "escalations.sqlite")
    assert cases_without_their_case(tmp_path / "b") == []
    assert case in _spooled(tmp_path / "b" / "logs" / made["spool"]["name"])
    assert made["spool"]["in_flight"] == 1


def test_a_case_spooled_after_the_spool_was_copied_is_caught_while_the_chains_are_locked(live, tmp_path,
                                                                                          monkeypatch):
    """The case is spooled just after the spool's first listing, queued after the queue's copy and audited right
    away: copying in-flight entries alone misses it; the entries named since are copied again while the chains'
    locks are held, with the queue's snapshot taken then too, so its record cannot be in the chains' copy without
    its case in the spool's."""
    logs = tmp_path / "logs"
    real_spool, started = snapshot._copy_spool, []

    def spool_then_escalate(*args, **kwargs):
        copied = real_spool(*args, **kwargs)
        if not started:
            started.append(HeldEscalation(live, "try_queue", monkeypatch).start())
            _finish_after_the_queue_copy(monkeypatch, started[0])
        return copied

    monkeypatch.setattr(snapshot, "_copy_spool", spool_then_escalate)
    try:
        made = backup(tmp_path / "b", logs)
    finally:
        for escalation in started:
            escalation.go.set()
    case = started[0].result["escalation_id"]
    assert case in _queued(logs / "escalations.sqlite")
    assert cases_without_their_case(tmp_path / "b") == []
    assert case in _spooled(tmp_path / "b" / "logs" / made["spool"]["name"])


def test_the_restored_spool_entry_of_a_case_already_queued_and_audited_is_replayed_without_a_duplicate(
        live, tmp_path, monkeypatch):
    """Queued and audited, its entry not yet deleted when the backup runs: the backup's queue, chain and spool all
    hold the case (the entry still says neither step happened). Replay on the restored folder finds the case in
    the queue and the record in the log and only deletes the entry: one case, one ESCALATE record."""
    escalation = HeldEscalation(live, "finish", monkeypatch).start()
    try:
        made = backup(tmp_path / "b", tmp_path / "logs")
    finally:
        escalation.release()
    case = escalation.result["escalation_id"]
    backed_up = tmp_path / "b" / "logs"
    assert case in _queued(backed_up / "escalations.sqlite") and case in _spooled(backed_up / made["spool"]["name"])
    assert _escalations(backed_up, made["chains"]).count(case) == 1

    restore(tmp_path / "b", tmp_path / "restored")
    restored = tmp_path / "restored" / "logs"
    before = EscalationQueue(restored / "escalations.sqlite", create=False).count()
    agent = make_agent(restored)
    try:
        agent.desk.replay()
    finally:
        agent.close()
    assert _spooled(restored / made["spool"]["name"]) == set()  # finished and deleted
    assert EscalationQueue(restored / "escalations.sqlite", create=False).count() == before
    records = [r for r in read_records(restored, "audit.jsonl") if r.get("escalation_id") == case]
    assert [r["decision"] for r in records] == ["ESCALATE"]
    assert "recovered_from_spool" not in records[0]["flags"]
