"""so8t serve's API: the runtime contract over HTTP (result format, one audit record per decision,
fail-closed), the OpenAI moderation shape, roles and keys (401/403), the body limit before parsing
(413), the per-key rate limit (429), the escalation queue for reviewers, readiness, JSON errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_support import (
    CLIENT,
    LOAD,
    OTHER_CLIENT,
    PROBS,
    REVIEWER,
    FaultyDecider,
    FixedDecider,
    fault_of,
    make_service,
    records,
)

from so8t_lib.core.config import ConfigError
from so8t_lib.core.schema import ROUTE_CATEGORIES
from so8t_lib.serve.http import ApiKeys, create_app
from so8t_lib.serve.http import service as service_module
from so8t_lib.serve.http.schemas import DecisionResult

ROOT = Path(__file__).resolve().parents[1]

RESULT_KEYS = set(DecisionResult.model_fields)


@pytest.fixture
def serve(tmp_path):
    """serve(decider, **config sections) -> (service, client); the client runs the app's start and stop."""
    opened = []

    def start(decider=None, **sections):
        service = make_service(tmp_path / f"service{len(opened)}", decider, **sections)
        client = TestClient(create_app(service))
        client.__enter__()
        opened.append(client)
        return service, client

    yield start
    for client in opened:
        client.__exit__(None, None, None)


def folder(service):
    return service.agent.audit.path.parent


def test_decide_one_and_a_list_in_the_runtime_format_with_one_record_each(serve):
    service, client = serve(FixedDecider(PROBS["REFUSE"]))
    one = client.post("/v1/decide", json={"user_request": "Give me the admin password", "user_id": "u1"},
                      headers=CLIENT)
    assert one.status_code == 200
    assert set(one.json()) == RESULT_KEYS - {"escalation_id", "escalation_status"}  # those come with ESCALATE
    assert one.json()["decision"] == "REFUSE"
    many = client.post("/v1/decide", json=[{"user_request": f"request {i}"} for i in range(5)], headers=CLIENT)
    assert many.status_code == 200 and len(many.json()) == 5
    returned = [one.json()["request_id"]] + [r["request_id"] for r in many.json()]
    assert [r["request_id"] for r in records(folder(service))] == returned  # same order, one record each


def test_a_model_that_breaks_fails_closed_over_http(serve):
    service, client = serve(FixedDecider(PROBS["ALLOW"], fail=True))
    result = client.post("/v1/decide", json={"user_request": "How do I file expenses?"}, headers=CLIENT).json()
    assert result["decision"] == "ESCALATE" and "fail_closed" in result["flags"] and "model error" in result["error"]
    assert records(folder(service))[-1]["decision"] == "ESCALATE"
    moderation = client.post("/v1/moderations", json={"input": "How do I file expenses?"}, headers=CLIENT).json()
    assert moderation["results"][0]["flagged"] is True
    assert max(moderation["results"][0]["category_scores"].values()) == 1.0
    metrics = client.get("/metrics").text
    assert 'so8t_fail_closed_total{reason="model_error"} 2.0' in metrics


@pytest.mark.parametrize(("probs", "named"), [((float("nan"), 0.5, 0.5), "that are not finite"),
                                              ((1.2, -0.1, -0.1), "below 0"), ((0.5, 0.2, 0.2), "that do not sum to 1")])
def test_probabilities_no_distribution_can_have_fail_closed_naming_what_is_wrong(serve, probs, named):
    """The error said "probabilities of shape (1, 3)" for a NaN: the shape was right, the values were not."""
    service, client = serve(FixedDecider(probs))
    result = client.post("/v1/decide", json={"user_request": "How do I file expenses?"}, headers=CLIENT).json()
    assert result["decision"] == "ESCALATE" and "fail_closed" in result["flags"]
    assert f"unreadable model output: probabilities {named}" in result["error"]


def test_only_the_broken_items_of_a_batch_fail_closed(serve):
    service, client = serve(FaultyDecider())
    texts = [f"please book room {i}" for i in range(24)]
    results = client.post("/v1/decide", json=[{"user_request": t} for t in texts], headers=CLIENT).json()
    for text, result in zip(texts, results):
        broken = fault_of(text) is not None
        assert result["decision"] == ("ESCALATE" if broken else "ALLOW"), text
        assert ("fail_closed" in result["flags"]) == broken
    assert any(fault_of(t) for t in texts) and not all(fault_of(t) for t in texts)


def test_a_model_that_cannot_load_is_not_ready_and_every_request_is_escalated(serve, tmp_path):
    service, client = serve(LOAD, model={"checkpoint_path": str(tmp_path / "missing")})
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["model"].startswith("not ready: model could not")
    result = client.post("/v1/decide", json={"user_request": "hello"}, headers=CLIENT).json()
    assert result["decision"] == "ESCALATE" and "fail_closed" in result["flags"]


def test_readyz_names_an_audit_log_that_cannot_be_written(serve):
    service, client = serve()
    assert client.get("/readyz").json()["ready"] is True
    service.agent.audit.open_error = "audit.jsonl: cannot open the audit log (PermissionError)"
    answer = client.get("/readyz")
    assert answer.status_code == 503 and "PermissionError" in answer.json()["checks"]["audit_log"]


@pytest.mark.parametrize("broken", ["log_is_a_folder", "folder_is_a_file"])
def test_readyz_turns_not_ready_when_the_audit_log_breaks_under_a_running_service(serve, broken, monkeypatch):
    """Replaced under the service (os.access says yes to root whatever the path is): every decision fails closed,
    so a balancer must stop sending; ready again once the log is back and the hold has passed."""
    service, client = serve(FixedDecider(PROBS["ALLOW"]))
    logs, audit = folder(service), service.agent.audit.path
    moved = logs.with_name(logs.name + ".moved")
    assert client.post("/v1/decide", json={"user_request": "hello"}, headers=CLIENT).json()["decision"] == "ALLOW"
    if broken == "log_is_a_folder":
        audit.rename(audit.with_name("audit.moved"))
        audit.mkdir()
    else:
        logs.rename(moved)
        logs.write_text("a file where the log folder was", encoding="utf-8")
    decided = client.post("/v1/decide", json={"user_request": "How do I file expenses?"}, headers=CLIENT).json()
    assert decided["decision"] == "ESCALATE" and "audit_write_failed" in decided["flags"]
    moderated = client.post("/v1/moderations", json={"input": "How do I file expenses?"}, headers=CLIENT).json()
    assert max(moderated["results"][0]["category_scores"].values()) == 1.0  # the head's 0.1 is not the score
    ready = client.get("/readyz")
    expected = "is not a file" if broken == "log_is_a_folder" else "is missing or not a folder"
    assert ready.status_code == 503 and expected in ready.json()["checks"]["audit_log"]
    if broken == "log_is_a_folder":
        audit.rmdir()
        audit.with_name("audit.moved").rename(audit)
    else:
        logs.unlink()
        moved.rename(logs)
    held = client.get("/readyz").json()["checks"]["audit_log"]
    assert held.startswith("not ready: the last audit write failed") and str(audit) in held
    monkeypatch.setattr(service_module, "AUDIT_FAILURE_HOLD_S", 0)
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/decide", json={"user_request": "How do I file expenses?"},
                       headers=CLIENT).json()["decision"] == "ALLOW"
    assert service.agent.last_audit_failure is None


def test_the_readiness_probe_never_creates_the_audit_log(tmp_path):
    """A rotation renames the live log away; the probe must leave its creation (and its 0600 mode) to the writer."""
    log = tmp_path / "audit.jsonl"
    assert service_module.audit_target_problem(log) is None and not log.exists()
    os.mkfifo(tmp_path / "fifo.jsonl")  # opened without blocking: a FIFO with no reader cannot be appended to
    assert "cannot be opened for appending" in service_module.audit_target_problem(tmp_path / "fifo.jsonl")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert "is missing or not a folder" in service_module.audit_target_problem(tmp_path / "file" / "audit.jsonl")


@pytest.mark.parametrize("decision", ["ALLOW", "REFUSE", "ESCALATE"])
def test_moderations_in_the_openai_shape(serve, decision):
    service, client = serve(FixedDecider(PROBS[decision]))
    body = client.post("/v1/moderations", json={"input": ["How do I reset my password?", "hello"],
                                                "model": "omni-moderation-latest"}, headers=CLIENT).json()
    assert body["id"].startswith("modr-") and body["model"] == "fake-fixed@1" and len(body["results"]) == 2
    first = body["results"][0]
    assert first["flagged"] is (decision != "ALLOW")
    assert set(first["categories"]) == set(first["category_scores"]) == set(ROUTE_CATEGORIES)
    routed = first["so8t"]["category"]
    assert first["categories"][routed] is (decision != "ALLOW") and sum(first["categories"].values()) <= 1
    assert first["category_scores"][routed] == pytest.approx(1 - PROBS[decision][0], abs=1e-6)
    assert first["so8t"]["decision"] == decision
    single = client.post("/v1/moderations", json={"input": "hello"}, headers=CLIENT).json()
    assert len(single["results"]) == 1
    assert len(records(folder(service))) == 3


PROTECTED = [("post", "/v1/decide", {"user_request": "x"}, "client"),
             ("post", "/v1/moderations", {"input": "x"}, "client"),
             ("get", "/v1/escalations", None, "reviewer"),
             ("post", "/v1/escalations/esc_0/resolve", {"decision": "REFUSE", "by": "Sato"}, "reviewer"),
             ("get", "/v1/admin/emergency", None, "reviewer"),
             ("post", "/v1/admin/emergency", {"enabled": False, "reason": "check"}, "reviewer")]


@pytest.mark.parametrize("method, path, body, role", PROTECTED, ids=[f"{m} {p}" for m, p, _, _ in PROTECTED])
def test_keys_and_roles(serve, method, path, body, role):
    service, client = serve()
    call = getattr(client, method)
    kwargs = {"json": body} if body is not None else {}
    missing = call(path, **kwargs)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "unauthorized"
    assert call(path, headers={"Authorization": "Bearer not-a-key-at-all"}, **kwargs).status_code == 401
    as_client = call(path, headers=CLIENT, **kwargs)
    if role == "reviewer":
        assert as_client.status_code == 403 and "'reviewer'" in as_client.json()["error"]["message"]
    else:
        assert as_client.status_code == 200
    assert call(path, headers=REVIEWER, **kwargs).status_code in (200, 404)  # a reviewer may do both
    assert records(folder(service)) == [] or role == "client"  # nothing refused was decided


def test_a_caller_without_a_known_key_gets_401_before_its_body_size_or_query_is_looked_at(serve):
    """Before, a body that was not JSON came back 422 with the parser's complaint, an unknown query parameter
    422 with the route's parameter names, an oversized body 413: each read or parsed for a caller with no key."""
    service, client = serve(service={"max_body_bytes": "2KB"})
    nobody, stranger = {}, {"Authorization": "Bearer not-a-key-at-all"}
    for headers in (nobody, stranger):
        calls = [client.post("/v1/decide", content=b"{not json", headers={**headers, "Content-Type": "application/json"}),
                 client.post("/v1/decide?verbose=1", json={"user_request": "hi"}, headers=headers),
                 client.post("/v1/decide", json={"user_request": "x" * 4000}, headers=headers),
                 client.get("/v1/escalations?stauts=open", headers=headers),
                 client.get("/v1/no-such-route", headers=headers)]
        assert [c.status_code for c in calls] == [401] * 5
        assert all(c.json()["error"]["type"] == "unauthorized" and c.headers["WWW-Authenticate"] == "Bearer"
                   for c in calls)
        assert all("verbose" not in c.text and "stauts" not in c.text and "JSON" not in c.text for c in calls)
    with_key = client.post("/v1/decide", content=b"{not json", headers={**CLIENT, "Content-Type": "application/json"})
    assert with_key.status_code == 422  # a caller with a key still learns what was wrong
    assert records(folder(service)) == []
    counted = service.metrics.http_requests.labels("POST", "/v1/decide", "401")._value.get()
    assert counted == 6  # the 401s are counted under their route like every other answer


def test_two_authorization_headers_are_refused_whatever_they_hold(serve):
    """The key check read the last header and the route the first, so a request's role depended on which
    reader looked: a request must name one key."""
    service, client = serve()
    for pair in ([CLIENT["Authorization"], REVIEWER["Authorization"]], [CLIENT["Authorization"]] * 2):
        answer = client.post("/v1/decide", json={"user_request": "hello"},
                             headers=[("Authorization", value) for value in pair])
        assert answer.status_code == 401 and "send one Authorization header" in answer.json()["error"]["message"]
    assert records(folder(service)) == []


def test_a_queue_limit_below_the_list_limit_is_refused_at_start():
    """max_pending 4 with max_items 64: a list of five could never be queued and got 503 "retry shortly" forever."""
    from so8t_lib.serve.config import load_runtime_config

    with pytest.raises(ConfigError, match=r"max_pending \(4\) must be at least max_items \(64\)"):
        load_runtime_config(ROOT / "configs" / "basic.yaml", ["service.max_pending=4"])


def test_keys_come_only_from_the_environment_and_are_checked():
    with pytest.raises(ConfigError, match="SO8T_CLIENT_KEYS"):
        ApiKeys.from_env("SO8T_CLIENT_KEYS", "SO8T_REVIEWER_KEYS", {})
    with pytest.raises(ConfigError, match="at least 16"):
        ApiKeys.from_env("C", "R", {"C": "gw:short"})
    with pytest.raises(ConfigError, match="name:secret"):
        ApiKeys.from_env("C", "R", {"C": "0123456789abcdef0123"})
    with pytest.raises(ConfigError, match="unique"):
        ApiKeys.from_env("C", "R", {"C": "a:0123456789abcdef", "R": "a:fedcba9876543210"})
    # one secret for two keys: the token was the last of them, so the gateway's secret carried a reviewer's role
    with pytest.raises(ConfigError, match=r"gateway \(client\), sato \(reviewer\) have the same secret") as shared:
        ApiKeys.from_env("C", "R", {"C": "gateway:0123456789abcdef", "R": "sato@medical:0123456789abcdef"})
    assert "0123456789abcdef" not in str(shared.value)


def test_a_body_over_the_limit_is_refused_before_it_is_read(serve):
    service, client = serve(service={"max_body_bytes": "2KB"})
    big = {"user_request": "x" * 4000}
    declared = client.post("/v1/decide", json=big, headers=CLIENT)
    assert declared.status_code == 413 and "2048 bytes" in declared.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit applies while the body is read
        yield b'{"user_request": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    streamed = client.post("/v1/decide", content=chunks(), headers={**CLIENT, "Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"]["type"] == "request_too_large"
    assert client.post("/v1/decide", json={"user_request": "x" * 1000}, headers=CLIENT).status_code == 200
    assert len(records(folder(service))) == 1


def test_rate_limit_per_key_counts_items(serve):
    service, client = serve(service={"rate_limit_per_minute": 1, "rate_limit_burst": 4, "max_items": 4})
    assert client.post("/v1/decide", json=[{"user_request": "a"}] * 3, headers=CLIENT).status_code == 200
    assert client.post("/v1/decide", json={"user_request": "b"}, headers=CLIENT).status_code == 200
    limited = client.post("/v1/decide", json={"user_request": "c"}, headers=CLIENT)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "gateway" in limited.json()["error"]["message"]
    assert client.post("/v1/decide", json={"user_request": "d"}, headers=OTHER_CLIENT).status_code == 200
    too_many = client.post("/v1/decide", json=[{"user_request": "e"}] * 5, headers=OTHER_CLIENT)
    assert too_many.status_code == 422 and "at most 4" in too_many.json()["error"]["message"]
    assert len(records(folder(service))) == 5
    assert 'so8t_rate_limited_total{key="gateway"} 1.0' in client.get("/metrics").text


def test_escalations_listed_and_resolved_by_reviewers_with_an_audit_record(serve):
    service, client = serve(FixedDecider(PROBS["ESCALATE"]))
    decided = client.post("/v1/decide", json=[{"user_request": "Can I see Tanaka-san's salary?"},
                                               {"user_request": "Approve a transfer of 5M yen"}], headers=CLIENT).json()
    assert all(r["escalation_status"] == "queued" for r in decided)
    listed = client.get("/v1/escalations", params={"status": "open"}, headers=REVIEWER).json()
    assert listed["count"] == 2 and {c["request_id"] for c in listed["cases"]} == {r["request_id"] for r in decided}
    assert not any("Tanaka" in c["input"] for c in listed["cases"])  # masked in the queue
    case_id = decided[0]["escalation_id"]
    early = client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                        json={"decision": "REFUSE", "by": "Sato (hr)", "supersede": True})
    assert early.status_code == 409 and early.json()["error"]["type"] == "not_resolved"
    assert "supersede: true" in early.json()["error"]["message"] and not records(folder(service), "resolution")
    resolved = client.post(f"/v1/escalations/{case_id}/resolve", json={"decision": "REFUSE", "by": "Sato (hr)"},
                           headers=REVIEWER)
    assert resolved.status_code == 200 and resolved.json()["case"]["status"] == "resolved"
    again = client.post(f"/v1/escalations/{case_id}/resolve", json={"decision": "ALLOW", "by": "Ito"}, headers=REVIEWER)
    assert again.status_code == 409 and "supersede" in again.json()["error"]["message"]
    superseded = client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                             json={"decision": "ALLOW", "by": "Ito", "note": "approved", "supersede": True})
    assert superseded.status_code == 200 and len(superseded.json()["history"]) == 2
    assert [h["via"] for h in superseded.json()["history"]] == ["api key desk"] * 2  # whose key, whatever the name
    resolutions = records(folder(service), "resolution")
    assert [r["human_decision"] for r in resolutions] == ["REFUSE", "ALLOW"]
    assert all(r["via"] == "api key desk" and r["case_id"] == case_id for r in resolutions)
    assert client.get("/v1/escalations", params={"status": "unresolved"}, headers=REVIEWER).json()["count"] == 1
    missing = client.post("/v1/escalations/esc_nope/resolve", json={"decision": "REFUSE", "by": "x"}, headers=REVIEWER)
    assert missing.status_code == 404 and "esc_nope" in missing.json()["error"]["message"]
    wrong = client.post(f"/v1/escalations/{case_id}/resolve", json={"decision": "ESCALATE", "by": "x"}, headers=REVIEWER)
    assert wrong.status_code == 422 and "decision" in wrong.json()["error"]["message"]


def test_the_client_that_asked_learns_what_a_person_decided_and_nothing_else(serve):
    service, client = serve(FixedDecider(PROBS["ESCALATE"]))
    asked = client.post("/v1/decide", headers=CLIENT, json={"user_request": "Can I see Tanaka-san's salary?"}).json()
    case_id = asked["escalation_id"]
    before = client.get(f"/v1/escalations/{case_id}/outcome", headers=CLIENT)
    assert before.status_code == 200 and before.json()["human_decision"] is None
    assert before.json()["request_id"] == asked["request_id"] and before.json()["status"] != "resolved"
    client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                json={"decision": "REFUSE", "by": "Sato (hr)", "note": "pay of a named person"})
    after = client.get(f"/v1/escalations/{case_id}/outcome", headers=CLIENT).json()
    assert after["status"] == "resolved" and after["human_decision"] == "REFUSE" and after["resolved_at"]
    assert not {"input", "note", "resolved_by", "user_id", "rationale"} & set(after)   # the reviewer's side stays there
    missing = client.get("/v1/escalations/esc_nope/outcome", headers=CLIENT)
    assert missing.status_code == 404
    assert client.get(f"/v1/escalations/{case_id}/outcome").status_code == 401
    # another client key holding the id learns nothing, not even that the case exists; a reviewer of its desk may ask
    other = client.get(f"/v1/escalations/{case_id}/outcome", headers=OTHER_CLIENT)
    assert other.status_code == 404 and other.json()["error"]["message"] == f"no escalation case {case_id!r}"
    assert client.get(f"/v1/escalations/{case_id}/outcome", headers=REVIEWER).json()["human_decision"] == "REFUSE"
    listed = client.get("/v1/escalations", headers=REVIEWER).json()["cases"]
    assert [(c["case_id"], c["client"]) for c in listed] == [(case_id, "gateway")]
    moderated = client.post("/v1/moderations", headers=OTHER_CLIENT, json={"input": "Approve 5M yen"}).json()
    batch_case = next(c for c in client.get("/v1/escalations", headers=REVIEWER).json()["cases"] if c["case_id"] != case_id)
    assert moderated["results"][0]["flagged"] and batch_case["client"] == "batch"
    assert client.get(f"/v1/escalations/{batch_case['case_id']}/outcome", headers=OTHER_CLIENT).status_code == 200
    assert client.get(f"/v1/escalations/{batch_case['case_id']}/outcome", headers=CLIENT).status_code == 404


def test_polling_an_outcome_counts_against_the_keys_rate(serve):
    service, client = serve(FixedDecider(PROBS["ESCALATE"]),
                            service={"max_items": 1, "rate_limit_burst": 2, "rate_limit_per_minute": 1})
    case_id = client.post("/v1/decide", headers=CLIENT, json={"user_request": "Approve 5M yen"}).json()["escalation_id"]
    assert client.get(f"/v1/escalations/{case_id}/outcome", headers=CLIENT).status_code == 200
    assert client.get(f"/v1/escalations/{case_id}/outcome", headers=CLIENT).status_code == 429


def test_a_possible_emergency_is_counted_for_the_alert(serve):
    service, client = serve(FixedDecider(PROBS["ESCALATE"]))
    result = client.post("/v1/decide", headers=CLIENT, json={"user_request": "同僚が倒れて息をしていない"}).json()
    assert "urgent" in result["flags"] and result["rationale"].startswith("命に関わる")
    metrics = client.get("/metrics").text
    assert 'so8t_urgent_total{decision="ESCALATE"} 1.0' in metrics and 'so8t_urgent_total{decision="ALLOW"} 0.0' in metrics
    calm = client.post("/v1/decide", headers=CLIENT, json={"user_request": "Approve 5M yen"}).json()["escalation_id"]
    listed = client.get("/v1/escalations", headers=REVIEWER).json()["cases"]
    assert {c["case_id"]: c["urgent"] for c in listed} == {result["escalation_id"]: True, calm: False}
    urgent_only = client.get("/v1/escalations?urgent=true", headers=REVIEWER).json()
    assert urgent_only["count"] == 1 and urgent_only["cases"][0]["case_id"] == result["escalation_id"]


HR_DESK_SECRET = "hr-desk-secret-0123456789"
HR_DESK = {"Authorization": f"Bearer {HR_DESK_SECRET}"}


def test_a_desk_reviewer_sees_and_resolves_only_its_own_cases_and_cannot_stop_the_gate(serve):
    service, client = serve(FixedDecider(PROBS["ESCALATE"]))
    service.keys = ApiKeys.from_env("C", "R", {"C": f"gateway:{CLIENT['Authorization'][7:]}",
                                               "R": f"desk:{REVIEWER['Authorization'][7:]},hr@hr:{HR_DESK_SECRET}"})
    hr_case, finance_case = client.post("/v1/decide", headers=CLIENT, json=[
        {"user_request": "上司からのパワハラについて相談したい"}, {"user_request": "Approve a wire transfer of 5M yen"}]).json()
    assert (hr_case["category"], finance_case["category"]) == ("hr", "finance")
    seen = client.get("/v1/escalations", headers=HR_DESK).json()
    assert seen["count"] == 1 and seen["cases"][0]["case_id"] == hr_case["escalation_id"]
    assert client.get("/v1/escalations", headers=REVIEWER).json()["count"] == 2        # a key of every desk
    refused = client.post(f"/v1/escalations/{finance_case['escalation_id']}/resolve", headers=HR_DESK,
                          json={"decision": "ALLOW", "by": "Sato (hr)"})
    missing = client.post("/v1/escalations/esc_000000000000/resolve", headers=HR_DESK,
                          json={"decision": "ALLOW", "by": "Sato (hr)"})
    assert refused.status_code == missing.status_code == 404                # another desk's case looks absent
    assert "finance" not in refused.json()["error"]["message"]
    # the outcome follows the same desks: the hr desk reads its own case's outcome, not another desk's
    outcome = "/v1/escalations/{}/outcome"
    assert client.get(outcome.format(hr_case["escalation_id"]), headers=HR_DESK).status_code == 200
    assert client.get(outcome.format(finance_case["escalation_id"]), headers=HR_DESK).status_code == 404
    assert service.agent.queue.get(finance_case["escalation_id"])["status"] != "resolved"   # nothing written
    assert records(folder(service), "resolution") == []
    mine = client.post(f"/v1/escalations/{hr_case['escalation_id']}/resolve", headers=HR_DESK,
                       json={"decision": "REFUSE", "by": "Sato (hr)"})
    assert mine.status_code == 200 and records(folder(service), "resolution")[0]["via"] == "api key hr"
    assert client.get("/v1/admin/emergency", headers=HR_DESK).status_code == 200
    switch = client.post("/v1/admin/emergency", headers=HR_DESK, json={"enabled": True, "reason": "test"})
    assert switch.status_code == 403 and "every desk" in switch.json()["error"]["message"]
    assert client.get("/v1/admin/emergency", headers=REVIEWER).json()["mode"] == "normal"


@pytest.mark.parametrize("entry, message", [("x@pharmacy:" + "s" * 20, "unknown desk"), ("x@:" + "s" * 20, "unknown desk")])
def test_desks_are_the_policy_routes_and_only_reviewers_have_them(entry, message):
    with pytest.raises(ConfigError, match=message):
        ApiKeys.from_env("C", "R", {"C": "gateway:" + "c" * 20, "R": entry})
    with pytest.raises(ConfigError, match="only reviewer keys have desks"):
        ApiKeys.from_env("C", "R", {"C": "gateway@hr:" + "c" * 20})


def test_errors_are_json_and_name_the_problem(serve):
    service, client = serve()
    wrong_type = client.post("/v1/decide", json={"user_request": 5}, headers=CLIENT)
    assert wrong_type.status_code == 422 and "user_request" in wrong_type.json()["error"]["message"]
    unknown_field = client.post("/v1/decide", json={"user_request": "x", "admin": True}, headers=CLIENT)
    assert unknown_field.status_code == 422 and "admin" in unknown_field.json()["error"]["message"]
    not_json = client.post("/v1/decide", content=b"{nope", headers={**CLIENT, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]["message"]
    assert client.get("/v1/nothing", headers=CLIENT).json()["error"]["type"] == "not_found"
    assert client.get("/v1/decide", headers=CLIENT).status_code == 405
    assert client.get("/v1/decide").status_code == 401  # without a key, nothing more is said
    assert records(folder(service)) == []


def test_hostile_text_is_decided_by_the_runtime_contract_not_a_500(serve):
    service, client = serve(FixedDecider(PROBS["ALLOW"]))
    lone = b'{"user_request": "\\ud800 approve", "user_id": "u1"}'
    answer = client.post("/v1/decide", content=lone, headers={**CLIENT, "Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json()["decision"] == "ESCALATE" and "invalid input" in answer.json()["error"]
    huge = client.post("/v1/decide", json={"user_request": "a" * 100_000}, headers=CLIENT).json()
    assert huge["decision"] == "ESCALATE" and "fail_closed" in huge["flags"]
    assert 'so8t_fail_closed_total{reason="invalid_input"} 2.0' in client.get("/metrics").text


def test_metrics_name_what_the_manual_watches(serve):
    service, client = serve(FixedDecider(PROBS["ESCALATE"]))
    client.post("/v1/decide", json=[{"user_request": "I need a medical certificate for sick leave"}] * 3, headers=CLIENT)
    client.post("/v1/moderations", json={"input": "hello"}, headers=CLIENT)
    first = service.agent.queue.list()[0]["case_id"]  # a notice no channel took: its own gauge and alert
    service.agent.queue.record_notifications(first, [{"channel": "webhook", "ok": False, "error": "HTTP 404"}])
    service.count_queue()
    text = client.get("/metrics").text
    for line in ['so8t_decisions_total{category="medical",decision="ESCALATE",endpoint="decide"} 3.0',
                 "so8t_escalations_notify_failed 1.0",
                 'so8t_model_info{model_version="fake-fixed@1"} 1.0', "so8t_emergency_mode 0.0",
                 "so8t_escalations_open 4.0", "so8t_escalations_overdue 0.0", 'so8t_escalations_total{status="queued"} 4.0',
                 'so8t_http_requests_total{code="200",method="POST",route="/v1/decide"} 1.0', "so8t_ready 1.0"]:
        assert line in text, line
    for name in ["so8t_http_request_duration_seconds_bucket", "so8t_decision_latency_seconds_bucket",
                 "so8t_batch_size_bucket", "so8t_host_cpu_ratio", "so8t_host_memory_ratio",
                 "process_resident_memory_bytes", "so8t_batcher_pending"]:
        assert name in text, name


def test_a_case_decided_outside_the_service_is_read_only_by_its_desks_reviewers(serve):
    """A case made by so8t runtime was asked for by no client key: any client key holding its id used to read it."""
    service, client = serve(FixedDecider(PROBS["ESCALATE"]))
    case_id = service.agent.run_agent(None, "My colleague keeps commenting on my appearance")["escalation_id"]
    for other in (CLIENT, OTHER_CLIENT):
        assert client.get(f"/v1/escalations/{case_id}/outcome", headers=other).status_code == 404
    assert client.get(f"/v1/escalations/{case_id}/outcome", headers=REVIEWER).status_code == 200


def test_a_secret_that_a_header_cannot_carry_is_refused_at_start():
    """Headers arrive as latin-1, so a secret with "ä" started fine and then never authenticated anyone."""
    with pytest.raises(ConfigError, match="printable ASCII without spaces or commas"):
        ApiKeys.from_env("C", "R", {"C": "gw:pässwörd-0123456789"})
    assert ApiKeys.from_env("C", "R", {"C": "gw:Z9+/_-.~!:=0123456789"}).keys[0].name == "gw"


def test_an_unknown_field_name_is_echoed_only_in_part(serve):
    service, client = serve()
    body = b'{"user_request": "x", "' + b"k" * 200_000 + b'": 1}'
    answer = client.post("/v1/decide", content=body, headers={**CLIENT, "Content-Type": "application/json"})
    message = answer.json()["error"]["message"]
    assert answer.status_code == 422 and "k" * 64 + "…" in message and len(message) < 500


def test_metric_labels_stay_few_whatever_the_client_sends(serve):
    """A made-up method is counted as "other", and a 413 answered from Content-Length before routing is counted
    under the route its path names, as a streamed one is."""
    service, client = serve(service={"max_body_bytes": "1KB"})
    for i in range(5):
        client.request(f"M{i:04d}X", "/healthz")
    client.post("/v1/decide", content=b'{"user_request": "' + b"a" * 2000 + b'"}',
                headers={**CLIENT, "Content-Type": "application/json"})
    text = client.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("so8t_http_requests_total{")]
    assert not [line for line in series if 'method="M' in line], series
    assert any('method="other"' in line and 'route="/healthz"' in line for line in series), series
    assert 'so8t_http_requests_total{code="413",method="POST",route="/v1/decide"} 1.0' in text
    assert not [line for line in series if 'route="unmatched"' in line and 'code="413"' in line]


def test_a_request_answered_503_costs_no_rate(serve, monkeypatch):
    """Overloaded or shutting down, nothing was decided: the tokens go back, so the client's retry is not 429."""
    from so8t_lib.serve.http.batching import Overloaded

    service, client = serve(service={"rate_limit_per_minute": 1, "rate_limit_burst": 2, "max_items": 2,
                                     "max_pending": 2})
    real = service.decide

    async def overloaded(*args, **kwargs):
        raise Overloaded("2 requests are waiting (max_pending 2)")

    monkeypatch.setattr(service, "decide", overloaded)
    two = [{"user_request": "book a room"}, {"user_request": "where is the form"}]
    for _ in range(3):
        answer = client.post("/v1/decide", json=two, headers=CLIENT)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    monkeypatch.setattr(service, "decide", real)
    assert client.post("/v1/decide", json=two, headers=CLIENT).status_code == 200
    assert client.post("/v1/decide", json=two, headers=CLIENT).status_code == 429  # the decided ones did count


def _resolve_with_a_queue_fault(serve, monkeypatch, method: str, fault: Exception, decision: str, by: str):
    """(service, case id, the resolve's answer) for an escalated case, with the queue's ``method`` raising ``fault``."""
    from so8t_lib.serve.escalation import EscalationQueue

    service, client = serve(FixedDecider(PROBS["ESCALATE"]))
    case_id = client.post("/v1/decide", headers=CLIENT, json={"user_request": "Can I see Tanaka-san's salary?"}
                          ).json()["escalation_id"]

    def faulty(self, case_id):
        raise fault

    monkeypatch.setattr(EscalationQueue, method, faulty)
    answer = client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER, json={"decision": decision, "by": by})
    return service, case_id, answer


def test_a_resolve_that_meets_a_broken_queue_answers_503_with_retry_after(serve, monkeypatch):
    """The listing and the outcome said when to retry; the resolution's queue_unavailable did not."""
    from so8t_lib.serve.escalation import QueueError

    service, _, answer = _resolve_with_a_queue_fault(serve, monkeypatch, "get", QueueError("no such table: cases"),
                                                     "ALLOW", "Sato")
    assert answer.status_code == 503 and answer.json()["error"]["type"] == "queue_unavailable"
    assert answer.headers["Retry-After"] == "2" and "not resolved" in answer.json()["error"]["message"]
    assert records(folder(service), event="resolution") == []


def test_a_resolution_committed_but_not_read_back_is_not_reported_as_not_resolved(serve, monkeypatch):
    from so8t_lib.serve.escalation import QueueUnavailable

    service, case_id, answer = _resolve_with_a_queue_fault(
        serve, monkeypatch, "history", QueueUnavailable("the queue is locked by another process"), "REFUSE", "Sato (hr)")
    error = answer.json()["error"]
    assert answer.status_code == 503 and error["type"] == "resolved_not_shown"
    assert "was resolved as REFUSE by Sato (hr) (recorded and audited)" in error["message"]
    monkeypatch.undo()
    assert service.agent.queue.get(case_id)["human_decision"] == "REFUSE"
    assert [r["human_decision"] for r in records(folder(service), event="resolution")] == ["REFUSE"]


def test_a_resolution_whose_transaction_fails_after_its_record_is_withdrawn_and_the_retry_counts_once(serve, monkeypatch):
    """The audit record is written inside the queue's transaction; a commit that then failed left a resolution
    in the log that the queue never held, and the reviewer's retry wrote a second one."""
    from so8t_lib.serve.escalation import EscalationQueue, QueueUnavailable
    from so8t_lib.serve.resolutions import standing_resolutions

    service, client = serve(FixedDecider(PROBS["ESCALATE"]))
    case_id = client.post("/v1/decide", headers=CLIENT, json={"user_request": "Can I see Tanaka-san's salary?"}
                          ).json()["escalation_id"]
    real = EscalationQueue.resolve

    def commit_fails(self, *args, **kwargs):
        def record_then_lose_the_server(resolution):
            args[-1](resolution)  # the record is written ...
            raise QueueUnavailable("server closed the connection unexpectedly")  # ... and the commit fails
        return real(self, *args[:-1], record_then_lose_the_server, **kwargs)

    monkeypatch.setattr(EscalationQueue, "resolve", commit_fails)
    answer = client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                         json={"decision": "REFUSE", "by": "Sato (hr)"})
    assert answer.status_code == 503 and "not resolved" in answer.json()["error"]["message"]
    assert service.agent.queue.get(case_id)["status"] != "resolved"
    monkeypatch.undo()
    assert client.post(f"/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                       json={"decision": "REFUSE", "by": "Sato (hr)"}).status_code == 200
    logged = records(folder(service), event=None)
    tried = [r for r in logged if r.get("event") == "resolution"]
    (withdrawn,) = [r for r in logged if r.get("event") == "resolution_withdrawn"]
    assert len(tried) == 2 and withdrawn["attempt"] == tried[0]["attempt"] != tried[1]["attempt"]
    assert "server closed the connection" in withdrawn["reason"] and withdrawn["case_id"] == case_id
    assert standing_resolutions(logged) == [tried[1]]
