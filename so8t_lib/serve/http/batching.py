"""Dynamic micro-batching: concurrent requests share one decision pass.

Each request waits on an asyncio queue. A collector takes the first one, then whatever arrives within
``max_wait_s`` (or is already waiting), up to ``max_batch``, and hands the batch to
``Agent.run_batch`` on a worker thread, with every request's own arrival time (``received_at``), so
``processing_time_ms`` still counts its wait and every request keeps its own audit record. While all
``concurrency`` workers are busy the next batch keeps filling, so under load batches grow by
themselves and at low load a request waits at most ``max_wait_s``.

``run_batch`` never raises by contract; if it did, every request of that batch gets a fail-closed
ESCALATE that says it was not recorded, never an error a client could read as "not flagged".

A shutdown has a deadline (``cut_off``): a request still waiting then is answered ``Closing`` (503
shutting_down) at once. Each request (one ``submit``, all its items) is either *claimed* by the runtime before
its first audit record is written (its client gets the results) or *cut off*, so a record can say whether its
client was answered (``run_batch``'s ``claim``); a cut request is answered 503 whatever its results. One case
ends both ways: a request of several items, claimed, whose last items are still being decided ``CLAIMED_WAIT_S``
after the cut-off is then cut, and its records written before that say delivered. Requests not yet in a batch
are never decided.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..outcome import fail_closed, make_result

logger = logging.getLogger("so8t.service")


class Overloaded(RuntimeError):
    """More requests are waiting than ``max_pending``: the caller should answer 503 with Retry-After."""


class Closing(RuntimeError):
    """The service is shutting down and takes no new requests."""


CUT_OFF = ("the service is shutting down: service.shutdown_timeout_s passed before this request was answered; "
           "retry it on another replica or after the restart")
CLAIMED_WAIT_S = 1.0  # how long a request claimed just before the cut-off may still take to arrive


@dataclass
class _Ask:
    """One submit: its items are delivered together, or cut off together (guarded by the batcher's lock)."""
    claimed: bool = False
    cut: bool = False


@dataclass
class _Pending:
    item: dict
    received_at: float
    future: asyncio.Future
    ask: _Ask
    on_settled: Callable[[dict], None] | None = None
    reported: bool = False  # on_settled has seen its result (guarded by the batcher's claims lock)


class _DaemonThreads(concurrent.futures.Executor):
    """The batches' worker threads. Daemons, unlike ThreadPoolExecutor's (which the interpreter joins at exit): a
    model pass that cannot be interrupted must not hold the process past its stop budget."""

    def __init__(self, count: int, name: str) -> None:
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def _serve(self) -> None:
        while (job := self._work.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def _settle(future: asyncio.Future, result: dict) -> None:
    if not future.done():  # settled already, or its client went away
        future.set_result(result)


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list, list[float]], list[dict]], *, max_batch: int = 32,
                 max_wait_s: float = 0.005, concurrency: int = 2, max_pending: int = 2048,
                 model_version: Callable[[], str] = lambda: "unknown",
                 on_batch: Callable[[int, float], None] | None = None, streamed: bool = False) -> None:
        self._run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.streamed = streamed  # run_batch takes on_result, on_decided and claim (Agent.run_batch)
        self._answering = 0  # batches that left their decision slot to write answers
        self._to_leave: collections.deque[dict] = collections.deque()  # decided, waiting for a place to answer
        self.concurrency, self.max_pending = concurrency, max_pending
        self._model_version, self._on_batch = model_version, on_batch
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._held = 0  # requests taken into the batch being formed, or waiting for a free worker with it
        self.closing = False
        self._claims = threading.Lock()  # claim (worker threads) against cut_off (the loop)
        self._in_flight: dict[int, _Ask] = {}
        self._cut: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        """Requests waiting for a decision pass: queued, or held in the next batch (not those being decided)."""
        return (self._queue.qsize() if self._queue is not None else 0) + self._held

    @property
    def started(self) -> bool:
        return self._collector is not None and not self._collector.done()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._cut = asyncio.Event()
        threads = self.concurrency * (2 if self.streamed else 1)  # deciding, and as many writing answers
        self._pool = _DaemonThreads(threads, "so8t-batch")
        self._collector = asyncio.create_task(self._collect(), name="so8t-batcher")

    async def submit(self, items: list[dict], received_at: float | None = None,
                     on_settled: Callable[[dict], None] | None = None) -> list[dict]:
        """The results of these requests, in order; each one joins whatever batch is forming. ``on_settled`` sees
        each result as it is made, a cut-off request's too (it is decided and recorded, only not delivered)."""
        if self.closing or self._queue is None:
            raise Closing("the service is shutting down")
        if self.pending + len(items) > self.max_pending:
            raise Overloaded(f"{self.pending} requests are waiting (max_pending {self.max_pending})")
        loop = asyncio.get_running_loop()
        start = time.perf_counter() if received_at is None else received_at
        ask = _Ask()
        pending = [_Pending(item, start, loop.create_future(), ask, on_settled) for item in items]
        for entry in pending:
            self._queue.put_nowait(entry)
        self._in_flight[id(ask)] = ask
        try:
            return await self._results(ask, pending)
        finally:
            del self._in_flight[id(ask)]

    async def _results(self, ask: _Ask, pending: list[_Pending]) -> list[dict]:
        """Every result, or Closing once the shutdown cuts this request off (a claimed one is waited for a little:
        its records say it was answered)."""
        results = asyncio.gather(*(entry.future for entry in pending))
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            await asyncio.wait({results, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut.cancel()
        if not results.done() and ask.claimed and not ask.cut:
            await asyncio.wait({results}, timeout=CLAIMED_WAIT_S)
            if not results.done():
                with self._claims:  # its items recorded from now on say they were not delivered
                    ask.cut = True
                logger.error("shutdown: a request whose first results were recorded as answered was still being "
                             "decided %gs after the cut-off; it is answered 503 shutting_down", CLAIMED_WAIT_S)
        if results.done() and not ask.cut:
            return list(results.result())
        raise Closing(CUT_OFF)  # a cut request's records say "not delivered", even those settled in time

    def claim(self, entry: _Pending) -> bool:
        """On a worker thread, before a result's audit record is written: True if its client will get it, False if
        the shutdown cut the request off (its records must say so)."""
        with self._claims:
            if not entry.ask.cut:
                entry.ask.claimed = True
            return not entry.ask.cut

    def cut_off(self) -> int:
        """The shutdown's deadline: every request not yet claimed is answered Closing now (503 shutting_down) and
        whatever is still queued is never decided. Returns how many requests were cut off."""
        self.closing = True
        with self._claims:
            cut = [ask for ask in self._in_flight.values() if not ask.claimed and not ask.cut]
            for ask in cut:
                ask.cut = True
        if self._cut is not None:
            self._cut.set()
        return len(cut)

    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            self._held = 1
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    entry = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        entry = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if entry is None:
                    stop = True
                    break
                batch.append(entry)
                self._held = len(batch)
            await self._slots.acquire()
            while not stop and len(batch) < self.max_batch:  # what arrived while every worker was busy
                try:
                    entry = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if entry is None:
                    stop = True
                    break
                batch.append(entry)
                self._held = len(batch)
            self._held = 0
            batch = [entry for entry in batch if not entry.ask.cut]  # cut off while waiting: never decided
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._decide(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _decide(self, batch: list[_Pending]) -> None:
        """One batch on a worker thread. Streamed, each result reaches its request as soon as it is final, and a
        batch that has only answers left to write gives its decision slot to the next batch (up to
        ``concurrency`` batches writing answers at once): answers are written one at a time, and a decision
        must not wait for them."""
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        slot = {"held": True, "answering": False}

        def answered(index: int, result: dict) -> None:  # on the worker thread
            self._report(batch[index], result)  # here: a loop that stopped at the cut-off runs nothing more
            loop.call_soon_threadsafe(_settle, batch[index].future, result)

        def decided() -> None:  # on the worker thread
            loop.call_soon_threadsafe(self._leave_slot, slot)

        def claim(index: int) -> bool:  # on the worker thread
            return self.claim(batch[index])

        args = [[e.item for e in batch], [e.received_at for e in batch]]
        run = functools.partial(self._run_batch, claim=claim) if self.streamed else self._run_batch
        try:
            results = await loop.run_in_executor(self._pool, run, *args,
                                                  *((answered, decided) if self.streamed else ()))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")
        except Exception as exc:  # noqa: BLE001 - fail closed, never an error a client could ignore
            logger.exception("a decision pass failed")
            results = [self._unrecorded(exc) for _ in batch]
        finally:
            if slot["held"]:
                slot["held"] = False  # a decided() still on its way from the thread finds nothing to give
                self._slots.release()
            if slot["answering"]:
                slot["answering"] = False
                self._answering -= 1
                self._next_to_leave()
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - started)
        for entry, result in zip(batch, results):
            self._report(entry, result)
            _settle(entry.future, result)  # a client that went away: its decision is still recorded

    def _report(self, entry: _Pending, result: dict) -> None:
        """Hand a result to its request's ``on_settled`` once, on whichever thread has it first."""
        with self._claims:
            if entry.reported or entry.on_settled is None:
                return
            entry.reported = True
        try:
            entry.on_settled(result)
        except Exception:  # noqa: BLE001 - counting must not lose a decision
            logger.exception("a settled result's callback failed")

    def _leave_slot(self, slot: dict) -> None:
        """A batch has only answers left: its decision slot goes to the next batch, if a thread is free for it;
        otherwise it waits in line and leaves when an answering batch ends (``_next_to_leave``)."""
        if not slot["held"]:
            return
        if self._answering >= self.concurrency:
            self._to_leave.append(slot)
            return
        slot["held"], slot["answering"] = False, True
        self._answering += 1
        self._slots.release()

    def _next_to_leave(self) -> None:
        """An answering place came free: the batch that has waited longest for one takes it."""
        while self._to_leave and self._answering < self.concurrency:
            self._leave_slot(self._to_leave.popleft())  # one that has ended meanwhile holds nothing: skipped

    def _unrecorded(self, exc: Exception) -> dict:
        result = make_result("ESCALATE", "", None, None, None, "general", self._model_version(), [])
        return fail_closed(result, f"internal error: {type(exc).__name__}: {exc}; not recorded")

    def stop_taking(self) -> None:
        """Take no new requests; every one already waiting is still decided (unless ``cut_off`` comes first)."""
        if not self.closing and self._queue is not None and self.started:
            self._queue.put_nowait(None)  # after everything already queued
        self.closing = True

    async def drained(self, timeout: float | None) -> bool:
        """Wait until every request taken has its results (or ``timeout`` seconds pass); True when none is left."""
        loop = asyncio.get_running_loop()
        until = None if timeout is None else loop.time() + timeout
        while self._running or self.started:
            left = None if until is None else until - loop.time()
            if left is not None and left <= 0:
                return False
            waiting = {*self._running, *((self._collector,) if self.started else ())}
            await asyncio.wait(waiting, timeout=left)
        return True

    async def close(self, timeout: float | None = None) -> bool:
        """Take no new requests, decide every one already waiting, then stop the workers. With a ``timeout`` the
        wait ends then whatever still runs (call ``cut_off`` first): the workers are daemons, and a model pass
        that cannot be interrupted is left to the process's exit. True when everything finished."""
        self.stop_taking()
        if self._queue is None:
            return True
        finished = await self.drained(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=finished)
        if not finished:
            logger.error("shutdown: %d batch(es) still running after the stop budget; left to the process's exit "
                         "(their requests were answered 503 shutting_down)", len(self._running))
        return finished
