"""The model's one thread: decisions go before task answers, a limit counts a call's own time (not its wait
behind healthy work), a stuck model fails the calls waiting behind it, and a call given up never runs."""

from __future__ import annotations

import threading
import time

import pytest

from so8t_lib.serve.model_worker import ANSWER, DECIDE, STUCK_FACTOR, ModelWorker


@pytest.fixture
def worker():
    w = ModelWorker("test-model")
    yield w
    w.close()


def _in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - looked at by the test
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_waiting_decision_goes_before_waiting_answers(worker):
    ran, gate = [], threading.Event()
    first, _ = _in_thread(lambda: worker.call(lambda: gate.wait(5) and ran.append("busy"), ANSWER, 10))
    time.sleep(0.1)  # the thread is busy: what comes next waits
    answers = [_in_thread(lambda i=i: worker.call(lambda: ran.append(f"answer {i}"), ANSWER, 10))[0] for i in range(2)]
    time.sleep(0.1)
    decision, _ = _in_thread(lambda: worker.call(lambda: ran.append("decision"), DECIDE, 10))
    time.sleep(0.1)
    gate.set()
    for thread in (first, *answers, decision):
        thread.join(10)
    assert ran == ["busy", "decision", "answer 0", "answer 1"]


def test_waiting_behind_healthy_work_is_not_a_timeout(worker):
    """Three calls of 0.3 s each with a 0.5 s limit: the last one waits 0.6 s, longer than its limit, and
    still succeeds, since the thread kept making progress."""
    threads = [_in_thread(lambda i=i: worker.call(lambda: time.sleep(0.3) or i, DECIDE, 0.5)) for i in range(3)]
    for thread, _ in threads:
        thread.join(10)
    assert sorted(out["value"] for _, out in threads) == [0, 1, 2]


def test_a_call_that_overruns_its_limit_fails_and_a_call_stuck_behind_it_fails_and_never_runs(worker):
    release, ran_late = threading.Event(), []
    hung, hung_out = _in_thread(lambda: worker.call(lambda: release.wait(10), DECIDE, 0.3))
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="stuck on an earlier request for 0.3s past its limit"):
        worker.call(lambda: ran_late.append("ran"), DECIDE, 0.3)
    waited = time.monotonic() - started
    hung.join(10)
    assert isinstance(hung_out["error"], TimeoutError) and "ran longer than 0.3s" in str(hung_out["error"])
    assert waited >= 0.5  # the hung call's own limit first, then this one's
    release.set()
    assert worker.call(lambda: "after", DECIDE, 5) == "after"
    assert ran_late == []  # given up before it started: taken off the queue, never run


def test_an_error_reaches_the_caller_and_the_thread_goes_on(worker):
    def broken():
        raise RuntimeError("context window exceeded")

    with pytest.raises(RuntimeError, match="context window exceeded"):
        worker.call(broken, DECIDE, 5)
    assert worker.call(lambda: 42, DECIDE, 5) == 42


def test_a_call_after_close_fails_at_once_instead_of_waiting_forever():
    worker = ModelWorker("closed-model")
    assert worker.call(lambda: 1, DECIDE, 5) == 1
    worker.close()
    with pytest.raises(RuntimeError, match="thread is closed"):
        worker.call(lambda: 2, DECIDE, 5)


def test_a_call_that_runs_twice_its_limit_marks_the_thread_stuck_until_it_returns(worker):
    """A slow call is not stuck; one past STUCK_FACTOR times its limit is, with when it started and how far
    past its limit it has run; once it returns the thread is healthy again."""
    release = threading.Event()
    before = time.time()
    hung, _ = _in_thread(lambda: worker.call(lambda: release.wait(10), DECIDE, 0.2))
    time.sleep(0.3)  # past its limit, not yet past STUCK_FACTOR times it
    assert worker.stuck() is None
    time.sleep(STUCK_FACTOR * 0.2)
    stuck = worker.stuck()
    assert stuck is not None and stuck.limit == 0.2
    assert before <= stuck.since <= time.time() - 0.5 and stuck.over_s >= 0.3
    release.set()
    hung.join(10)
    assert worker.call(lambda: "after", DECIDE, 5) == "after"
    assert worker.stuck() is None


def test_a_call_with_a_tiny_limit_is_not_stuck_before_the_floor():
    """An answer's last chunk may get milliseconds (what is left of generation_timeout_s): overrunning that is a
    generation timeout, and readiness dropped to 503 while an ordinary chunk finished."""
    worker = ModelWorker(stuck_floor_s=0.6)
    try:
        release = threading.Event()
        hung, _ = _in_thread(lambda: worker.call(lambda: release.wait(10), ANSWER, 0.01))
        time.sleep(0.3)  # thirty times its limit, under the floor
        assert worker.stuck() is None
        time.sleep(0.5)
        assert worker.stuck() is not None
        release.set()
        hung.join(10)
    finally:
        worker.close()
