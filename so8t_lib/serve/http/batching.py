"""Dynamic micro-batching: concurrent requests share one decision pass.

Each request waits on an asyncio queue. A collector takes the first one, then whatever arrives within
``max_wait_s`` (or is already waiting), up to ``max_batch``, and hands the batch to
``Agent.run_batch`` on a worker thread, with every request's own arrival time (``received_at``), so
``processing_time_ms`` still counts its wait and every request keeps its own audit record. While all
``concurrency`` workers are busy the next batch keeps filling, so under load batches grow by
themselves and at low load a request waits at most ``max_wait_s``.

``run_batch`` never raises by contract; if it did, every request of that batch gets a fail-closed
ESCALATE that says it was not recorded, never an error a client could read as "not flagged".
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..outcome import fail_closed, make_result

logger = logging.getLogger("so8t.service")


class Overloaded(RuntimeError):
    """More requests are waiting than ``max_pending``: the caller should answer 503 with Retry-After."""


class Closing(RuntimeError):
    """The service is shutting down and takes no new requests."""


@dataclass
class _Pending:
    item: dict
    received_at: float
    future: asyncio.Future


def _settle(future: asyncio.Future, result: dict) -> None:
    if not future.done():  # settled already, or its client went away
        future.set_result(result)


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list, list[float]], list[dict]], *, max_batch: int = 32,
                 max_wait_s: float = 0.005, concurrency: int = 2, max_pending: int = 2048,
                 model_version: Callable[[], str] = lambda: "unknown",
                 on_batch: Callable[[int, float], None] | None = None, streamed: bool = False) -> None:
        self._run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.streamed = streamed  # run_batch takes on_result and on_decided (Agent.run_batch)
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
        threads = self.concurrency * (2 if self.streamed else 1)  # deciding, and as many writing answers
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="so8t-batch")
        self._collector = asyncio.create_task(self._collect(), name="so8t-batcher")

    async def submit(self, items: list[dict], received_at: float | None = None) -> list[dict]:
        """The results of these requests, in order; each one joins whatever batch is forming."""
        if self.closing or self._queue is None:
            raise Closing("the service is shutting down")
        if self.pending + len(items) > self.max_pending:
            raise Overloaded(f"{self.pending} requests are waiting (max_pending {self.max_pending})")
        loop = asyncio.get_running_loop()
        start = time.perf_counter() if received_at is None else received_at
        pending = [_Pending(item, start, loop.create_future()) for item in items]
        for entry in pending:
            self._queue.put_nowait(entry)
        return list(await asyncio.gather(*(entry.future for entry in pending)))

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
            loop.call_soon_threadsafe(_settle, batch[index].future, result)

        def decided() -> None:  # on the worker thread
            loop.call_soon_threadsafe(self._leave_slot, slot)

        args = [[e.item for e in batch], [e.received_at for e in batch]]
        try:
            results = await loop.run_in_executor(self._pool, self._run_batch, *args,
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
            _settle(entry.future, result)  # a client that went away: its decision is still recorded

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

    async def close(self) -> None:
        """Take no new requests, decide every one already waiting, then stop the workers."""
        self.closing = True
        if self._queue is None:
            return
        if self._collector is not None and not self._collector.done():
            await self._queue.put(None)  # after everything already queued
            await self._collector
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
