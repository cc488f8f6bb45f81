"""The runtime's recording contract on paths a configuration or a caller opens: a keyed (HMAC) user-id digest,
and ``received_at`` values a caller gets wrong. Each request still gets exactly one audit record and at most
one escalation case."""

import hashlib
import hmac

from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.runtime import Agent
from tests.test_runtime import FakeDecider, _records

ESCALATE_PROBS = (0.05, 0.1, 0.85)


def _keyed_agent(tmp_path, monkeypatch, decider):
    monkeypatch.setenv("SO8T_TEST_HMAC_KEY", "secret-key")
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "inference": {"safety_threshold": 0.8, "decision_timeout_s": 0.5},
        "logging": {"audit_log": str(tmp_path / "logs" / "audit.jsonl"), "hmac_key_env": "SO8T_TEST_HMAC_KEY"},
        "escalation": {"queue_db": str(tmp_path / "logs" / "escalations.sqlite"), "enable_notifications": False},
    })
    return Agent(cfg, decider=decider)


def test_an_escalation_with_an_hmac_key_and_an_email_user_id_is_recorded_once(tmp_path, monkeypatch):
    """The configured key reached hmac as a str: the case's user-id digest raised a TypeError, so the ESCALATE
    of a user id holding an e-mail address had no audit record and no case (production.yaml sets the key)."""
    user_id = "taro.yamada@example.com"
    with _keyed_agent(tmp_path, monkeypatch, FakeDecider(ESCALATE_PROBS)) as agent:
        result = agent.run_agent(None, "Please review my contract", user_id)
        cases = agent.queue.list()
    digest = hmac.new(b"secret-key", user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:12]
    assert result["decision"] == "ESCALATE" and result["error"] is None and result["escalation_id"]
    records = _records(tmp_path)
    assert len(records) == 1 and records[0]["request_id"] == result["request_id"]
    assert records[0]["user_id"] == f"[EMAIL]#{digest}"
    assert [(c["case_id"], c["user_id"]) for c in cases] == [(result["escalation_id"], f"[EMAIL]#{digest}")]


def test_an_allow_with_an_hmac_key_keys_the_user_id_digest_the_same_way(tmp_path, monkeypatch):
    with _keyed_agent(tmp_path, monkeypatch, FakeDecider((0.95, 0.03, 0.02))) as agent:
        result = agent.run_agent(None, "How do I file expenses?", "taro.yamada@example.com")
    digest = hmac.new(b"secret-key", b"taro.yamada@example.com", hashlib.sha256).hexdigest()[:12]
    assert result["decision"] == "ALLOW"
    assert [r["user_id"] for r in _records(tmp_path)] == [f"[EMAIL]#{digest}"]
