"""Where `so8t escalation resolve` and `redact` write their audit record.

A queue at a URL (SO8T_ESCALATION_URL) has no folder to put the audit log beside. The resolution must go
into the service's chain (so8t report and retrain extract read only that); without a setting naming it,
the command refuses (exit 2) rather than start a fresh chain under the reviewer's ./logs.
"""

import shutil

import pytest
import torch

from so8t_lib.cli import main as so8t
from so8t_lib.serve import audit, escalation
from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.runtime import Agent


class Escalating:
    model_version = "fake@1"

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        return torch.tensor([[0.45, 0.2, 0.35]] * len(requests))


@pytest.fixture
def service(tmp_path, monkeypatch):
    """A case escalated by a service logging into tmp/service; the reviewer works from tmp/desk."""
    for name in ("SO8T_LOG_DIR", "SO8T_ESCALATION_DB", "SO8T_ESCALATION_URL", "SO8T_REPLICA"):
        monkeypatch.delenv(name, raising=False)
    logs, desk = tmp_path / "service", tmp_path / "desk"
    desk.mkdir()
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "logging": {"audit_log": str(logs / "audit.jsonl")},
        "escalation": {"queue_db": str(logs / "escalations.sqlite"), "enable_notifications": False},
    })
    case_id = Agent(cfg, decider=Escalating()).run_agent(None, "契約書の条項について法務の判断が必要です")["escalation_id"]
    assert case_id
    monkeypatch.setenv("SO8T_ESCALATION_URL", f"sqlite:///{logs / 'escalations.sqlite'}")
    monkeypatch.chdir(desk)
    return logs, desk, case_id


def _events(folder, event):
    return [r for r in audit.read_records(folder) if r.get("event") == event]


def test_a_url_queue_with_no_audit_setting_refuses_and_writes_nowhere(service, capsys):
    logs, desk, case_id = service
    assert so8t(["escalation", "resolve", case_id, "--decision", "REFUSE", "--by", "Sato"]) == 2
    err = capsys.readouterr().err
    assert "--audit-log" in err and "SO8T_LOG_DIR" in err and "--config" in err
    assert so8t(["escalation", "redact", "--resolved-before", "2999-01-01"]) == 2
    assert not (desk / "logs").exists()                                            # no fresh chain in the cwd
    assert escalation.EscalationQueue(logs / "escalations.sqlite").get(case_id)["status"] != "resolved"
    assert so8t(["escalation", "redact", "--resolved-before", "2999-01-01", "--dry-run"]) == 0  # writes nothing
    assert not (desk / "logs").exists()


def test_a_url_queue_audits_into_the_chain_the_operator_names(service, monkeypatch, capsys):
    logs, desk, case_id = service
    assert so8t(["escalation", "resolve", case_id, "--decision", "REFUSE", "--by", "Sato",
                 "--audit-log", str(logs / "audit.jsonl")]) == 0
    assert f"recorded in {logs / 'audit.jsonl'}" in capsys.readouterr().out
    monkeypatch.setenv("SO8T_LOG_DIR", str(logs))
    assert so8t(["escalation", "resolve", case_id, "--decision", "ALLOW", "--by", "Ito", "--supersede"]) == 0
    assert [(r["case_id"], r["resolved_by"]) for r in _events(logs, "resolution")] == [(case_id, "Sato"),
                                                                                      (case_id, "Ito")]
    assert audit.verify(logs)["errors"] == [] and not (desk / "logs").exists()


def test_a_log_folder_that_does_not_exist_is_refused_not_created(service, monkeypatch, capsys):
    logs, desk, case_id = service
    monkeypatch.setenv("SO8T_LOG_DIR", str(desk / "typo"))
    assert so8t(["escalation", "resolve", case_id, "--decision", "REFUSE", "--by", "Sato"]) == 2
    assert "does not exist" in capsys.readouterr().err and not (desk / "typo").exists()


def test_a_record_that_starts_a_new_chain_says_so(service, capsys):
    logs, desk, case_id = service
    copy = desk / "copy"
    copy.mkdir()
    shutil.copyfile(logs / "escalations.sqlite", copy / "escalations.sqlite")
    assert so8t(["escalation", "--db", str(copy / "escalations.sqlite"), "resolve", case_id, "--decision", "REFUSE",
                 "--by", "Sato"]) == 0
    assert "no audit chain at" in capsys.readouterr().err
    assert so8t(["escalation", "--db", str(logs / "escalations.sqlite"), "resolve", case_id, "--decision", "REFUSE",
                 "--by", "Sato"]) == 0
    assert "no audit chain" not in capsys.readouterr().err                          # the service's own chain


def test_a_file_that_is_no_audit_log_is_refused_and_left_whole(service, capsys):
    """--audit-log naming the runtime config (or the queue) set the whole file aside as a "torn tail" and
    wrote a record into it (or emptied the queue), exit 0; now exit 2, the file and the case untouched."""
    logs, desk, case_id = service
    config = desk / "basic.yaml"
    config.write_text("runtime:\n  safety_threshold: 0.8\nlogging:\n  audit_log: logs/audit.jsonl\n", encoding="utf-8")
    queue_file = logs / "escalations.sqlite"
    key_file = desk / "hmac.key"  # one line without a newline, as the anchor is too
    key_file.write_bytes(b"c2VjcmV0LWtleS1mb3ItdGhlLWNoYWlu")
    for target in (config, queue_file, logs / "audit.jsonl.anchor", key_file):
        before = target.read_bytes()
        assert so8t(["escalation", "resolve", case_id, "--decision", "REFUSE", "--by", "Sato",
                     "--audit-log", str(target)]) == 2
        assert "holds no audit record: not an audit log" in capsys.readouterr().err
        assert target.read_bytes() == before and not list(target.parent.glob(f"{target.name}.torn-*"))
        assert not target.with_name(target.name + ".lock").exists()  # nothing left beside it either
    assert escalation.EscalationQueue(queue_file).get(case_id)["status"] != "resolved"
    log = audit.AuditLog(config)  # the service itself: an open error (readiness fails), appends fail closed
    assert log.open_error and "not an audit log" in log.open_error
    with pytest.raises(audit.AuditWriteError):
        log.append({"request_id": "req_x", "decision": "ALLOW"})
    assert config.read_text(encoding="utf-8").startswith("runtime:")
    assert not config.with_name("basic.yaml.lock").exists()
    config.with_name("basic.yaml.lock").touch()  # one that was there before a refusal stays: a writer may hold it
    assert audit.AuditLog(config).open_error and config.with_name("basic.yaml.lock").exists()
