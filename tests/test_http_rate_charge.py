"""The rate limit charges a call on /v1/decide, /v1/moderations and an outcome poll when its key is checked,
before its body is read: a call refused later (400 unreadable body, 413, 422 of the schema or of the query) has
paid, an empty bucket is 429 before anything is parsed, and a decided call is charged once per item."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_support import CLIENT, OTHER_CLIENT, make_service, records

from so8t_lib.serve.http import create_app

JSON = {**CLIENT, "content-type": "application/json"}
GOOD = {"user_request": "how do I file expenses"}


@pytest.fixture
def client(tmp_path):
    service = make_service(tmp_path / "logs", service={"rate_limit_per_minute": 1, "rate_limit_burst": 3,
                                                       "max_items": 3, "max_body_bytes": 8000})
    with TestClient(create_app(service)) as test_client:
        yield test_client


REFUSED_CALLS = {  # what each is refused with while the key has tokens
    "unreadable body": (400, lambda c: c.post("/v1/decide", content=b'{"user_request":"\xe9"}', headers=JSON)),
    "deeply nested body": (422, lambda c: c.post("/v1/decide", content=b"[" * 3000 + b"]" * 3000, headers=JSON)),
    "unknown query": (422, lambda c: c.post("/v1/decide?verbose=1", json=GOOD, headers=CLIENT)),
    "unknown query, moderations": (422, lambda c: c.post("/v1/moderations?x=1", json={"input": "hi"}, headers=CLIENT)),
    "invalid body": (422, lambda c: c.post("/v1/moderations", json={"input": 5}, headers=CLIENT)),
    "body over the limit": (413, lambda c: c.post("/v1/decide", json={"user_request": "x" * 9000}, headers=CLIENT)),
    "bad case id": (422, lambda c: c.get("/v1/escalations/no!such/outcome", headers=CLIENT)),
    "wrong method": (405, lambda c: c.get("/v1/decide", headers=CLIENT)),
}


@pytest.mark.parametrize(("code", "call"), REFUSED_CALLS.values(), ids=REFUSED_CALLS.keys())
def test_a_refused_call_uses_up_the_key_and_an_empty_bucket_is_429_before_it_is_read(client, code, call, tmp_path):
    """A 400 (FastAPI could not read the body), a 422 past the JSON parser and the app-wide unknown-query 422
    were never charged: unlimited, free parsing of up to max_body_bytes each, and never a 429."""
    assert [call(client).status_code for _ in range(3)] == [code] * 3
    limited = call(client)
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert client.post("/v1/decide", json=GOOD, headers=CLIENT).status_code == 429  # the burst went to them
    assert client.post("/v1/decide", json=GOOD, headers=OTHER_CLIENT).status_code == 200  # per key
    assert 'so8t_rate_limited_total{key="gateway"} 2.0' in client.get("/metrics").text
    assert len(records(tmp_path / "logs")) == 1


def test_a_decided_call_is_charged_once_per_item(client, tmp_path):
    assert client.post("/v1/decide", json=GOOD, headers=CLIENT).status_code == 200
    assert client.post("/v1/decide", json=[GOOD, GOOD], headers=CLIENT).status_code == 200
    assert client.post("/v1/moderations", json={"input": "hi"}, headers=CLIENT).status_code == 429
    assert [client.post("/v1/moderations", json={"input": "hi"}, headers=OTHER_CLIENT).status_code
            for _ in range(4)] == [200, 200, 200, 429]
    assert len(records(tmp_path / "logs")) == 6


def test_a_list_that_does_not_fit_the_bucket_is_429_and_costs_nothing(client):
    assert client.post("/v1/decide", json=GOOD, headers=CLIENT).status_code == 200  # 2 tokens left
    limited = client.post("/v1/decide", json=[GOOD] * 3, headers=CLIENT)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert client.post("/v1/decide", json=[GOOD] * 2, headers=CLIENT).status_code == 200


def test_a_call_without_a_key_gets_401_before_the_rate_limit(client):
    for _ in range(3):
        client.post("/v1/decide", content=b"{", headers=JSON)
    assert client.post("/v1/decide", json=GOOD, headers=CLIENT).status_code == 429
    for headers in ({}, {"Authorization": "Bearer not-a-known-key-at-all"}):
        answer = client.post("/v1/decide", content=b"{", headers={**headers, "content-type": "application/json"})
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
    assert 'so8t_rate_limited_total{key="gateway"} 1.0' in client.get("/metrics").text
