"""A shutdown has a deadline: the requests still in flight at service.shutdown_timeout_s get the service's JSON
503 shutting_down (not uvicorn's bare 500), no answer is written after it, every decided request keeps exactly
one audit record, none of which claims an answer its client never got, and the server stops within
service.stop_budget_s. Before, the stop waited for every answer to be written (a GGUF model at max_tokens 1024
took 149 s, past the unit's TimeoutStopSec=90) and the audit log recorded answers that no client received."""

from __future__ import annotations

import collections
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
        self.long_decided = threading.Semaphore(0)  # one release per long request the service has taken in

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        for request in requests:
            if "long" in request:
                self.long_decided.release()
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
        for _ in longs:  # both inside the service before the stop: a request still connecting is simply refused
            assert decider.long_decided.acquire(timeout=30), "a long request never reached the service"
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
    counted = collections.Counter()
    for sample in service.metrics.registry.collect():
        for s in sample.samples:
            if s.name == "so8t_decisions_total":
                counted[s.labels["decision"]] += s.value
    assert +counted == {"ALLOW": 3.0, "REFUSE": 1.0}, counted  # the cut-off decisions are counted, as recorded


def _batcher_run(scenario) -> None:
    import asyncio

    asyncio.run(scenario())


def test_a_request_cut_off_is_answered_503_even_when_its_result_settles_in_time():
    """A worker that reached claim() after the cut-off recorded "not delivered", then settled the result before the
    waiting request woke: the client got 200 for a decision its record said was answered 503."""
    import asyncio

    from so8t_lib.serve.http.batching import Closing, MicroBatcher

    go, claims, outcome, settled = threading.Event(), [], {}, []

    def run_batch(items, received, on_result, on_decided, claim):
        go.wait(10)  # the model pass runs through the cut-off
        claims.append(claim(0))  # before the audit record
        result = {"decision": "ALLOW"}
        on_result(0, result)
        return [result]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch=1, max_wait_s=0.0, concurrency=1, streamed=True)
        await batcher.start()
        task = asyncio.create_task(batcher.submit([{"user_request": "x"}], on_settled=settled.append))
        await asyncio.sleep(0.05)
        batcher.stop_taking()
        batcher.cut_off()
        go.set()
        time.sleep(0.2)  # the loop busy elsewhere: the result settles before the request wakes
        try:
            outcome["answer"] = await task
        except Closing:
            outcome["answer"] = 503
        await batcher.close(1)

    _batcher_run(scenario)
    assert claims == [False] and outcome["answer"] == 503
    assert settled == [{"decision": "ALLOW"}]  # decided and recorded: the metrics count it


def test_a_claimed_request_given_up_on_records_its_later_items_as_not_delivered():
    """Two items in two batches, the first recorded as delivered before the cut-off, the second still being decided
    after the wait for claimed requests: the client gets 503, so the second record must not say delivered."""
    import asyncio

    from so8t_lib.serve.http.batching import CLAIMED_WAIT_S, Closing, MicroBatcher

    first_done, cut_done, log, outcome = threading.Event(), threading.Event(), [], {}

    def run_batch(items, received, on_result, on_decided, claim):
        text = items[0]["user_request"]
        if text == "slow":
            cut_done.wait(10)
            time.sleep(CLAIMED_WAIT_S + 0.5)  # still deciding after the batcher stopped waiting for it
        log.append((text, claim(0)))
        on_result(0, {"decision": "REFUSE"})
        first_done.set()
        return [{"decision": "REFUSE"}]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch=1, max_wait_s=0.0, concurrency=2, streamed=True)
        await batcher.start()
        task = asyncio.create_task(batcher.submit([{"user_request": "fast"}, {"user_request": "slow"}]))
        while not first_done.is_set():
            await asyncio.sleep(0.01)
        batcher.stop_taking()
        batcher.cut_off()
        cut_done.set()
        try:
            outcome["answer"] = await task
        except Closing:
            outcome["answer"] = 503
        await batcher.close(5)

    _batcher_run(scenario)
    assert outcome["answer"] == 503 and sorted(log) == [("fast", True), ("slow", False)]


def test_a_cut_off_record_keeps_its_fail_closed_reason_first(tmp_path):
    """Metrics and compliance reports read a fail-closed record's reason from the start of its error: "not
    delivered" put first turned every cut-off model error (and the client's invalid input) into "other"."""
    from so8t_lib.serve.http.metrics import fail_reason
    from so8t_lib.serve.runtime_records import NOT_DELIVERED

    service = make_service(tmp_path / "logs", FixedDecider(fail=True))
    agent = service.agent
    try:
        results = agent.run_batch([{"user_request": "status of my order"}], claim=lambda index: False)
    finally:
        agent.close()
    assert results[0]["decision"] == "ESCALATE" and SHUTDOWN_FLAG in results[0]["flags"]
    assert fail_reason(results[0]) == "model_error" and NOT_DELIVERED[:12] in results[0]["error"]
    assert records(tmp_path / "logs")[0]["error"] == results[0]["error"]
