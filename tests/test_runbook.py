"""The emergency runbook of docs/operations.md, step by step on real `so8t serve` processes: the flag
file switches a running server to emergency mode, SIGTERM drains it and ends it, the usual config restarted with mode=emergency serves without a model and cannot be switched off, a normal
restart stays in emergency mode while the flag file is there and returns to normal when it is removed; every
change is in the audit chain, which is encrypted and signed as production's is and verifies with its key."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml
from ops_fixtures import ServeProcess
from service_support import CLIENT, REVIEWER

from so8t_lib.serve.audit_verify import read_chains, verify_chains

ROOT = Path(__file__).resolve().parents[1]
REASON = "incident 42: suspected prompt-injection campaign"
MAC_KEY = "runbook-audit-mac-key-0123456789abcdef"
# the audit keys as configs/production.yaml names them, under the test's own variable names
KEYS = {"SO8T_RUNBOOK_AUDIT_KEY": "yR3nCBj9c1wFGmqZoR1dxHoA5bF5N2nY8w3cKqGGFQ8=", "SO8T_RUNBOOK_MAC_KEY": MAC_KEY}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    root = tmp_path_factory.mktemp("runbook")
    SO8TModel.from_config(ModelConfig(name="so8t-runbook")).save(root / "ckpt")
    config = {"model": {"checkpoint_path": "ckpt"}, "inference": {"generate_responses": False},
              "logging": {"audit_log": "logs/audit.jsonl", "log_level": "WARNING",
                          "encryption_key_env": "SO8T_RUNBOOK_AUDIT_KEY", "hmac_key_env": "SO8T_RUNBOOK_MAC_KEY"},
              "escalation": {"queue_db": "logs/escalations.sqlite", "enable_notifications": False},
              "service": {"flag_poll_s": 0.2}}
    (root / "serve.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def _mode(server: ServeProcess, expected: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = httpx.get(f"{server.url}/v1/admin/emergency", headers=REVIEWER, timeout=30).json()
        if state["mode"] == expected or time.monotonic() > deadline:
            assert state["mode"] == expected, state
            return state
        time.sleep(0.1)


def _decide(server: ServeProcess) -> dict:
    return httpx.post(f"{server.url}/v1/decide", json={"user_request": "Where is the expense form?"}, headers=CLIENT,
                      timeout=120).json()


def test_the_emergency_runbook_with_the_projects_commands(project):
    flag = project / "logs" / "EMERGENCY"
    server = ServeProcess(project, "--config", "serve.yaml", "--log-dir", "logs", env=KEYS)
    try:  # 1. switch to emergency without a restart: the flag file (the endpoint is tested in-process)
        _mode(server, "normal")
        flag.write_text(REASON + "\n", encoding="utf-8")
        assert _mode(server, "emergency")["sources"]["flag_file"]["reason"] == REASON
        assert _decide(server)["rationale"].startswith("Emergency mode")
        # 2. stop the process: SIGTERM drains the requests in flight and closes the audit log
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) in (-15, 143) and "shutdown complete" in server.errors()
    finally:
        server.stop()

    # 3. restart the usual config in emergency mode (its audit keys kept): no model is loaded, nothing switches it off
    server = ServeProcess(project, "--config", "serve.yaml", "--log-dir", "logs", "mode=emergency", env=KEYS)
    try:
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
        httpx.post(f"{server.url}/v1/admin/emergency", json={"enabled": False, "reason": "try"}, headers=REVIEWER,
                   timeout=30)
        assert set(_mode(server, "emergency")["sources"]) >= {"config"}
        answer = _decide(server)
        assert answer["decision"] == "ESCALATE" and answer["escalation_status"] == "queued"
    finally:
        assert server.stop() in (0, -15, 143)

    # 6. back to normal: the usual config; the flag file still holds emergency mode until it is removed
    server = ServeProcess(project, "--config", "serve.yaml", "--log-dir", "logs", env=KEYS)
    try:
        _mode(server, "emergency")
        flag.unlink()
        _mode(server, "normal")
        assert not _decide(server)["rationale"].startswith("Emergency mode")
    finally:
        assert server.stop() in (0, -15, 143)

    verification = verify_chains(project / "logs", hmac_key=MAC_KEY)  # 4. the evidence: one chain over the three processes
    assert all(not r["errors"] for r in verification.values()), verification
    changes = [(r["source"], r["enabled"], r["mode"]) for _, r in read_chains(project / "logs", key=KEYS["SO8T_RUNBOOK_AUDIT_KEY"])
               if r.get("event") == "mode_change"]
    # each process that found the flag file recorded it; only its removal released emergency mode
    assert changes == [("flag_file", True, "emergency")] * 3 + [("flag_file", False, "normal")]
