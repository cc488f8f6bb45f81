"""Several server processes in one log folder: each replica ($SO8T_REPLICA) writes its own chain,
``so8t audit verify`` checks every chain (and names the one that was tampered with), and a replica that
finishes a spool entry another replica left does not record the decision a second time."""

from __future__ import annotations

import json

import pytest
import torch

from so8t_lib.cli import main as so8t
from so8t_lib.serve import audit
from so8t_lib.serve.audit_verify import read_chains, verify_chains
from so8t_lib.serve.config import RuntimeConfig, replica_log_name, runtime_paths
from so8t_lib.serve.runtime import Agent


class Escalating:
    model_version = "fake@1"

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        return torch.tensor([[0.3, 0.3, 0.4]] * len(requests))


def _agent(folder, monkeypatch, replica: str | None) -> Agent:
    if replica:
        monkeypatch.setenv("SO8T_REPLICA", replica)
    else:
        monkeypatch.delenv("SO8T_REPLICA", raising=False)
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"}, "logging": {"audit_log": str(folder / "audit.jsonl")},
        "escalation": {"queue_db": str(folder / "escalations.sqlite"), "enable_notifications": False,
                       "retry_interval_s": 3600}})
    return Agent(cfg, decider=Escalating())


def test_each_replica_writes_its_own_chain_and_verify_reads_them_all(tmp_path, monkeypatch, capsys):
    for replica, n in (("r1", 3), ("r2", 2), (None, 1)):
        agent = _agent(tmp_path, monkeypatch, replica)
        assert agent.audit.path.name == ("audit.jsonl" if replica is None else f"audit-{replica}.jsonl")
        agent.run_batch([{"user_request": f"契約の確認 {replica} {i}"} for i in range(n)])
        agent.close()
    reports = verify_chains(tmp_path)
    assert [k.rsplit("/", 1)[1] for k in reports] == ["audit.jsonl", "audit-r1.jsonl", "audit-r2.jsonl"]
    assert [r["records"] for r in reports.values()] == [1, 3, 2] and all(not r["errors"] for r in reports.values())
    assert sorted(chain for chain, _ in read_chains(tmp_path)) == ["audit-r1.jsonl"] * 3 + ["audit-r2.jsonl"] * 2 + [
        "audit.jsonl"]
    so8t(["audit", "verify", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("== ") == 3 and "3 of 3 chains OK" in out

    live = tmp_path / "audit-r2.jsonl"
    lines = [json.loads(line) for line in live.read_text(encoding="utf-8").splitlines()]
    lines[0]["decision"] = "ALLOW"
    live.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        so8t(["audit", "verify", str(tmp_path)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1 and "2 of 3 chains OK" in out
    assert "audit-r2.jsonl:1: record seq 0 was edited" in out
    with pytest.raises(SystemExit, match="pick one with --name"):
        so8t(["audit", "verify", str(tmp_path), "--expect", "0:abc"])
    head = audit.verify(tmp_path, "audit-r1.jsonl")["anchor"]
    so8t(["audit", "verify", str(tmp_path), "--name", "audit-r1.jsonl", "--expect",
          f"{head['last_seq']}:{head['last_hash']}"])
    assert capsys.readouterr().out.startswith("OK: 3 records")


def test_an_empty_folder_is_not_a_clean_report(tmp_path, capsys):
    assert verify_chains(tmp_path)[str(tmp_path / "audit.jsonl")]["errors"]
    with pytest.raises(SystemExit):
        so8t(["audit", "verify", str(tmp_path)])


def test_a_replica_finishing_another_replicas_spool_entry_records_it_once(tmp_path, monkeypatch):
    first = _agent(tmp_path, monkeypatch, "r1")
    result = first.run_agent(None, "上司からのパワハラについて相談したい")
    first.close()
    spool = tmp_path / "escalations.sqlite.spool"
    # r1 was killed after its audit record but before its spool entry was finished: put the entry back
    from so8t_lib.serve.spool import CaseSpool

    case = first.queue.get(result["escalation_id"])
    record = next(r for _, r in read_chains(tmp_path) if r.get("request_id") == result["request_id"])
    CaseSpool(spool).put({k: case[k] for k in ("case_id", "request_id", "category", "input")}, record).release()
    second = _agent(tmp_path, monkeypatch, "r2")
    assert second.desk.replay()["finished"] == [result["escalation_id"]]
    second.close()
    ids = [r["request_id"] for _, r in read_chains(tmp_path)]
    assert ids.count(result["request_id"]) == 1


def test_replica_names_are_checked():
    assert replica_log_name("logs/audit.jsonl", "r2").name == "audit-r2.jsonl"
    from so8t_lib.core.config import ConfigError

    with pytest.raises(ConfigError, match="replica name"):
        replica_log_name("logs/audit.jsonl", "../etc")
    cfg = RuntimeConfig.model_validate({"model": {"checkpoint_path": "x"}})
    assert runtime_paths(cfg).queue_target == runtime_paths(cfg).queue


def test_a_queue_url_with_a_password_is_refused_in_a_config(monkeypatch):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="secrets never live in a config"):
        RuntimeConfig.model_validate({"model": {"checkpoint_path": "x"},
                                      "escalation": {"queue_url": "postgresql://so8t:pw@db/so8t"}})
    cfg = RuntimeConfig.model_validate({"model": {"checkpoint_path": "x"},
                                        "escalation": {"queue_url": "postgresql://so8t@db/so8t"}})
    assert runtime_paths(cfg).queue_target == "postgresql://so8t@db/so8t"
    monkeypatch.setenv("SO8T_ESCALATION_URL", "postgresql://other@db2/q")
    assert runtime_paths(cfg).queue_target == "postgresql://other@db2/q"
