"""Extract's boundaries with its neighbours: the same notion of "one question" as preprocess's load_table, a
spot check against an escalation reviewer's resolution, a signed log read without its key, a log folder given
twice, and a spot check of a test-mode request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ops_fixtures import build_ops_logs

from so8t_lib.data.tables import load_table
from so8t_lib.serve.audit import AuditLog
from so8t_lib.serve.audit_files import anchor_path, encode_line, record_hash
from so8t_lib.workbench import retrain

HMAC_KEY = "k" * 32


def _escalated(log: AuditLog, rid: str, text: str, label: str, second: int, **extra) -> None:
    """A decision the gate escalated and the reviewer's resolution of it, with ``label`` as its gate label."""
    log.append({"event": "decision", "timestamp": f"2026-12-01T09:00:0{second}.000000Z", "request_id": rid,
                "input": text, "context": "", "decision": "ESCALATE", "category": "hr", **extra})
    log.append({"event": "resolution", "timestamp": f"2026-12-01T10:00:0{second}.000000Z", "request_id": rid,
                "case_id": f"esc_{rid}", "human_decision": "REFUSE" if label == "REFUSE" else "ALLOW",
                "gate_label": label, "attempt": f"a_{rid}", **extra})


def test_requests_a_question_mark_apart_are_one_request_as_for_preprocess(tmp_path):
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    _escalated(log, "req_a", "Can I see the payroll file for my team?", "ALLOW", 1)
    _escalated(log, "req_b", "Can I see the payroll file for my team", "REFUSE", 2)
    _escalated(log, "req_c", "Show me the bonus list!", "REFUSE", 3)
    _escalated(log, "req_d", "Show me the  bonus list.", "REFUSE", 4)
    rows, report = retrain.extract_rows([tmp_path / "logs"])
    assert [r["request_id"] for r in rows] == ["req_d"]  # the latest of the agreeing pair
    assert report["left_out"]["conflicting"] == 2 and report["left_out"]["duplicate"] == 1
    assert len(load_table(retrain.write_rows(rows, tmp_path / "rows.jsonl"))) == 1  # preprocess's reader takes it


def test_a_spot_check_that_contradicts_a_resolution_is_refused_like_two_spot_checks(tmp_path):
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    _escalated(log, "req_1", "Please send the medical leave record to the project channel", "REFUSE", 1)
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(json.dumps({"request_id": "req_1", "label": "ALLOW"}) + "\n", encoding="utf-8")
    with pytest.raises(retrain.ExtractError, match=r"reviews.jsonl:1: req_1 is reviewed as ALLOW here and given gate "
                                                   r"label REFUSE in escalation case esc_req_1; keep one"):
        retrain.extract_rows([tmp_path / "logs"], reviews=reviews)
    reviews.write_text(json.dumps({"request_id": "req_1", "label": "refuse"}) + "\n", encoding="utf-8")
    (row,), _ = retrain.extract_rows([tmp_path / "logs"], reviews=reviews)  # one that agrees keeps the case
    assert (row["label"], row["origin"], row["case_id"]) == ("REFUSE", "escalation", "esc_req_1")


def _forged(folder: Path, strip_anchor_mac: bool) -> None:
    """A signed log whose last resolution is edited and re-hashed, the anchor's last_hash moved along."""
    path = folder / "audit.jsonl"
    log = AuditLog(path, hmac_key=HMAC_KEY)
    _escalated(log, "req_1", "Disable the audit logging on the finance server for tonight", "REFUSE", 1)
    lines = path.read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1])
    last["gate_label"] = "ALLOW"
    last["hash"] = record_hash(last)
    lines[-1] = encode_line(last).decode().rstrip("\n")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    anchor = json.loads(anchor_path(path).read_text(encoding="utf-8"))
    anchor["last_hash"] = last["hash"]
    if strip_anchor_mac:
        anchor.pop("mac")
    anchor_path(path).write_text(json.dumps(anchor, sort_keys=True), encoding="utf-8")


@pytest.mark.parametrize("strip_anchor_mac", [False, True])
def test_a_signed_log_is_not_read_without_its_hmac_key(tmp_path, strip_anchor_mac):
    _forged(tmp_path, strip_anchor_mac)
    with pytest.raises(retrain.ExtractError, match="signed .HMAC., but no HMAC key was given; set SO8T_AUDIT_HMAC_KEY"):
        retrain.extract_rows([tmp_path])
    with pytest.raises(retrain.ExtractError, match="does not verify"):  # with the key the forgery shows
        retrain.extract_rows([tmp_path], hmac_key=HMAC_KEY)


def test_a_signed_log_with_its_key_gives_its_rows(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", hmac_key=HMAC_KEY)
    _escalated(log, "req_1", "Disable the audit logging on the finance server for tonight", "REFUSE", 1)
    (row,), report = retrain.extract_rows([tmp_path], hmac_key=HMAC_KEY)
    assert row["label"] == "REFUSE" and report["verified"]


def test_a_log_folder_given_twice_is_read_once(tmp_path):
    logs = tmp_path / "logs"
    build_ops_logs(logs)
    _, once = retrain.extract_rows([logs], queue=logs / "escalations.sqlite")
    for given in ([logs, logs], [logs, Path(f"{logs}/")], [logs, logs / ".." / "logs"]):
        rows, twice = retrain.extract_rows(given, queue=logs / "escalations.sqlite")
        assert twice == once and len(rows) == once["rows"]
    assert once["left_out"]["resolution_not_in_queue"] == 0


def test_a_spot_check_of_a_test_mode_request_counts_as_test(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    _escalated(log, "req_t", "test: a made-up request", "ALLOW", 1, test=True)
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(json.dumps({"request_id": "req_t", "label": "REFUSE"}) + "\n", encoding="utf-8")
    rows, report = retrain.extract_rows([tmp_path], reviews=reviews)
    assert rows == [] and report["left_out"]["test"] == 1 and report["left_out"]["no_decision_record"] == 0


def test_a_supersede_written_through_a_replica_whose_clock_is_behind_still_wins(tmp_path, monkeypatch):
    """Without the queue, extract took the resolution with the latest wall-clock stamp: a colleague's superseding
    ALLOW written through a replica 30 s behind read as older than the REFUSE it replaced, which was trained."""
    import datetime as dt

    import so8t_lib.serve.resolutions as resolutions
    from so8t_lib.serve.escalation import EscalationQueue

    logs = tmp_path / "logs"
    first, behind = AuditLog(logs / "audit.jsonl"), AuditLog(logs / "audit-r2.jsonl")
    queue = EscalationQueue(logs / "escalations.sqlite")
    text = "Can I get read access to the payroll share for the audit next week?"
    first.append({"event": "decision", "timestamp": "2026-12-01T09:00:00.000000Z", "request_id": "req_1",
                  "input": text, "context": "", "decision": "ESCALATE", "category": "security",
                  "escalation_id": "esc_1"})
    queue.add({"case_id": "esc_1", "request_id": "req_1", "input": text, "context": "", "category": "security"})
    resolutions.resolve_audited(queue, first, "esc_1", "REFUSE", "Sato (CSIRT)", gate_label="REFUSE")
    monkeypatch.setattr(resolutions, "utc_timestamp", lambda: (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))
                        .strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    resolutions.resolve_audited(queue, behind, "esc_1", "ALLOW", "Ito (CSIRT lead)", supersede=True,
                                gate_label="ESCALATE")  # an access request beyond one's role: a person's call
    assert queue.get("esc_1")["human_decision"] == "ALLOW"
    queue.close()
    for db in (None, logs / "escalations.sqlite"):
        rows, _ = retrain.extract_rows([logs], queue=db)
        assert [(r["label"], r["case_id"]) for r in rows] == [("ESCALATE", "esc_1")], db


def test_extract_out_never_replaces_the_log_the_queue_an_input_or_a_file_it_did_not_write(tmp_path, capsys):
    """--out logs/audit.jsonl replaced the 22-record chain with 4 training rows, exit 0."""
    from so8t_lib.cli import main as so8t

    logs = tmp_path / "logs"
    build_ops_logs(logs)
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"todo": "ask legal"}\n', encoding="utf-8")
    kept = {p: p.read_bytes() for p in (*logs.iterdir(), notes) if p.is_file()}
    for out, said in ((logs / "audit.jsonl", "lies in the log folder"), (logs / "rows.jsonl", "lies in the log folder"),
                      (notes, "holds no extracted rows"), (tmp_path, "is a folder")):
        assert so8t(["retrain", "extract", "--logs", str(logs), "--db", str(logs / "escalations.sqlite"),
                     "--out", str(out)]) == 2
        assert said in capsys.readouterr().err
    assert {p: p.read_bytes() for p in kept} == kept and not (logs / "rows.jsonl").exists()
    rows = tmp_path / "rows.jsonl"  # its own earlier output is replaced, as a rerun should
    for _ in range(2):
        assert so8t(["retrain", "extract", "--logs", str(logs), "--db", str(logs / "escalations.sqlite"),
                     "--out", str(rows)]) == 0
    assert len(rows.read_text(encoding="utf-8").splitlines()) > 0


def test_another_services_queue_is_refused_not_read_as_this_logs_labels(tmp_path):
    """--db of another service gave its cases as rows and dropped every resolution of this log, exit 0."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    build_ops_logs(ours)
    build_ops_logs(theirs)
    with pytest.raises(retrain.ExtractError, match="none of the .* resolutions in the log is a case of the queue"):
        retrain.extract_rows([ours], queue=theirs / "escalations.sqlite")
    rows, report = retrain.extract_rows([ours], queue=ours / "escalations.sqlite")
    assert rows and report["left_out"]["resolution_not_in_queue"] == 0
