"""An ALLOW's task answer, written on the model's thread a chunk at a time.

The model has one thread (``model_worker``), and decisions go before answers there. Written in one call, an
answer held every decision that arrived meanwhile for as long as it took, up to ``generation_timeout_s`` (two
minutes by default). Written ``answer_chunk_tokens`` at a time, each chunk is its own call, so a decision waits
for at most the chunk being written. One answer is written at a time (``turn``): llama.cpp's answer context
holds one, and two answers sharing the thread would each finish later, not sooner.

``generation_timeout_s`` bounds the answer's own time on the thread, summed over its chunks; neither the time
decisions take between two chunks nor the wait for an earlier answer to finish is counted against it. Answers
take their turns in the order they asked (``AnswerTurns``; a plain lock is not fair, and one batch writing its
ALLOWs back to back kept taking it back); the queue of waiting requests is bounded by ``service.max_pending``.

A server's shutdown deadline stops the answers (``AnswerTurns.stop``): none starts after it, one being written
ends at its next chunk, and each raises ``AnswerStopped``, which the runtime records as it records a failed answer.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator

from .config import InferenceConfig
from .model_worker import ANSWER, OVERRAN, ModelWorker


class AnswerStopped(RuntimeError):
    """The service's shutdown deadline passed: this answer is not written (or not finished)."""


STOPPED = "not written: the service is shutting down (service.shutdown_timeout_s passed)"


class AnswerTurns:
    """One answer at a time, first come first served; none at all once stopped."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: collections.deque = collections.deque()
        self._busy = False
        self.stopped = False

    def stop(self) -> None:
        """No answer starts from now on; those waiting for their turn raise AnswerStopped."""
        with self._changed:
            self.stopped = True
            self._changed.notify_all()

    def check(self) -> None:
        if self.stopped:
            raise AnswerStopped(STOPPED)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            try:
                while self._busy or self._waiting[0] is not ticket:
                    self.check()
                    self._changed.wait()
                self.check()
            except BaseException:  # interrupted while waiting: leave the queue, let the next one look
                self._waiting.remove(ticket)
                self._changed.notify_all()
                raise
            self._waiting.popleft()
            self._busy = True
        try:
            yield
        finally:
            with self._changed:
                self._busy = False
                self._changed.notify_all()


def write_answer(worker: ModelWorker, decider, request: str, context: str | None, inference: InferenceConfig,
                 turns: AnswerTurns) -> str:
    """The raw answer text; TimeoutError past ``generation_timeout_s`` of the answer's own model time (or, for a
    decider that writes answers only whole, of its one call), any other failure as itself."""
    budget = inference.generation_timeout_s
    start = getattr(decider, "start_answer", None)
    if start is None:  # a decider that writes answers only in one pass (a custom backend, a test double)
        return worker.call(lambda: (turns.check(), decider.generate(request, context, max_tokens=inference.max_tokens,
                                                                    temperature=inference.temperature))[1],
                           ANSWER, budget)
    with turns.turn():
        def timed(step):  # looked at again on the model's thread: a call queued before a stop does not run
            turns.check()
            began = time.perf_counter()
            return step(), time.perf_counter() - began

        answer, used = worker.call(lambda: timed(lambda: start(request, context, max_tokens=inference.max_tokens,
                                                                temperature=inference.temperature)), ANSWER, budget)
        finished = False
        while not finished:
            left = budget - used
            if left <= 0:
                raise TimeoutError(f"the answer ran past its {budget:g}s of model time")
            try:
                finished, took = worker.call(lambda: timed(lambda: answer.advance(inference.answer_chunk_tokens)),
                                             ANSWER, left)
            except TimeoutError as exc:
                if str(exc).startswith(OVERRAN):  # the chunk overran what was left of the answer's time
                    raise TimeoutError(f"the answer ran past its {budget:g}s of model time") from exc
                raise
            used += took
        return answer.text


__all__ = ["AnswerStopped", "AnswerTurns", "write_answer"]
