"""POST /v1/escalations/{id}/resolve: a queue that does not answer is a 503 the reviewer's tool may retry."""

from __future__ import annotations

from fastapi.testclient import TestClient
from service_support import CLIENT, PROBS, REVIEWER, FixedDecider, make_service, records

from so8t_lib.serve.http import create_app


def test_a_resolve_that_meets_a_broken_queue_answers_503_with_retry_after(tmp_path, monkeypatch):
    """The listing and the outcome said when to retry; the resolution's queue_unavailable did not."""
    from so8t_lib.serve.escalation import EscalationQueue, QueueError

    service = make_service(tmp_path / "logs", FixedDecider(PROBS["ESCALATE"]))
    with TestClient(create_app(service)) as client:
        case_id = client.post("/v1/decide", headers=CLIENT, json={"user_request": "my medical leave"}
                              ).json()["escalation_id"]

        def broken(self, case_id):
            raise QueueError("no such table: cases")

        monkeypatch.setattr(EscalationQueue, "get", broken)
        answer = client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                             json={"decision": "ALLOW", "by": "Sato"})
        assert answer.status_code == 503 and answer.json()["error"]["type"] == "queue_unavailable"
        assert answer.headers["Retry-After"] == "2"
        assert "not resolved" in answer.json()["error"]["message"]
    assert records(tmp_path / "logs", event="resolution") == []
