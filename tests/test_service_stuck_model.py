"""A model call that never returns takes the replica out of the load balancer: every request behind it fails
closed at its limit, and /readyz (with so8t_ready) says not ready, naming the stuck thread, until it returns."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_support import CLIENT, REVIEWER, FixedDecider, LiveServer, make_service  # noqa: E402


class HangingDecider(FixedDecider):
    """Hangs on its first call until ``release`` is set (a wedged GPU kernel), then ALLOWs."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        if not self.batches:
            self.batches.append(len(requests))
            self.release.wait(30)
        return super().decide(requests, contexts)


def _ready_gauge(http: httpx.Client) -> str:
    return next(line for line in http.get("/metrics").text.splitlines() if line.startswith("so8t_ready "))


def _readyz_until(http: httpx.Client, status: int) -> httpx.Response:
    for _ in range(60):
        answer = http.get("/readyz")
        if answer.status_code == status:
            return answer
        time.sleep(0.05)
    return answer


def test_a_hung_model_call_makes_the_replica_not_ready_until_it_returns(tmp_path):
    decider = HangingDecider()
    service = make_service(tmp_path / "logs", decider=decider,
                           inference={"decision_timeout_s": 0.5, "generate_responses": False},
                           escalation={"queue_timeout_s": 0.25})
    with LiveServer(service) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        try:
            for i in range(2):
                answer = http.post("/v1/decide", json={"user_request": f"How do I file expenses #{i}?",
                                                       "user_id": "e1"}, headers=CLIENT).json()
                assert answer["decision"] == "ESCALATE" and "fail_closed" in answer["flags"]
            ready = _readyz_until(http, 503)  # at once, or within a moment: the call passes twice its limit
            model = ready.json()["checks"]["model"]
            assert ready.status_code == 503
            assert model.startswith("not ready: the model's thread is stuck since ") and "past its limit" in model
            assert model.endswith("restart the service")
            assert _ready_gauge(http) == "so8t_ready 0.0"
        finally:
            decider.release.set()
        assert _readyz_until(http, 200).json()["checks"]["model"].startswith("loaded: ")  # the call returned
        assert _ready_gauge(http) == "so8t_ready 1.0"


def test_in_emergency_mode_a_stuck_model_thread_keeps_the_replica_ready(tmp_path):
    """Emergency mode asks no model: the replica escalates every request at once, as its operator asked. A stuck
    thread took it out of the load balancer anyway, so switching emergency on over wedged replicas was an outage."""
    decider = HangingDecider()
    service = make_service(tmp_path / "logs", decider=decider,
                           inference={"decision_timeout_s": 0.5, "generate_responses": False},
                           escalation={"queue_timeout_s": 0.25})
    with LiveServer(service) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        try:
            http.post("/v1/decide", json={"user_request": "How do I file expenses?"}, headers=CLIENT)
            assert _readyz_until(http, 503).status_code == 503
            switched = http.post("/v1/admin/emergency", json={"enabled": True, "reason": "wedged model"},
                                 headers=REVIEWER)
            assert switched.status_code == 200, switched.text
            ready = _readyz_until(http, 200)
            assert ready.status_code == 200
            assert ready.json()["checks"]["model"].startswith("not consulted in emergency mode; its thread is stuck")
            answer = http.post("/v1/decide", json={"user_request": "How do I file expenses?"}, headers=CLIENT).json()
            assert answer["decision"] == "ESCALATE"
        finally:
            decider.release.set()

