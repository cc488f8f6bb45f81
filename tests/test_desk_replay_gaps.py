"""Two gaps in the escalation desk's replay of the spool.

A process killed after queueing an escalation and before writing its decision record leaves the case in the queue
and in the spool. A reviewer who resolved that case while the service was down wrote a ``resolution`` record with
the decision's request id, and the replay took it for the decision record: it wrote none, and deleted the spool
entry. The ESCALATE decision had no audit record and retraining's extract lost its label.

A replay pass that queued an orphan and then failed to write its audit record kept "notify the route" only in a
local variable; the next pass saw the entry queued and nobody was told of the case until the overdue reminder."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from desk_support import scratch_desk, spooled_case
from ops_fixtures import TextDecider, runtime_config

from so8t_lib.serve import audit as audit_module
from so8t_lib.serve.audit import AuditLog, AuditWriteError
from so8t_lib.serve.outcome import utc_timestamp
from so8t_lib.serve.resolutions import resolve_audited
from so8t_lib.serve.runtime import Agent
from so8t_lib.workbench import retrain
from so8t_lib.workbench.reports import make_report

ESCALATED = "契約書の秘密保持条項を確認してほしい"  # lean-ALLOW: the fixture's decider escalates it


class _Killed(BaseException):
    """The process's end, between queueing the case and writing its decision record."""


def _killed_before_the_decision_record(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Escalate ``ESCALATED`` and die before its decision record is written; the case as queued and spooled."""
    tickets = []
    opened, written = agent.desk.open, agent.audit.append

    def open_(case: dict, record: dict):
        tickets.append(opened(case, record))
        return tickets[-1]

    def append(record: dict) -> dict:
        if record.get("event", "decision") == "decision":
            raise _Killed
        return written(record)

    with monkeypatch.context() as patch:
        patch.setattr(agent.desk, "open", open_)
        patch.setattr(agent.audit, "append", append)
        with pytest.raises(_Killed):
            agent.run_agent("", ESCALATED, "u1")
    (ticket,) = tickets
    assert ticket.queued  # in the queue, so a reviewer can resolve it
    ticket.entry.release()  # the dead process's lock goes with it
    return ticket.case


def test_a_resolution_does_not_stand_in_for_the_missing_decision_record(tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    agent = Agent(runtime_config(logs), decider=TextDecider())
    agent.desk.background = False  # the test runs the replay itself
    case = _killed_before_the_decision_record(agent, monkeypatch)
    resolve_audited(agent.queue, agent.audit, case["case_id"], "REFUSE", "bob")  # while the service is down

    assert agent.desk.replay() == {"finished": [case["case_id"]], "failed": []}
    assert agent.desk.spool.count() == 0
    agent.close()
    records = [r for r in audit_module.read_records(logs) if r.get("request_id") == case["request_id"]]
    assert [r["event"] for r in records] == ["resolution", "decision"]  # the decision lands after its resolution
    decision = records[1]
    assert decision["decision"] == "ESCALATE" and "recovered_from_spool" in decision["flags"]
    assert audit_module.verify(logs)["errors"] == []

    # extract joins a label to the decision record's text (from the log alone, no queue to fall back on); a spot
    # check that agrees with the resolution labels it whether or not the resolution gave a label of its own
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(json.dumps({"request_id": case["request_id"], "label": "REFUSE"}) + "\n", encoding="utf-8")
    rows, report = retrain.extract_rows([logs], reviews=reviews)
    assert [(r["request_id"], r["label"]) for r in rows] == [(case["request_id"], "REFUSE")]
    assert report["left_out"]["no_decision_record"] == 0

    today = dt.datetime.now(dt.UTC).date()
    compliance, _ = make_report([logs], today - dt.timedelta(days=1), today + dt.timedelta(days=1),
                                queue=logs / "escalations.sqlite")
    (row,) = compliance.tables["escalations"].to_dict("records")
    assert (row["case_id"], row["status_at_cutoff"], row["human_decision"]) == (case["case_id"], "resolved", "REFUSE")
    assert row["minutes_to_first_resolution"] >= 0  # timed from the decision's own timestamp, not its place


def test_only_decision_records_answer_for_a_request(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for event in ("resolution", "resolution_withdrawn"):
        log.append({"event": event, "timestamp": utc_timestamp(), "request_id": "req_1", "case_id": "esc_1"})
    log.append({"timestamp": utc_timestamp(), "request_id": "req_2", "decision": "ALLOW"})  # older: no event
    log.append({"event": "decision", "timestamp": utc_timestamp(), "request_id": "req_3", "decision": "ALLOW"})
    assert log.find_requests({"req_1", "req_2", "req_3"}) == {"req_2", "req_3"}


@pytest.fixture
def desk(tmp_path):
    desk = scratch_desk(tmp_path, record_notices=True)
    yield desk
    desk.close()


def test_a_case_queued_by_a_pass_whose_audit_write_failed_is_notified_by_the_pass_that_finishes_it(desk,
                                                                                                   monkeypatch):
    desk.spool.put(*spooled_case(1)).release()  # at request time the queue was locked and the audit write failed
    with monkeypatch.context() as patch:
        patch.setattr(desk.audit, "append", lambda record: (_ for _ in ()).throw(AuditWriteError("disk full")))
        assert desk.replay()["finished"] == []
    assert desk.store.get("esc_00001")["status"] == "open" and desk.sent == []  # queued, not yet told
    assert desk.replay() == {"finished": ["esc_00001"], "failed": []}
    assert desk.sent == ["esc_00001"]
    assert desk.replay() == {"finished": [], "failed": []} and desk.sent == ["esc_00001"]  # once


def test_a_case_notified_at_request_time_is_not_notified_again_by_the_replay(desk):
    ticket = desk.open(*spooled_case(2))
    assert desk.try_queue(ticket) == "queued"
    desk.finish(ticket, audited=False)  # notified now; the audit record is left to the replay
    assert desk.sent == ["esc_00002"]
    assert desk.replay() == {"finished": ["esc_00002"], "failed": []}
    assert desk.sent == ["esc_00002"]
    assert [r["request_id"] for r in audit_module.read_records(desk.audit.path.parent)] == ["req_00002"]
