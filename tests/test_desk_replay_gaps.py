"""Two gaps in the escalation desk's replay of the spool.

A process killed after queueing an escalation and before writing its decision record leaves the case in the queue
and in the spool. A reviewer who resolved that case while the service was down wrote a ``resolution`` record with
the decision's request id, and the replay took it for the decision record: it wrote none, and deleted the spool
entry. The ESCALATE decision had no audit record and retraining's extract lost its label.

A replay pass that queued an orphan and then failed to write its audit record kept "notify the route" only in a
local variable; the next pass saw the entry queued and nobody was told of the case until the overdue reminder."""

from __future__ import annotations

import pytest

from so8t_lib.serve import audit as audit_module
from so8t_lib.serve.audit import AuditLog, AuditWriteError
from so8t_lib.serve.config import EscalationConfig
from so8t_lib.serve.escalation import EscalationQueue
from so8t_lib.serve.escalation_desk import EscalationDesk
from so8t_lib.serve.notify import Notifier
from so8t_lib.serve.outcome import utc_timestamp
from so8t_lib.serve.spool import CaseSpool


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


def _case(n: int) -> tuple[dict, dict]:
    case = {"case_id": f"esc_{n:05d}", "request_id": f"req_{n:05d}", "category": "hr", "input": "x", "rationale": "r"}
    record = {"event": "decision", "timestamp": utc_timestamp(), "request_id": case["request_id"],
              "decision": "ESCALATE", "input": "x", "category": "hr"}
    return case, record


def test_a_case_queued_by_a_pass_whose_audit_write_failed_is_notified_by_the_pass_that_finishes_it(desk,
                                                                                                   monkeypatch):
    desk.spool.put(*_case(1)).release()  # at request time the queue was locked and the audit write failed
    with monkeypatch.context() as patch:
        patch.setattr(desk.audit, "append", lambda record: (_ for _ in ()).throw(AuditWriteError("disk full")))
        assert desk.replay()["finished"] == []
    assert desk.store.get("esc_00001")["status"] == "open" and desk.sent == []  # queued, not yet told
    assert desk.replay() == {"finished": ["esc_00001"], "failed": []}
    assert desk.sent == ["esc_00001"]
    assert desk.replay() == {"finished": [], "failed": []} and desk.sent == ["esc_00001"]  # once


def test_a_case_notified_at_request_time_is_not_notified_again_by_the_replay(desk):
    ticket = desk.open(*_case(2))
    assert desk.try_queue(ticket) == "queued"
    desk.finish(ticket, audited=False)  # notified now; the audit record is left to the replay
    assert desk.sent == ["esc_00002"]
    assert desk.replay() == {"finished": ["esc_00002"], "failed": []}
    assert desk.sent == ["esc_00002"]
    assert [r["request_id"] for r in audit_module.read_records(desk.audit.path.parent)] == ["req_00002"]
