"""What the HTTP routes share: one Agent behind the micro-batcher, the metrics, the emergency switch,
the keys and the background chores (flag file, queue gauges, dashboard samples). Kept apart from the
routes so the app module reads as the API."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..config import EXIT_MARGIN_S, REPLICA_ENV, SHUTDOWN_MARGIN_S, ServiceConfig, placed
from ..escalation import UNRESOLVED
from ..model_worker import Stuck
from ..runtime import Agent
from .auth import ApiKeys, RateLimiter
from .batching import MicroBatcher
from .dashboard import DashboardData
from .emergency import API, EMERGENCY, EmergencySwitch, api_state_file
from .metrics import ServiceMetrics

logger = logging.getLogger("so8t.service")

# how long /readyz reports a failed audit write: not ready stops a balancer's traffic, and only a request shows
# that writing works again, so the replica is offered requests again after this
AUDIT_FAILURE_HOLD_S = 30
CLOSE_MARGIN_S = 0.5  # of the stop budget, kept for closing the queue and the model after the notices' wait


def audit_target_problem(path: Path) -> str | None:
    """Why the audit log cannot be appended to, as far as can be told without writing a record: something other
    than a file where it should be, its folder gone or not a folder, no permission (open for appending, which
    writes nothing: ``os.access`` says yes to root whatever the file is)."""
    try:  # no O_CREAT: a log a rotation just renamed away is the writer's to create, with its own mode
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang the probe
    except (FileNotFoundError, NotADirectoryError):  # not there, or its folder is not one: see the folder
        fd = None
    except IsADirectoryError:
        return f"{path} is not a file (the audit log must be one)"
    except OSError as exc:
        return f"{path} cannot be opened for appending: {exc.strerror or exc}"
    if fd is not None:
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return None if regular else f"{path} is not a file (the audit log must be one)"
    if not path.parent.is_dir():
        return f"the audit log's folder {path.parent} is missing or not a folder"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"{path.parent} is not writable"
    return None


class Service:
    def __init__(self, agent: Agent, keys: ApiKeys, config: ServiceConfig | None = None,
                 log_dir: str | Path | None = None, own_agent: bool = True) -> None:
        self.agent, self.keys, self.own_agent = agent, keys, own_agent
        self.config = config or agent.config.service
        self.metrics = ServiceMetrics()
        self.dashboard = DashboardData(self.metrics)
        self.limiter = RateLimiter(self.config.rate_limit_per_minute, self.config.rate_limit_burst)
        flag_file = placed(self.config.emergency_flag_file, log_dir)
        self.switch = EmergencySwitch(agent, flag_file, self._mode_changed,
                                      api_state_file(flag_file, os.environ.get(REPLICA_ENV) or None))
        self.batcher = MicroBatcher(agent.run_batch, max_batch=self.config.max_batch,
                                    max_wait_s=self.config.max_wait_ms / 1000.0,
                                    concurrency=self.config.concurrent_batches, max_pending=self.config.max_pending,
                                    model_version=lambda: agent.model_version, on_batch=self._batch_done,
                                    streamed=True)
        self.queue_counts = {"open": None, "overdue": None, "spooled": None, "notify_failed": None}
        self.queue_error: str | None = None
        self._tasks: list[asyncio.Task] = []
        self.draining = False
        self._cut_off_at: float | None = None  # loop time of the shutdown's deadline, once it began
        self._cut_timer: asyncio.TimerHandle | None = None
        self._mode_changed(self.switch.mode)

    # ----- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()
        self.agent.desk.start()  # replays spooled cases, marks overdue ones, reminds their routes
        self.switch.poll_file()
        self.dashboard.sample()
        self._tasks = [asyncio.create_task(self._every(self.config.flag_poll_s, self.switch.poll_file, True)),
                       asyncio.create_task(self._every(self.config.queue_poll_s, self.count_queue, True)),
                       asyncio.create_task(self._every(2.0, self.dashboard.sample, False))]
        await asyncio.to_thread(self.count_queue)

    def begin_shutdown(self) -> None:
        """SIGTERM: take no new requests; those in flight have ``shutdown_timeout_s`` to be answered, then
        ``cut_off``. Called by the server as its shutdown begins (and by ``stop`` if it was not)."""
        if self._cut_off_at is not None:
            return
        self.draining = True
        self.batcher.stop_taking()
        loop = asyncio.get_running_loop()
        self._cut_off_at = loop.time() + self.config.shutdown_timeout_s
        self._cut_timer = loop.call_at(self._cut_off_at, self.cut_off)

    def cut_off(self) -> None:
        """The grace is over: every request still in flight is answered 503 shutting_down now, and no task answer
        is written any more (their records say they were not delivered: ``runtime_records.SHUTDOWN_FLAG``)."""
        if self._cut_timer is not None:
            self._cut_timer.cancel()
        cut = self.batcher.cut_off()
        if self.own_agent:
            self.agent.stop_answering()
        if cut:
            logger.warning("shutdown: %d request(s) still in flight after shutdown_timeout_s (%gs) answered 503 "
                           "shutting_down", cut, self.config.shutdown_timeout_s)

    async def stop(self) -> None:
        """Stop taking requests, answer those in flight within ``shutdown_timeout_s`` (503 shutting_down for what
        is left then), then close the agent: every decided request's record is on disk (each append is fsynced),
        and spooled cases get a last replay, all within ``config.stop_budget_s`` of the shutdown's start."""
        self.begin_shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        cut_at = self._cut_off_at
        if not await self.batcher.drained(max(0.0, cut_at - loop.time())):
            self.cut_off()
        await self.batcher.close(max(0.0, cut_at + SHUTDOWN_MARGIN_S / 2 - loop.time()))
        if self._cut_timer is not None:
            self._cut_timer.cancel()  # everything ended before the deadline
        left = cut_at + SHUTDOWN_MARGIN_S - EXIT_MARGIN_S - loop.time()
        if not await _in_daemon(lambda: self._last_chores(max(0.0, left)), max(0.0, left)):
            logger.error("shutdown: the spool's replay or closing the agent ran past the stop budget (%gs); spooled "
                         "cases are replayed at the next start", self.config.stop_budget_s)
        logger.warning("shutdown complete: the audit log %s is closed", self.agent.audit.path)

    def _last_chores(self, budget_s: float | None = None) -> None:
        started = time.monotonic()
        if self.agent.desk.spool.count():
            outcome = self.agent.desk.replay()
            logger.warning("shutdown: spooled escalations replayed: %s", outcome)
        if self.own_agent:  # the notices in flight get what is left of the stop budget
            left = None if budget_s is None else max(0.0, budget_s - (time.monotonic() - started) - CLOSE_MARGIN_S)
            self.agent.close(notice_wait_s=left)

    async def _every(self, seconds: float, chore, in_thread: bool) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                if in_thread:
                    await asyncio.to_thread(chore)
                else:
                    chore()
            except Exception:  # noqa: BLE001 - a chore must not stop the service
                logger.exception("background chore %s failed", getattr(chore, "__name__", chore))

    # ----- deciding -------------------------------------------------------------------------------
    async def decide(self, items: list[dict], received_at: float | None, endpoint: str) -> list[dict]:
        """The items' decisions. Each is counted when it is made, even if the request that asked was cancelled or
        cut off meanwhile (a shutdown's grace period ran out): each is in the audit log, so in the metrics."""
        deciding = asyncio.ensure_future(self.batcher.submit(items, received_at,
                                                             lambda result: self._count(result, endpoint)))
        deciding.add_done_callback(lambda _: self.metrics.pending.set(self.batcher.pending))
        return await asyncio.shield(deciding)

    def _count(self, result: dict, endpoint: str) -> None:
        for failed, reason in self.metrics.record([result], endpoint):
            self.dashboard.note_fail_closed(failed, reason, endpoint)

    def _batch_done(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.pending.set(self.batcher.pending)

    def _mode_changed(self, mode: str) -> None:
        self.metrics.set_model(self.agent.model_version, mode == EMERGENCY)

    # ----- state -------------------------------------------------------------------------------------
    def count_queue(self) -> None:
        """Queue depth and overdue cases for the gauges (a locked queue keeps the last numbers)."""
        try:
            store = self.agent.queue
            cases = store.list(UNRESOLVED)
            self.queue_counts.update(open=len(cases), overdue=sum(1 for c in cases if c["overdue"]),
                                     notify_failed=sum(1 for c in cases if c["status"] == "notify_failed"))
            self.queue_error = None
        except Exception as exc:  # noqa: BLE001
            self.queue_error = f"{type(exc).__name__}: {exc}"
            logger.error("escalation queue not counted: %s", self.queue_error)
        self.queue_counts["spooled"] = self.agent.desk.waiting_in_spool()
        for gauge, key in ((self.metrics.cases_open, "open"), (self.metrics.cases_overdue, "overdue"),
                           (self.metrics.spooled, "spooled"), (self.metrics.cases_unnotified, "notify_failed")):
            if self.queue_counts.get(key) is not None:
                gauge.set(self.queue_counts[key])

    def readiness(self) -> dict[str, str]:
        """Each check's finding; the service is ready when none starts with 'not ready'."""
        agent = self.agent
        checks = {}
        stuck = _model_stuck(agent)
        if agent.decider is not None and stuck is not None:
            since = dt.datetime.fromtimestamp(stuck.since, dt.UTC).isoformat(timespec="seconds")
            ran = f"a call has run {stuck.over_s:.0f}s past its limit of {stuck.limit:g}s"
            if self.switch.mode == EMERGENCY:  # nothing asks the model: the replica escalates at once, as asked
                checks["model"] = (f"not consulted in emergency mode; its thread is stuck since {since} ({ran}): "
                                   "restart the service before leaving emergency mode")
            else:
                checks["model"] = (f"not ready: the model's thread is stuck since {since} ({ran}; every decision "
                                   "fails closed behind it); restart the service")
        elif agent.decider is not None:
            checks["model"] = f"loaded: {agent.model_version}"
        elif agent.config.mode == EMERGENCY and not agent.load_error:
            checks["model"] = "none needed: emergency mode"
        else:
            checks["model"] = f"not ready: {agent.load_error or 'no model loaded'}"
        checks["router"] = (f"learned: {agent.config.escalation.router}" if agent.router is not None
                            else f"keyword table only: {agent.router_error or 'no escalation.router configured'}")
        audit, failure = agent.audit.path, agent.last_audit_failure
        if agent.audit.open_error:
            checks["audit_log"] = f"not ready: {agent.audit.open_error}"
        elif problem := audit_target_problem(audit):
            checks["audit_log"] = f"not ready: {problem}"
        elif failure is not None and (ago := time.monotonic() - failure[0]) < AUDIT_FAILURE_HOLD_S:
            checks["audit_log"] = (f"not ready: the last audit write failed {ago:.0f}s ago ({failure[1]}); every "
                                   f"decision fails closed until one is written (ready again {AUDIT_FAILURE_HOLD_S}s "
                                   "after a failure, to let a request try)")
        else:
            checks["audit_log"] = f"writable: {audit}"
        if self.draining or not self.batcher.started:
            checks["batcher"] = "not ready: shutting down" if self.draining else "not ready: not started"
        else:
            checks["batcher"] = f"running: max_batch {self.config.max_batch}, max_wait_ms {self.config.max_wait_ms:g}"
        checks["mode"] = self.switch.mode
        ready = not any(v.startswith("not ready") for v in checks.values())
        self.metrics.ready.set(1 if ready else 0)
        return checks

    def preflight(self) -> dict[str, str]:
        """What a start would find, without serving (``so8t serve --check``): the readiness checks but the
        batcher's, the escalation queue reached once, and whether a flag file would hold emergency mode (read,
        not acted on: acting on it writes an audit record) or the API's state file holds it."""
        checks = {name: finding for name, finding in self.readiness().items() if name != "batcher"}
        self.count_queue()
        counts = self.queue_counts
        checks["escalation_queue"] = (f"not ready: {self.queue_error}" if self.queue_error else
                                      f"reachable: {counts['open']} unresolved, {counts['overdue']} overdue, "
                                      f"{counts['spooled']} spooled")
        if self.switch.flag_file.is_file():
            checks["mode"] = f"not ready: the flag file {self.switch.flag_file} holds emergency mode (all escalated)"
        elif API in self.switch.sources:
            checks["mode"] = (f"not ready: {self.switch.state_file} holds emergency mode, switched on through the API "
                              "(all escalated; POST /v1/admin/emergency enabled: false releases it)")
        return checks

    def dashboard_summary(self) -> dict:
        checks = self.readiness()
        return self.dashboard.summary({
            "model_version": self.agent.model_version, "mode": self.switch.mode,
            "ready": not any(v.startswith("not ready") for v in checks.values()),
            "escalations": dict(self.queue_counts), "pending": self.batcher.pending})


def _model_stuck(agent: Agent) -> Stuck | None:
    """Whether the call holding the model's thread has overrun its limit for good (``Agent.model_stuck``); a
    stand-in agent in a test may have no model thread."""
    stuck = getattr(agent, "model_stuck", None)
    return stuck() if callable(stuck) else None


async def _in_daemon(chore: Callable[[], None], timeout: float) -> bool:
    """Run ``chore`` on a daemon thread and wait for it up to ``timeout``: a replay stuck on a locked queue must not
    hold the process past its stop budget (the default executor's threads are waited for at exit)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            chore()
        except Exception:  # noqa: BLE001 - logged; the shutdown goes on
            logger.exception("shutdown: %s failed", getattr(chore, "__name__", chore))
        finally:
            try:
                loop.call_soon_threadsafe(finished)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    threading.Thread(target=run, name="so8t-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        return False
    return True
