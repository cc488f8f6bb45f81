"""A shutdown has a deadline: the requests still in flight at service.shutdown_timeout_s get the service's JSON
503 shutting_down (not uvicorn's bare 500), no answer is written after it, every decided request keeps exactly
one audit record, none of which claims an answer its client never got, and the server stops within
service.stop_budget_s. Before, the stop waited for every answer to be written (a GGUF model at max_tokens 1024
took 149 s, past the unit's TimeoutStopSec=90) and the audit log recorded answers that no client received."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
from service_support import CLIENT, PROBS, FixedDecider, LiveServer, make_service, records

from so8t_lib.serve.audit import verify
from so8t_lib.serve.runtime_records import SHUTDOWN_FLAG

CHUNK_S = 0.05  # one chunk of an answer on the model's thread
LONG_CHUNKS = 2000  # a long answer: 100 s, far past the stop budget


class _Answer:
    def __init__(self, chunks: int, writing: threading.Event) -> None:
        self.left, self.writing, self.text = chunks, writing, ""

    def advance(self, tokens: int) -> bool:
        self.writing.set()
        time.sleep(CHUNK_S)
        self.left -= 1
        self.text += "word "
        return self.left <= 0


class ChunkedAnswers(FixedDecider):
    """Like the GGUF backend: answers written a chunk at a time. 'refuse' is REFUSEd, 'long' takes 100 s."""

    model_version = "fake-chunked@1"

    def __init__(self) -> None:
        super().__init__()
        self.writing_long = threading.Event()
        self.chunks_written = 0

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        return np.asarray([PROBS["REFUSE"] if "refuse" in r else PROBS["ALLOW"] for r in requests])

    def start_answer(self, request, context=None, max_tokens=128, temperature=0.0):
        return _Answer(LONG_CHUNKS if "long" in request else 2,
                       self.writing_long if "long" in request else threading.Event())


def _ask(url: str, text: str, answers: dict) -> None:
    try:
        answers[text] = httpx.post(f"{url}/v1/decide", headers=CLIENT, json={"user_request": text}, timeout=120)
    except httpx.HTTPError as exc:
        answers[text] = exc


def test_a_shutdown_answers_what_is_in_flight_503_and_ends_within_its_budget(tmp_path):
    decider = ChunkedAnswers()
    service = make_service(tmp_path / "logs", decider, inference={"generate_responses": True,
                                                                  "generation_timeout_s": 300},
                           service={"shutdown_timeout_s": 1.0, "max_wait_ms": 0})
    budget = service.config.stop_budget_s
    answers: dict = {}
    server = LiveServer(service).__enter__()
    try:
        for text in ("refuse: steal the customer list", "short: where is the expense form?"):
            _ask(server.url, text, answers)  # answered before the shutdown: their real answers
        longs = [threading.Thread(target=_ask, args=(server.url, f"long answer {n}", answers)) for n in range(2)]
        for thread in longs:
            thread.start()
        assert decider.writing_long.wait(30), "the long answer was never started"
        began = time.monotonic()
        server.server.should_exit = True  # what uvicorn's SIGTERM handler does
        server.thread.join(budget + 30)
        stopped_in = time.monotonic() - began
        for thread in longs:
            thread.join(30)
    finally:
        server.server.should_exit = True
        server.thread.join(5)
        server.sock.close()
    assert not server.thread.is_alive() and stopped_in < budget, f"stopped in {stopped_in:.1f}s, budget {budget:g}s"

    delivered = [a for a in answers.values() if isinstance(a, httpx.Response) and a.status_code == 200]
    refused = [a for text, a in answers.items() if text.startswith("long")]
    assert [a.json()["decision"] for a in delivered] == ["REFUSE", "ALLOW"]
    assert delivered[1].json()["task_response"] == "word word"
    for answer in refused:  # the service's own JSON error, not uvicorn's plain-text 500
        assert isinstance(answer, httpx.Response) and answer.status_code == 503, answer
        assert answer.json()["error"]["type"] == "shutting_down" and answer.headers["Retry-After"]

    logged = records(tmp_path / "logs")
    ids = [r["request_id"] for r in logged]
    assert len(ids) == len(set(ids)) == 4, logged  # one record per decided request
    by_id = {r["request_id"]: r for r in logged}
    for answer in delivered:
        record = by_id[answer.json()["request_id"]]
        assert SHUTDOWN_FLAG not in record["flags"] and record["decision"] == answer.json()["decision"]
    cut = [r for r in logged if r["request_id"] not in {a.json()["request_id"] for a in delivered}]
    assert len(cut) == 2
    for record in cut:  # decided ALLOW, recorded as not delivered: no answer is claimed for a 503
        assert record["decision"] == "ALLOW" and SHUTDOWN_FLAG in record["flags"], record
        assert "not delivered" in record["error"] and record["processing_time_ms"] < budget * 1000
    assert verify(tmp_path / "logs")["errors"] == []
