"""Follow-ups to gate labels on resolutions and to the desk replay keeping its notify intent.

- The replay sent a "new escalation" notice, with the request's text, for a case a reviewer had resolved between
  the pass that queued it (its audit write failed) and the pass that finished it."""

from __future__ import annotations

from pathlib import Path

import pytest

from so8t_lib.serve.audit import AuditLog, AuditWriteError
from so8t_lib.serve.config import EscalationConfig
from so8t_lib.serve.escalation import EscalationQueue, QueueError
from so8t_lib.serve.escalation_desk import EscalationDesk
from so8t_lib.serve.notify import Notifier
from so8t_lib.serve.outcome import utc_timestamp
from so8t_lib.serve.resolutions import resolve_audited
from so8t_lib.serve.spool import CaseSpool

HARASSMENT = "上司からのパワハラについて相談したい"  # the policy's ESCALATE (hr), however a reviewer settles it
ROOT = Path(__file__).resolve().parents[1]


# ----- the replay and a case resolved meanwhile -------------------------------------------------------------------
@pytest.fixture
def desk(tmp_path):
    queue_path = tmp_path / "escalations.sqlite"
    desk = EscalationDesk(lambda: EscalationQueue(queue_path), CaseSpool(tmp_path / "escalations.sqlite.spool"),
                          AuditLog(tmp_path / "audit.jsonl"), Notifier(EscalationConfig()), notify=True,
                          background=False)
    sent: list[str] = []
    desk._notify = lambda case, reminder=False: sent.append(case["case_id"])  # what would be sent
    desk.sent = sent
    yield desk
    desk.close()


def _spooled(desk: EscalationDesk, n: int) -> str:
    case = {"case_id": f"esc_{n:05d}", "request_id": f"req_{n:05d}", "category": "hr", "input": "x", "rationale": "r"}
    desk.spool.put(case, {"event": "decision", "timestamp": utc_timestamp(), "request_id": case["request_id"],
                          "decision": "ESCALATE", "input": "x", "category": "hr"}).release()
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
