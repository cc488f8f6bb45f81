"""A reviewer's ALLOW or REFUSE on an escalation is what one employee gets this time; what the gate should
decide on such a request is another question (shared/SAFETY_POLICY.md: a harassment report a person handled
is still ESCALATE). Retraining took the first as the gate's label, so it taught the gate to skip the person.
A resolution now gives a label only through the ``gate_label`` its reviewer sets (HTTP, command line), kept
in the queue and the audit record. The resolve route also refuses a case id no case can have before the queue
sees it: on PostgreSQL a NUL in it was answered as a queue outage, which a client retries for ever."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pg_support import cluster
from service_support import CLIENT, PROBS, REVIEWER, FixedDecider, make_service, records

from so8t_lib.cli import main as so8t
from so8t_lib.serve.audit import AuditLog
from so8t_lib.serve.escalation import EscalationQueue, QueueUnavailable
from so8t_lib.serve.http import create_app
from so8t_lib.serve.resolutions import resolve_audited
from so8t_lib.workbench import retrain

HARASSMENT = "上司からのパワハラについて相談したい"  # the policy's ESCALATE (hr), however a reviewer settles it


def _escalated(folder: Path, request_id: str = "req_1", case_id: str = "esc_1",
               text: str = HARASSMENT) -> tuple[EscalationQueue, AuditLog]:
    """(queue, audit log) in ``folder`` holding a request the gate escalated: its decision record and its case."""
    audit, queue = AuditLog(folder / "audit.jsonl"), EscalationQueue(folder / "escalations.sqlite")
    audit.append({"event": "decision", "timestamp": "2026-12-01T09:00:00.000000Z", "request_id": request_id,
                  "input": text, "context": "", "decision": "ESCALATE", "category": "hr", "escalation_id": case_id})
    queue.add({"case_id": case_id, "request_id": request_id, "input": text, "context": "", "category": "hr"})
    return queue, audit


def _extracted(logs: Path, **kwargs) -> list[tuple[str, list, int]]:
    """(how, [(label, origin, case_id)], no_gate_label) from the log alone and with the queue beside it."""
    found = []
    for how, queue in (("log", None), ("log and queue", logs / "escalations.sqlite")):
        rows, report = retrain.extract_rows([logs], queue=queue, **kwargs)
        labelled = [(r["label"], r["origin"], r["case_id"]) for r in rows]
        found.append((how, labelled, report["left_out"].get("no_gate_label")))
    return found


def test_a_reviewers_decision_alone_is_no_gate_label(tmp_path):
    """The review's repro: settled escalations the policy sends to a person were trained as ALLOW and REFUSE."""
    queue, audit = _escalated(tmp_path)  # a harassment report HR took up, and an expense exception declined
    queue2, _ = _escalated(tmp_path, "req_2", "esc_2", "Please approve an expense exception for the offsite")
    resolve_audited(queue, audit, "esc_1", "ALLOW", "Sato (hr)")
    resolve_audited(queue, audit, "esc_2", "REFUSE", "Kato (finance)")
    for how, rows, no_gate_label in _extracted(tmp_path):
        assert (rows, no_gate_label) == ([], 2), how
    reviews = tmp_path / "reviews.jsonl"  # a spot check labels a resolved request as it always did
    reviews.write_text(json.dumps({"request_id": "req_1", "label": "ESCALATE"}) + "\n", encoding="utf-8")
    assert _extracted(tmp_path, reviews=reviews) == [("log", [("ESCALATE", "review", "esc_1")], 1),
                                                     ("log and queue", [("ESCALATE", "review", "esc_1")], 1)]
    queue.close()
    queue2.close()


def test_the_gate_label_of_the_final_resolution_is_the_label(tmp_path):
    queue, audit = _escalated(tmp_path)
    resolved = resolve_audited(queue, audit, "esc_1", "ALLOW", "Sato (hr)", gate_label="ESCALATE")
    assert (resolved["human_decision"], resolved["gate_label"], resolved["resolution"]["gate_label"]) == (
        "ALLOW", "ESCALATE", "ESCALATE")  # the employee is helped; the gate should still have asked a person
    (record,) = records(tmp_path, "resolution")
    assert (record["human_decision"], record["gate_label"]) == ("ALLOW", "ESCALATE")
    assert _extracted(tmp_path) == [("log", [("ESCALATE", "escalation", "esc_1")], 0),
                                    ("log and queue", [("ESCALATE", "escalation", "esc_1")], 0)]
    reviews = tmp_path / "reviews.jsonl"  # a spot check against the gate label: which one was meant is unknown
    reviews.write_text(json.dumps({"request_id": "req_1", "label": "ALLOW"}) + "\n", encoding="utf-8")
    with pytest.raises(retrain.ExtractError, match="req_1 is reviewed as ALLOW here and given gate label ESCALATE in "
                                                   "escalation case esc_1; keep one"):
        retrain.extract_rows([tmp_path], reviews=reviews)

    resolve_audited(queue, audit, "esc_1", "REFUSE", "Ito (hr lead)", supersede=True)  # no gate label this time
    assert _extracted(tmp_path) == [("log", [], 1), ("log and queue", [], 1)]
    resolve_audited(queue, audit, "esc_1", "REFUSE", "Ito (hr lead)", supersede=True, gate_label="REFUSE")
    assert _extracted(tmp_path) == [("log", [("REFUSE", "escalation", "esc_1")], 0),
                                    ("log and queue", [("REFUSE", "escalation", "esc_1")], 0)]
    assert [h["gate_label"] for h in queue.history("esc_1")] == ["ESCALATE", None, "REFUSE"]
    with pytest.raises(ValueError, match="gate_label must be one of"):
        queue.resolve("esc_1", "REFUSE", "Ito", supersede=True, gate_label="MAYBE")
    queue.close()


def test_an_old_queue_gains_the_column_and_its_queue_only_cases_are_left_out(tmp_path):
    """A queue made before gate labels: opening it adds the column; a case only it still holds (its records
    rotated out of the log) has no gate label and is counted, until a reviewer gives one."""
    queue, audit = _escalated(tmp_path / "old")
    resolve_audited(queue, audit, "esc_1", "ALLOW", "Sato (hr)")
    queue.close()
    db = tmp_path / "old" / "escalations.sqlite"
    with closing(sqlite3.connect(db)) as raw:  # the queue as an earlier version left it
        for table in ("cases", "resolutions"):
            raw.execute(f"ALTER TABLE {table} DROP COLUMN gate_label")
        raw.commit()
    logs = tmp_path / "logs"  # today's log: another request; the case's records are gone
    AuditLog(logs / "audit.jsonl").append({"event": "decision", "timestamp": "2026-12-02T09:00:00.000000Z",
                                           "request_id": "req_2", "input": "経費精算の締め日はいつですか",
                                           "context": "", "decision": "ALLOW", "category": "none"})
    rows, report = retrain.extract_rows([logs], queue=db)
    assert rows == [] and report["left_out"]["no_gate_label"] == 1
    queue = EscalationQueue(db, create=False)
    assert queue.get("esc_1")["gate_label"] is None and queue.history("esc_1")[0]["gate_label"] is None
    resolve_audited(queue, AuditLog(logs / "audit.jsonl"), "esc_1", "ALLOW", "Sato (hr)", supersede=True,
                    gate_label="ESCALATE")
    queue.close()
    (row,), _ = retrain.extract_rows([logs], queue=db)
    assert (row["label"], row["user_request"], row["case_id"]) == ("ESCALATE", HARASSMENT, "esc_1")


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_both_stores_add_the_column_to_an_old_queue_and_keep_the_gate_label(tmp_path, store):
    target = tmp_path / "cases.sqlite" if store == "sqlite" else cluster().database()
    queue = EscalationQueue(target)
    queue.add({"case_id": "esc_1", "request_id": "req_1", "input": HARASSMENT, "category": "hr"})
    queue.resolve("esc_1", "ALLOW", "Sato (hr)")
    with queue.engine.begin() as conn:  # the queue as a version before gate labels left it
        for table in ("cases", "resolutions"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN gate_label")
    queue.close()
    queue = EscalationQueue(target, create=False)
    assert queue.get("esc_1")["gate_label"] is None and queue.history("esc_1")[0]["gate_label"] is None
    queue.resolve("esc_1", "ALLOW", "Sato (hr)", supersede=True, gate_label="ESCALATE")
    assert queue.get("esc_1")["gate_label"] == "ESCALATE"
    assert [h["gate_label"] for h in queue.history("esc_1")] == [None, "ESCALATE"]
    queue.close()


def test_the_command_line_records_the_gate_label(tmp_path, capsys):
    queue, _ = _escalated(tmp_path)
    db = str(tmp_path / "escalations.sqlite")
    with pytest.raises(SystemExit) as refused:
        so8t(["escalation", "--db", db, "resolve", "esc_1", "--decision", "ALLOW", "--by", "Sato", "--gate-label",
              "MAYBE"])
    assert refused.value.code == 2 and queue.get("esc_1")["status"] != "resolved"
    capsys.readouterr()
    so8t(["escalation", "--db", db, "resolve", "esc_1", "--decision", "ALLOW", "--by", "Sato (hr)"])
    assert "no gate label (retraining leaves the case out)" in capsys.readouterr().out
    so8t(["escalation", "--db", db, "resolve", "esc_1", "--decision", "ALLOW", "--by", "Sato (hr)", "--supersede",
          "--gate-label", "ESCALATE"])
    assert "resolved as ALLOW by Sato (hr)" in (out := capsys.readouterr().out) and "gate label ESCALATE" in out
    assert [r.get("gate_label") for r in records(tmp_path, "resolution")] == [None, "ESCALATE"]
    so8t(["escalation", "--db", db, "list", "--status", "resolved"])
    assert json.loads(capsys.readouterr().out)["gate_label"] == "ESCALATE"
    (row,), _ = retrain.extract_rows([tmp_path], queue=db)
    assert (row["label"], row["case_id"]) == ("ESCALATE", "esc_1")
    queue.close()


@pytest.fixture
def client(tmp_path):
    service = make_service(tmp_path / "service", FixedDecider(PROBS["ESCALATE"]))
    with TestClient(create_app(service)) as client:
        yield service, client


def test_the_api_records_the_gate_label_and_the_employee_does_not_see_it(client):
    service, client = client
    case_id = client.post("/v1/decide", headers=CLIENT, json={"user_request": HARASSMENT}).json()["escalation_id"]
    wrong = client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                        json={"decision": "ALLOW", "by": "Sato (hr)", "gate_label": "MAYBE"})
    assert wrong.status_code == 422 and "gate_label" in wrong.json()["error"]["message"]
    answer = client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                         json={"decision": "ALLOW", "by": "Sato (hr)", "gate_label": "ESCALATE"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["resolution"]["gate_label"] == answer.json()["case"]["gate_label"] == "ESCALATE"
    assert [h["gate_label"] for h in answer.json()["history"]] == ["ESCALATE"]
    (record,) = records(service.agent.audit.path.parent, "resolution")
    assert (record["human_decision"], record["gate_label"], record["via"]) == ("ALLOW", "ESCALATE", "api key desk")
    outcome = client.get(f"/v1/escalations/{case_id}/outcome", headers=CLIENT).json()
    assert outcome["human_decision"] == "ALLOW" and "gate_label" not in outcome  # the employee's answer as before


@pytest.mark.parametrize("case_id", ["esc%00x", "esc_1.json", "e" * 65])
def test_a_case_id_no_case_can_have_is_refused_before_the_queue(client, monkeypatch, case_id):
    """PostgreSQL cannot hold a NUL: the queue's error read as an outage (503 with Retry-After), so a client
    retried for ever. Here the queue raises what PostgreSQL's did; the route must not reach it."""
    service, client = client

    def unavailable(self, *args, **kwargs):
        raise QueueUnavailable("the escalation queue does not answer (A string literal cannot contain NUL)")

    monkeypatch.setattr(EscalationQueue, "get", unavailable)
    monkeypatch.setattr(EscalationQueue, "resolve", unavailable)
    answer = client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                         json={"decision": "REFUSE", "by": "Sato (hr)"})
    assert answer.status_code == 422 and "Retry-After" not in answer.headers, answer.text
    assert answer.json()["error"]["type"] == "invalid_request" and "case_id" in answer.json()["error"]["message"]
    assert client.post(f"/v1/escalations/{case_id}/resolve", json={"decision": "REFUSE", "by": "x"}).status_code == 401
