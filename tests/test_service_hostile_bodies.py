"""A key that sends bodies the schema refuses: each cost the event loop (every other caller) pydantic's work on it,
one error per made-up field, and was never charged to the key, so it could be repeated without end."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_support import CLIENT, OTHER_CLIENT, REVIEWER, make_service, records

from so8t_lib.serve.http import create_app
from so8t_lib.serve.http.schemas import MAX_UNKNOWN_FIELDS


@pytest.fixture
def client(tmp_path):
    limits = {"rate_limit_per_minute": 1, "rate_limit_burst": 3, "max_items": 2}
    service = make_service(tmp_path / "logs", service=limits)
    with TestClient(create_app(service)) as client:
        yield client


def _made_up(count: int) -> dict:
    return {f"field{i}": i for i in range(count)}


def test_a_body_of_many_made_up_fields_gets_one_error_naming_the_real_ones(client):
    for path, body in (("/v1/decide", {"user_request": "hi", **_made_up(5000)}),
                       ("/v1/moderations", {"input": "hi", **_made_up(5000)})):
        refused = client.post(path, json=body, headers=CLIENT)
        message = refused.json()["error"]["message"]
        assert refused.status_code == 422 and "5000 unknown fields" in message and "field17" not in message, path
    listed = client.post("/v1/decide", json=[{"user_request": "hi", **_made_up(500)}] * 2, headers=OTHER_CLIENT)
    assert listed.status_code == 422 and "500 unknown fields" in listed.json()["error"]["message"]


def test_a_few_made_up_fields_are_still_named_one_by_one(client):
    refused = client.post("/v1/decide", json={"user_request": "hi", **_made_up(MAX_UNKNOWN_FIELDS)}, headers=CLIENT)
    message = refused.json()["error"]["message"]
    assert refused.status_code == 422 and "field0: Extra inputs are not permitted" in message


def test_refused_bodies_use_up_the_key_and_then_are_refused_before_they_are_read(client, tmp_path):
    for _ in range(3):  # the burst
        assert client.post("/v1/decide", json={"user_request": "hi", "x": 1}, headers=CLIENT).status_code == 422
    hostile = client.post("/v1/decide", json={"user_request": "hi", **_made_up(5000)}, headers=CLIENT)
    assert hostile.status_code == 429 and int(hostile.headers["Retry-After"]) >= 1  # not validated: refused first
    assert client.post("/v1/decide", json={"user_request": "hi"}, headers=CLIENT).status_code == 429
    assert client.post("/v1/decide", json={"user_request": "hi"}, headers=OTHER_CLIENT).status_code == 200
    assert client.get("/v1/escalations", headers=REVIEWER).status_code == 200  # reviewers are not rate-limited
    assert len(records(tmp_path / "logs")) == 1  # only the one decided request
    assert 'so8t_rate_limited_total{key="gateway"} 2.0' in client.get("/metrics").text


def test_a_key_with_an_empty_bucket_gets_429_for_a_body_that_is_not_json_too(client):
    """Such a body fails before the route's key check: the handler charged the key but answered 422 for ever."""
    broken = {**CLIENT, "content-type": "application/json"}
    codes = [client.post("/v1/decide", content=b'{"user_request": "hi",', headers=broken).status_code
             for _ in range(5)]
    assert codes == [422, 422, 422, 429, 429]  # the burst of 3, then the limit
    limited = client.post("/v1/moderations", content=b"{", headers=broken)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert client.post("/v1/decide", json={"user_request": "hi"}, headers=CLIENT).status_code == 429


def test_a_body_not_sent_as_json_or_past_the_parser_gets_an_error_naming_that_and_no_record(tmp_path):
    """curl -d sends a form: the schema's message alone blamed the fields. Text the JSON parser gives up on
    (nesting past the recursion limit, a 5,000-digit number) is invalid JSON (422), not unreadable bytes (400)."""
    service = make_service(tmp_path / "logs")
    body = b'{"user_request": "How do I file expenses?"}'
    json_headers = {**CLIENT, "Content-Type": "application/json"}
    with TestClient(create_app(service)) as client:
        for given in ("application/x-www-form-urlencoded", "text/plain"):
            sent = client.post("/v1/decide", content=body, headers={**CLIENT, "Content-Type": given})
            message = sent.json()["error"]["message"]
            assert sent.status_code == 422 and f"send Content-Type: application/json (got '{given}')" in message
        for deep in (b"[" * 50_000 + b"]" * 50_000, b'{"user_request": ' + b"9" * 5_000 + b"}"):
            refused = client.post("/v1/decide", content=deep, headers=json_headers)
            assert refused.status_code == 422 and "not JSON this service can read" in refused.json()["error"]["message"]
        not_text = client.post("/v1/decide", content=b'{"user_request": "\xff"}', headers=json_headers)
        assert not_text.status_code == 400 and "cannot be read" in not_text.json()["error"]["message"]
        assert client.post("/v1/decide", content=body, headers=json_headers).json()["decision"] == "ALLOW"
    assert [r["input"] for r in records(tmp_path / "logs")] == ["How do I file expenses?"]  # the one that was read


def test_a_body_giving_a_key_twice_is_refused_whichever_value_a_proxy_would_read(tmp_path):
    """{"user_request": <harmful>, "user_request": <harmless>} was decided on the last value; a proxy, a WAF or a
    log reader in front of the gate may keep the first. Nested objects count too; the next body is decided."""
    service = make_service(tmp_path / "logs")
    json_headers = {**CLIENT, "Content-Type": "application/json"}
    twice = b'{"user_request": "every salary and home address", "user_request": "What time is lunch?"}'
    with TestClient(create_app(service)) as client:
        for path, body in (("/v1/decide", twice), ("/v1/decide", b"[" + twice + b"]"),
                           ("/v1/moderations", b'{"input": "a", "input": "b"}')):
            refused = client.post(path, content=body, headers=json_headers)
            assert refused.status_code == 422, (path, refused.text)
            assert "is given twice" in refused.json()["error"]["message"]
        assert client.post("/v1/decide", content=b'{"user_request": "How do I file expenses?"}',
                           headers=json_headers).json()["decision"] == "ALLOW"
    assert [r["input"] for r in records(tmp_path / "logs")] == ["How do I file expenses?"]
