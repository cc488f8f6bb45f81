"""Answers written in chunks: the same tokens as one pass (both model families), and in the runtime, decisions
that run between two chunks of an answer instead of after all of it."""

import threading
import time

import pytest
import torch
from test_model_families import FAMILIES, family_config
from test_runtime import FakeDecider, _agent, _records

from so8t_lib.model import SO8TModel

REQUEST = "How do I restart the print server on floor 3?"


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tokenizer):
    torch.manual_seed(0)
    return SO8TModel.from_config(family_config(request.param, gates={"init_std": 0.05}), tokenizer).eval()


@pytest.mark.parametrize("chunk", [1, 3, 7, 40])
def test_greedy_chunks_write_the_tokens_of_one_pass(family_model, chunk):
    whole = family_model.start_answer(REQUEST, "floor 3", max_tokens=25)
    assert whole.advance(25) and whole.written == 25  # random weights never write the end token this early
    answer = family_model.start_answer(REQUEST, "floor 3", max_tokens=25)
    calls = 0
    while not answer.advance(chunk):
        calls += 1
        assert answer.written == calls * chunk  # never more than asked for
    assert answer.written == 25 and answer.text == whole.text
    assert answer.advance(chunk) and answer.text == whole.text  # a finished answer stays as it is
    assert family_model.generate(REQUEST, "floor 3", max_tokens=25) == whole.text


def test_an_answer_stops_at_the_end_token_even_at_a_chunk_boundary(family_model):
    first = family_model.start_answer(REQUEST, max_tokens=6)
    first.advance(6)
    end = int(first._ids[0, first._prompt_length + 2])  # make the third token written the end token
    tokenizer = family_model.tokenizer
    saved = tokenizer.eos_token_id
    try:
        tokenizer.eos_token_id = end
        answer = family_model.start_answer(REQUEST, max_tokens=6)
        assert not answer.advance(2)
        assert answer.advance(1) and answer.written == 3  # the chunk ended exactly on the end token
    finally:
        tokenizer.eos_token_id = saved


def test_max_tokens_must_be_positive(family_model):
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        family_model.start_answer(REQUEST, max_tokens=0)


class ChunkedFake(FakeDecider):
    """ALLOWs everything; writes answers a token at a time, logging every call the model thread runs."""

    def __init__(self, token_s=0.0, on_chunk=None):
        super().__init__((0.95, 0.03, 0.02))
        self.events, self.token_s, self.on_chunk = [], token_s, on_chunk

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        self.events.append(("decide", requests[0]))
        return super().decide(requests, contexts, batch_size, progress)

    def start_answer(self, request, context=None, max_tokens=128, temperature=0.0):
        fake = self

        class Answer:
            written, finished = 0, False

            def advance(self, tokens):
                fake.events.append(("chunk", request))
                if fake.on_chunk:
                    fake.on_chunk(request, self.written)
                time.sleep(fake.token_s * tokens)
                self.written = min(max_tokens, self.written + tokens)
                self.finished = self.written >= max_tokens
                return self.finished

            @property
            def text(self):
                return f"answer to {request} ({self.written} tokens)"

        return Answer()


def _decide_during_the_answer(tmp_path, chunk_tokens):
    """An ALLOW's answer of 12 tokens; once its first chunk runs, another request is sent for a decision."""
    sent = threading.Event()
    later = {}

    def on_chunk(request, written):
        if request == "write me an answer" and not sent.is_set():
            sent.set()
            thread = threading.Thread(target=lambda: later.update(r=agent.run_agent(None, "a second request")))
            thread.start()
            later["thread"] = thread
            waited = time.monotonic()  # the second request's decision is queued before this chunk ends
            while agent._model._calls.qsize() == 0 and time.monotonic() - waited < 10:
                time.sleep(0.005)

    decider = ChunkedFake(on_chunk=on_chunk)
    agent = _agent(tmp_path, decider, answer_chunk_tokens=chunk_tokens, max_tokens=12, decision_timeout_s=5,
                   generate_responses=True)
    first = agent.run_agent(None, "write me an answer")
    later["thread"].join(10)
    return decider.events, first, later["r"]


def test_a_decision_runs_between_two_chunks_of_an_answer(tmp_path):
    events, first, second = _decide_during_the_answer(tmp_path, chunk_tokens=4)
    chunks = [i for i, e in enumerate(events) if e == ("chunk", "write me an answer")]
    decided = events.index(("decide", "a second request"))
    assert len(chunks) == 3 and chunks[0] < decided < chunks[1]  # after the first chunk, not after the answer
    assert first["decision"] == "ALLOW" and first["task_response"] == "answer to write me an answer (12 tokens)"
    assert second["decision"] == "ALLOW" and len(_records(tmp_path)) == 2


def test_one_chunk_as_long_as_the_answer_holds_the_decision_behind_it(tmp_path):
    events, first, _ = _decide_during_the_answer(tmp_path, chunk_tokens=12)  # the behaviour before chunks
    assert events.index(("decide", "a second request")) > events.index(("chunk", "write me an answer"))
    assert events.count(("chunk", "write me an answer")) == 1 and first["task_response"].endswith("(12 tokens)")


def test_the_answer_limit_sums_its_chunks(tmp_path):
    """Each chunk is short, but together they pass generation_timeout_s: the ALLOW stands, without an answer."""
    decider = ChunkedFake(token_s=0.05)
    agent = _agent(tmp_path, decider, answer_chunk_tokens=2, max_tokens=40, generation_timeout_s=0.5)
    result = agent.run_agent(None, "write a long one")
    assert result["decision"] == "ALLOW" and result["task_response"] == ""
    assert "generation timed out after 0.5s (the answer ran past its 0.5s of model time)" in result["error"]
    assert 3 <= decider.events.count(("chunk", "write a long one")) < 20
    assert _records(tmp_path)[-1]["decision"] == "ALLOW"


def test_two_answers_are_written_one_after_the_other(tmp_path):
    decider = ChunkedFake(token_s=0.01)
    agent = _agent(tmp_path, decider, answer_chunk_tokens=2, max_tokens=8, decision_timeout_s=5)
    threads = [threading.Thread(target=agent.run_agent, args=(None, f"request {i}")) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    order = [request for kind, request in decider.events if kind == "chunk"]
    assert len(order) == 8 and order[:4] == [order[0]] * 4 and order[4:] == [order[4]] * 4 and order[0] != order[4]


class EndlessAnswers(ChunkedFake):
    """ALLOWs requests that start with "answer", REFUSEs the rest; an answer goes on, a short chunk at a time,
    until ``release`` is set."""

    def __init__(self):
        super().__init__(token_s=0.005)
        self.release = threading.Event()

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        self.events.append(("decide", requests[0]))
        return torch.tensor([[0.95, 0.03, 0.02] if r.startswith("answer") else [0.02, 0.95, 0.03] for r in requests])

    def start_answer(self, request, context=None, max_tokens=128, temperature=0.0):
        answer = super().start_answer(request, context, max_tokens=10**6, temperature=temperature)
        release, advance = self.release, answer.advance
        answer.advance = lambda tokens: advance(tokens) or release.is_set()
        return answer


def test_in_the_service_no_decision_waits_for_an_answer(tmp_path):
    """Streamed batches: a REFUSE sharing a batch with an ALLOW gets its result while the ALLOW's answer is still
    being written, and so does a request that arrives later, with a single batch worker: before, both waited for
    the whole answer (up to generation_timeout_s)."""
    import asyncio

    from so8t_lib.serve.http.batching import MicroBatcher

    decider = EndlessAnswers()
    agent = _agent(tmp_path, decider, answer_chunk_tokens=2, decision_timeout_s=5, generation_timeout_s=60)

    async def scenario():
        batcher = MicroBatcher(agent.run_batch, max_batch=8, max_wait_s=0.05, concurrency=1, streamed=True)
        await batcher.start()
        try:
            together = [asyncio.create_task(batcher.submit([{"user_request": text}]))
                        for text in ("answer me at length", "refuse this one")]
            refused = await asyncio.wait_for(together[1], 20)
            later = await asyncio.wait_for(batcher.submit([{"user_request": "refuse this too"}]), 20)
            assert not together[0].done()  # the answer is still being written
            decider.release.set()
            answered = await asyncio.wait_for(together[0], 20)
            return answered, refused, later
        finally:
            decider.release.set()
            await batcher.close()

    answered, refused, later = asyncio.run(scenario())
    assert [answered[0]["decision"], refused[0]["decision"], later[0]["decision"]] == ["ALLOW", "REFUSE", "REFUSE"]
    assert answered[0]["task_response"].startswith("answer to answer me at length")
    assert len(_records(tmp_path)) == 3
    agent.close()


def test_answers_take_their_turns_in_the_order_asked_and_the_wait_is_not_model_time():
    """A plain lock let one batch writing ALLOWs back to back take it again and again, and the wait for it was
    charged to generation_timeout_s: another batch's ALLOW lost its answer having used no model time at all."""
    from so8t_lib.serve.answering import AnswerTurns, write_answer
    from so8t_lib.serve.config import InferenceConfig
    from so8t_lib.serve.model_worker import ModelWorker

    class Answer:
        def __init__(self, name, n):
            self.name, self.n, self.written, self.finished = name, n, 0, False

        def advance(self, tokens):
            order.append(self.name)
            time.sleep(0.02 * tokens)
            self.written += tokens
            self.finished = self.written >= self.n
            return self.finished

        @property
        def text(self):
            return f"{self.name}:{self.written}"

    class Decider:
        def start_answer(self, request, context=None, max_tokens=128, temperature=0.0):
            return Answer(request, max_tokens)

    order, results = [], {}
    inference = InferenceConfig(generation_timeout_s=0.5, max_tokens=8, answer_chunk_tokens=4)  # 0.16 s of model time
    worker, turns = ModelWorker(), AnswerTurns()

    def one_batch(names, delay):
        time.sleep(delay)
        for name in names:
            results[name] = write_answer(worker, Decider(), name, None, inference, turns)

    threads = [threading.Thread(target=one_batch, args=(["A0", "A1", "A2", "A3"], 0.0)),
               threading.Thread(target=one_batch, args=(["B"], 0.05))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    worker.close()
    assert results == {name: f"{name}:8" for name in ("A0", "A1", "A2", "A3", "B")}  # B waited ~0.6 s: no timeout
    assert [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name] == ["A0", "B", "A1", "A2", "A3"]


def test_a_batch_that_could_not_leave_its_slot_leaves_it_once_an_answering_place_is_free():
    """With every answering place taken, a decided batch kept its decision slot through all its answers, even after
    the batches ahead of it had finished: a request arriving then waited for whole answers."""
    import asyncio

    from so8t_lib.serve.http.batching import MicroBatcher

    log, turns = [], threading.Lock()
    answered = {name: threading.Event() for name in "ABC"}

    def run_batch(items, received, on_result, on_decided, claim):  # Agent.run_batch's streamed signature
        name = items[0]["user_request"]
        log.append(f"decide {name}")
        on_decided()
        with turns:  # answers one at a time; A's ends only once C has been decided
            if name == "A":
                answered["A"].wait(0.3)
            if name == "B":
                assert answered["C"].wait(10), "C was not decided while B was writing its answer"
            log.append(f"answered {name}")
        on_result(0, {"decision": "ALLOW", "name": name})
        return [{"decision": "ALLOW", "name": name}]

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch=1, max_wait_s=0.0, concurrency=1, streamed=True)
        await batcher.start()
        tasks = []
        for name in "ABC":
            tasks.append(asyncio.create_task(batcher.submit([{"user_request": name}])))
            await asyncio.sleep(0.1)
        while "decide C" not in log:
            await asyncio.sleep(0.01)
        answered["C"].set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await batcher.close()

    asyncio.run(scenario())
    assert log.index("decide C") < log.index("answered B")


def test_an_answers_last_chunk_with_little_time_left_does_not_mark_the_model_stuck(tmp_path):
    """The last chunk of an answer runs with what is left of generation_timeout_s as its limit (here 0.05 s); a
    chunk of 0.3 s then ran six times its limit and, without the floor the runtime gives its model thread (twice
    decision_timeout_s), /readyz would have called a healthy model stuck and taken the replica out of the load
    balancer."""
    decider = ChunkedFake(token_s=0.075)  # 4 tokens a chunk: 0.3 s
    agent = _agent(tmp_path, decider, decision_timeout_s=0.5, generation_timeout_s=0.35, max_tokens=8,
                   answer_chunk_tokens=4)
    seen, result = [], {}
    runner = threading.Thread(target=lambda: result.update(agent.run_agent(None, "write me an answer", "u1")))
    runner.start()
    runner.join(10)
    ends = time.monotonic() + 0.4  # the cut-off chunk runs on past its caller: watch it to its end
    while time.monotonic() < ends:
        seen.append(agent.model_stuck())
        time.sleep(0.01)
    agent.close()
    assert [e[0] for e in decider.events] == ["decide", "chunk", "chunk"]  # the second chunk had 0.05 s
    assert result["decision"] == "ALLOW" and seen and not any(seen)
