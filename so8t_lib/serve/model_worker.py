"""The one thread the model runs on (backends are not thread-safe), shared by every batch of a runtime.

Two rules keep the gate answering under load:

- **Decisions first.** A decision waiting for the thread goes before a task answer waiting to be written, so
  the answers of one batch's ALLOWs do not hold the next batch's decisions behind them.
- **A limit counts the call's own time.** A call fails with ``TimeoutError`` when it has run longer than its
  ``limit`` on the thread, or when, while it waits, the thread makes no progress for ``limit`` seconds (the call
  ahead of it has overrun its own limit: the model is stuck). Waiting behind healthy work is not a timeout; the
  service bounds that wait with ``max_pending``. A decision that arrives while an answer is being written waits
  for the call running: answers are written a chunk per call (``answering.py``), so that is one chunk. A call
  that gives up before it started is taken off the queue, so a timed-out request never runs later, holding up
  the ones behind it.

A call that never returns (a wedged GPU kernel) holds the thread for good: no thread can be started in its
place, as the backend is not thread-safe. Each call waiting behind it fails closed at its limit, and ``stuck``
says so once the call has run ``STUCK_FACTOR`` times its limit, so readiness can take the replica out of the
load balancer until it is restarted.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

DECIDE, ANSWER = 0, 1  # priorities: lower runs first
_CLOSE = 9  # after everything queued before it
_POLL_S = 0.5  # how often a waiting call looks at the thread's progress again
OVERRAN = "the model ran longer than"  # how the TimeoutError of a call that overran its own limit begins
STUCK_FACTOR = 2.0  # a call that has run this many times its limit is taken to hold the thread for good


class Stuck(NamedTuple):
    """The call holding the model's thread past ``STUCK_FACTOR`` times its limit."""

    since: float  # wall-clock time the call started (for display)
    limit: float
    over_s: float  # how long it has run past its limit


@dataclass
class _Call:
    fn: Callable[[], Any]
    limit: float
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    started_at: float | None = None  # monotonic
    started_wall: float | None = None


class ModelWorker:
    """``worker.call(fn, DECIDE, limit)`` runs ``fn`` on the model's thread and returns its result."""

    def __init__(self, name: str = "so8t-model", stuck_floor_s: float = 0.0) -> None:
        # a call is stuck past STUCK_FACTOR times its limit, and never sooner than this: an answer's last chunk
        # may get a limit of milliseconds (what is left of generation_timeout_s), and overrunning it is a timeout
        self.stuck_floor_s = stuck_floor_s
        self._calls: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._running: _Call | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            _, _, call = self._calls.get()
            if call is None:
                return
            if not call.future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started
            with self._lock:
                call.started_at, call.started_wall, self._running = time.monotonic(), time.time(), call
            try:
                call.future.set_result(call.fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                call.future.set_exception(exc)
            finally:
                with self._lock:
                    self._running = None

    def call(self, fn: Callable[[], Any], priority: int, limit: float) -> Any:
        """``fn()`` on the model's thread; TimeoutError as the module says, naming which limit was met."""
        if self._closed:
            raise RuntimeError("the model's thread is closed (the agent was closed)")
        call = _Call(fn, limit)
        self._calls.put((priority, next(self._order), call))
        waiting_since = time.monotonic()
        while True:
            now = time.monotonic()
            with self._lock:
                started, ahead = call.started_at, self._running
            if started is not None:
                deadline = started + limit
            elif ahead is not None and ahead.started_at is not None:
                deadline = max(ahead.started_at + ahead.limit, waiting_since) + limit
            elif self._thread.is_alive():  # the thread is between calls: it is making progress
                deadline = now + limit
            else:  # closed meanwhile, or died: nothing will ever run this call
                call.future.cancel()
                raise RuntimeError("the model's thread has stopped")
            try:
                return call.future.result(timeout=max(0.0, min(deadline - now, _POLL_S)))
            except concurrent.futures.TimeoutError:
                if time.monotonic() < deadline:
                    continue
            if started is not None:
                raise TimeoutError(f"{OVERRAN} {limit:g}s")
            if call.future.cancel():
                raise TimeoutError(f"the model was stuck on an earlier request for {limit:g}s past its limit")

    def busy(self) -> bool:
        """Whether a call is running on the model's thread now (one its caller timed out on may still be)."""
        with self._lock:
            return self._running is not None

    def stuck(self) -> Stuck | None:
        """The running call, when it has run more than ``STUCK_FACTOR`` times its limit (and ``stuck_floor_s``);
        else None."""
        with self._lock:
            running = self._running
            if running is None or running.started_at is None or running.started_wall is None:
                return None
            ran = time.monotonic() - running.started_at
            if not ran > max(STUCK_FACTOR * running.limit, self.stuck_floor_s):  # NaN or inf: never stuck
                return None
            return Stuck(running.started_wall, running.limit, ran - running.limit)

    def close(self) -> None:
        """Stop the thread once the calls queued so far have run (it does not wait for them); later calls fail."""
        self._closed = True
        self._calls.put((_CLOSE, next(self._order), None))
