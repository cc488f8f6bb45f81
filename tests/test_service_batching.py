"""Micro-batching: concurrent requests share decision passes, each keeps its own result, audit record
and arrival time; a failing pass fails closed; shutting down decides what is waiting. Then a real
server on loopback: N concurrent clients x M requests give exactly N x M audit records, verify clean."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from service_support import CLIENT, PROBS, FixedDecider, LiveServer, make_service, records

from so8t_lib.serve.audit import verify
from so8t_lib.serve.http.batching import Closing, MicroBatcher, Overloaded


class Recorder:
    """A run_batch stand-in: remembers each batch; ``hold`` blocks the first call until released."""

    def __init__(self, hold: threading.Event | None = None, fail: bool = False):
        self.batches: list[list[dict]] = []
        self.received: list[list[float]] = []
        self.hold, self.fail = hold, fail
        self.entered = threading.Event()

    def __call__(self, items, received_at):
        self.entered.set()
        if self.hold is not None and not self.batches:
            self.hold.wait(30)
        self.batches.append(list(items))
        self.received.append(list(received_at))
        if self.fail:
            raise RuntimeError("the batch broke")
        return [{"decision": "ALLOW", "echo": item["n"]} for item in items]


def run(coro):
    return asyncio.run(coro)


def test_waiting_requests_join_one_batch_and_keep_their_order():
    hold = threading.Event()
    recorder = Recorder(hold)

    async def scenario():
        batcher = MicroBatcher(recorder, max_batch=8, max_wait_s=0.001, concurrency=1)
        await batcher.start()
        first = asyncio.create_task(batcher.submit([{"n": 0}], received_at=0.0))
        while not recorder.entered.is_set():  # the first request is being decided (and held)
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(batcher.submit([{"n": n}], received_at=float(n))) for n in range(1, 11)]
        while batcher.pending != 10:  # all ten wait: the next batch is held until the worker is free
            await asyncio.sleep(0.001)
        assert not recorder.batches  # still held (the hold's own 30 s limit, which this used to wait out, is far)
        hold.set()
        results = [await first] + [await task for task in rest]
        await batcher.close()
        return results

    results = run(scenario())
    assert [r[0]["echo"] for r in results] == list(range(11))
    sizes = [len(b) for b in recorder.batches]
    assert sizes == [1, 8, 2]  # the first alone; the ten that waited fill max_batch, then the rest
    assert recorder.received[1] == [float(n) for n in range(1, 9)]  # each request's own arrival time


def test_a_list_is_answered_in_order():
    recorder = Recorder()

    async def scenario():
        batcher = MicroBatcher(recorder, max_batch=4, max_wait_s=0.01)
        await batcher.start()
        out = await batcher.submit([{"n": n} for n in range(10)])
        await batcher.close()
        return out

    assert [r["echo"] for r in run(scenario())] == list(range(10))
    assert all(len(b) <= 4 for b in recorder.batches)


def test_a_pass_that_raises_fails_closed_for_each_request():
    async def scenario():
        batcher = MicroBatcher(Recorder(fail=True), max_batch=4, model_version=lambda: "m@1")
        await batcher.start()
        out = await batcher.submit([{"n": 1}, {"n": 2}])
        await batcher.close()
        return out

    for result in run(scenario()):
        assert result["decision"] == "ESCALATE" and result["human_required"] and "fail_closed" in result["flags"]
        assert "not recorded" in result["error"] and result["model_version"] == "m@1"


def test_close_decides_what_waits_and_refuses_what_comes_after():
    hold = threading.Event()
    recorder = Recorder(hold)

    async def until(condition):
        while not condition():
            await asyncio.sleep(0.001)

    async def scenario():
        batcher = MicroBatcher(recorder, max_batch=2, max_wait_s=0.0, concurrency=1, max_pending=2)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit([{"n": 0}]))]
        await until(recorder.entered.is_set)  # 0 is deciding (held)
        tasks.append(asyncio.create_task(batcher.submit([{"n": 1}])))
        await asyncio.sleep(0)
        await until(lambda: batcher._queue.qsize() == 0)  # 1 is taken and waits for the worker: still pending
        assert batcher.pending == 1
        tasks.append(asyncio.create_task(batcher.submit([{"n": 2}])))
        await until(lambda: batcher.pending == 2)
        with pytest.raises(Overloaded):  # 1 held + 2 queued: a third waiting request is over max_pending 2
            await batcher.submit([{"n": 3}])
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(Closing):
            await batcher.submit([{"n": 100}])
        hold.set()
        await closing
        return [await t for t in tasks]

    assert [r[0]["echo"] for r in run(scenario())] == [0, 1, 2]
    assert [[i["n"] for i in b] for b in recorder.batches] == [[0], [1, 2]]


def test_concurrent_clients_on_a_real_server_get_one_record_each(tmp_path):
    """N clients x M requests over loopback: exactly N x M decision records, each answered request's id
    among them, the chain verifies; the stand-in model is slow, so requests pile up into batches."""
    n_clients, per_client = 8, 6
    decider = FixedDecider(PROBS["REFUSE"], delay_s=0.05)
    service = make_service(tmp_path / "logs", decider, service={"max_batch": 16, "max_wait_ms": 5})

    async def client(url: str, k: int) -> list[str]:
        async with httpx.AsyncClient(base_url=url, headers=CLIENT, timeout=60) as http:
            ids = []
            for m in range(per_client):
                answer = await http.post("/v1/decide", json={"user_request": f"client {k} request {m}",
                                                             "user_id": f"u{k}"})
                assert answer.status_code == 200
                ids.append(answer.json()["request_id"])
            return ids

    async def burst(url: str) -> list[str]:
        return [i for ids in await asyncio.gather(*(client(url, k) for k in range(n_clients))) for i in ids]

    with LiveServer(service) as server:
        start = time.perf_counter()
        returned = asyncio.run(burst(server.url))
        assert time.perf_counter() - start < 120
    logged = [r["request_id"] for r in records(tmp_path / "logs")]
    assert len(logged) == n_clients * per_client and sorted(logged) == sorted(returned)
    assert verify(tmp_path / "logs")["errors"] == []
    assert max(decider.batches) > 1  # eight clients, a 50 ms model: some requests shared a pass


def _ask_together(server, texts: list[str], pause_s: float = 0.0) -> list[dict]:
    out: dict[int, dict] = {}

    def ask(i: int) -> None:
        out[i] = httpx.post(f"{server.url}/v1/decide", json={"user_request": texts[i]}, headers=CLIENT,
                            timeout=30).json()

    threads = []
    for i in range(len(texts)):
        threads.append(threading.Thread(target=ask, args=(i,)))
        threads[-1].start()
        time.sleep(pause_s)
    for thread in threads:
        thread.join(30)
    return [out[i] for i in range(len(texts))]


def test_waiting_for_the_model_behind_other_batches_is_not_a_timeout(tmp_path):
    """Four concurrent requests, one per pass, each pass 0.6 s against a 1.0 s decision limit: the limit counts a
    pass's own time, so none fails closed (before, three of four were ESCALATEd for waiting, and their passes
    still ran afterwards)."""
    decider = FixedDecider(delay_s=0.6)
    service = make_service(tmp_path, decider, inference={"decision_timeout_s": 1.0},
                           escalation={"queue_timeout_s": 0.5},
                           service={"max_batch": 1, "max_wait_ms": 0, "concurrent_batches": 2})
    with LiveServer(service) as server:
        answers = _ask_together(server, [f"book room {i}" for i in range(4)])
    assert [a["decision"] for a in answers] == ["ALLOW"] * 4, [a["error"] for a in answers]
    assert decider.batches == [1, 1, 1, 1]


class SlowAnswers(FixedDecider):
    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        time.sleep(1.5)
        return "Here is how."


def test_an_answer_being_written_does_not_make_the_next_decision_time_out(tmp_path):
    """The task answer of one ALLOW takes 1.5 s on the model's thread; a request arriving meanwhile waits for it
    (decisions go before answers still waiting) and is decided, not ESCALATEd at its 1.0 s limit."""
    service = make_service(tmp_path, SlowAnswers(), inference={"decision_timeout_s": 1.0, "generate_responses": True,
                                                               "generation_timeout_s": 5},
                           escalation={"queue_timeout_s": 0.5}, service={"max_wait_ms": 0})
    with LiveServer(service) as server:
        answers = _ask_together(server, ["book room 0", "book room 1"], pause_s=0.3)
    assert [a["decision"] for a in answers] == ["ALLOW", "ALLOW"], [a["error"] for a in answers]
    assert all(a["task_response"] == "Here is how." for a in answers)


def test_a_decision_whose_request_was_cancelled_is_still_counted(tmp_path):
    """A shutdown whose grace period runs out cancels the requests still waiting; their decisions are made and
    audited all the same, but were missing from so8t_decisions_total (counted only by the request's handler)."""
    service = make_service(tmp_path / "logs", FixedDecider(PROBS["ALLOW"], delay_s=0.3))

    async def scenario():
        await service.start()
        try:
            asking = asyncio.create_task(service.decide([{"user_request": "Where is the expense form?"}], None,
                                                        "decide"))
            await asyncio.sleep(0.1)  # the decision pass is running
            asking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asking
        finally:
            await service.stop()  # decides and records what is running

    run(scenario())
    counted = sum(sample.value for metric in service.metrics.decisions.collect() for sample in metric.samples
                  if sample.name == "so8t_decisions_total")
    assert len(records(tmp_path / "logs")) == 1 and counted == 1
