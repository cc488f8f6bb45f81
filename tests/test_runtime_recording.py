"""The runtime's recording contract on paths a configuration or a caller opens: a keyed (HMAC) user-id digest,
and ``received_at`` values a caller gets wrong. Each request still gets exactly one audit record and at most
one escalation case."""

import datetime
import hashlib
import hmac
import time

import numpy as np
import pytest

from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.runtime import Agent
from tests.test_runtime import FakeDecider, _agent, _records

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


@pytest.mark.parametrize("value, shown", [
    (datetime.datetime(2026, 1, 1), r"received_at\[1\] must be a finite number .* got datetime"),
    (float("nan"), r"received_at\[1\] .* got float nan"), (float("inf"), r"received_at\[1\] .* got float inf"),
    ("12.5", r"received_at\[1\] .* got str '12.5'"), (True, r"received_at\[1\] .* got bool True"),
    (None, r"received_at\[1\] .* got NoneType None"),
])
def test_a_received_at_value_that_is_no_finite_number_is_refused_before_anything_is_decided(tmp_path, value, shown):
    """Only its length was checked: a datetime failed when the ESCALATE's processing time was stamped, after its
    case was opened, and the fail-closed retry opened a second case and wrote no audit record."""
    with _agent(tmp_path, FakeDecider(ESCALATE_PROBS)) as agent:
        with pytest.raises(ValueError, match=shown):
            agent.run_batch([{"user_request": "a"}, {"user_request": "Please review my contract"}],
                            received_at=[time.perf_counter(), value])
        assert agent.queue.list() == []
    assert not (tmp_path / "logs" / "audit.jsonl").exists() or _records(tmp_path) == []


def test_numbers_of_any_real_type_are_accepted(tmp_path):
    with _agent(tmp_path, FakeDecider((0.95, 0.03, 0.02))) as agent:
        now = time.perf_counter()
        results = agent.run_batch([{"user_request": "a"}, {"user_request": "b"}],
                                  received_at=[int(now), np.float64(now)])
    assert [r["decision"] for r in results] == ["ALLOW", "ALLOW"] and len(_records(tmp_path)) == 2


def test_a_failure_stamping_an_escalation_opens_one_case_and_writes_one_record(tmp_path, monkeypatch):
    """The processing time was stamped after the case was opened and queued, outside the region where nothing may
    raise: a failure there decided the request again, a second case and no record. It is now stamped before."""
    agent = _agent(tmp_path, FakeDecider(ESCALATE_PROBS))
    stamp, calls = agent._stamp, []

    def fails_once(result, start):
        calls.append(start)
        if len(calls) == 1:
            raise TypeError("unsupported operand type(s) for -")
        stamp(result, start)

    monkeypatch.setattr(agent, "_stamp", fails_once)
    with agent:
        result = agent.run_agent(None, "Please review my contract")
        cases = agent.queue.list()
    assert result["decision"] == "ESCALATE" and "internal error: TypeError" in result["error"]
    records = _records(tmp_path)
    assert len(records) == 1 and records[0]["request_id"] == result["request_id"]
    assert [c["case_id"] for c in cases] == [result["escalation_id"]]
    assert sorted(p.name for p in (tmp_path / "logs").rglob("*.case.json")) == []  # the one case finished
