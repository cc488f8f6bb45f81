"""The resolve route refuses a case id no case can have before the queue sees it: on PostgreSQL a NUL in it
was answered as a queue outage (503 with Retry-After), which a client retries for ever."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_support import PROBS, REVIEWER, FixedDecider, make_service

from so8t_lib.serve.escalation import EscalationQueue, QueueUnavailable
from so8t_lib.serve.http import create_app


@pytest.fixture
def client(tmp_path):
    service = make_service(tmp_path / "service", FixedDecider(PROBS["ESCALATE"]))
    with TestClient(create_app(service)) as client:
        yield service, client


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
