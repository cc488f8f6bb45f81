"""Getting every ESCALATE to a person: spool, queue, audit, notify, and retry whatever failed.

For each escalation the runtime calls, in this order:
1. ``open(case, record)``: the case and its audit record go to the durable spool (``spool``);
2. ``try_queue(ticket)``: the case goes to the queue within ``queue_timeout_s``; a locked or broken
   queue leaves it spooled (the result says ``escalation_status: spooled``);
3. the runtime writes the audit record;
4. ``finish(ticket, audited)``: a case that is queued and audited is notified, and leaves the spool once
   the notice's outcome is recorded on it (held meanwhile: a process killed before that leaves an orphan
   whose replay notifies it again); anything else stays in the spool for ``replay``.
``replay`` (run by a background thread every ``retry_interval_s``, at start, and on demand) finishes
the orphans, ``REPLAY_BATCH`` at a time: the audit record if the log lacks it, the queue row if the
queue lacks it. The same thread marks overdue cases (past ``escalation_timeout``) and sends a reminder.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

from .audit import AuditLog
from .escalation import CaseStore, QueueError
from .notify import Notifier
from .outcome import parse_time
from .spool import CaseSpool, SpoolEntry

logger = logging.getLogger("so8t.escalation")

# Spool entries a replay holds (one open descriptor each) at once: a backlog of any size drains under a small
# open-file limit, and each batch's audit-log lookup stays one read.
REPLAY_BATCH = 32
NOTICE_CLOSE_GRACE_S = 1.0  # past notify_timeout_s, for a notice's outcome to be recorded before the queue closes
# Spool entries kept held (one descriptor each) until their notice is recorded; past this many in flight (a hung
# channel under a burst) an entry goes at once, as before, rather than take the process's last descriptors.
MAX_HELD_NOTICES = 128


@dataclass
class Ticket:
    case: dict
    entry: SpoolEntry | None
    queued: bool = False
    error: str | None = None

    @property
    def status(self) -> str:
        """queued; spooled (kept durably, retried); or unqueued (neither worked: the error says why)."""
        return "queued" if self.queued else "spooled" if self.entry is not None else "unqueued"


class EscalationDesk:
    def __init__(self, store_factory: Callable[[], CaseStore], spool: CaseSpool, audit: AuditLog,
                 notifier: Notifier, notify: bool, retry_interval_s: float = 5.0, background: bool = True) -> None:
        """``background=False`` never starts the thread: whoever holds the desk calls ``replay`` and
        ``sweep_overdue`` itself (a tool that finishes the spool once, or a test that must not race the thread);
        it may be switched off through the attribute before the first escalation."""
        self._store_factory, self._store = store_factory, None
        self.background = background
        self.spool, self.audit, self.notifier, self.notify = spool, audit, notifier, notify
        self.retry_interval_s = retry_interval_s
        self.notifications: list[concurrent.futures.Future] = []
        self._lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._held_notices = 0
        self._unreminded: set[str] = set()  # marked overdue, but the reminder could not be sent yet

    @property
    def store(self) -> CaseStore:
        """The queue, opened on first use (a queue that is locked at start is retried later)."""
        with self._lock:
            if self._store is None:
                self._store = self._store_factory()
                self.notifier.queue = self._store
            return self._store

    # ----- one escalation -----------------------------------------------------------------------
    def open(self, case: dict, record: dict) -> Ticket:
        try:
            return Ticket(case, self.spool.put(case, record))
        except OSError as exc:
            logger.error("escalation %s: could not be spooled (%s)", case["case_id"], exc)
            return Ticket(case, None, error=f"escalation spool unavailable: {type(exc).__name__}: {exc}")

    def try_queue(self, ticket: Ticket) -> str:
        try:
            self.store.add(ticket.case)
            ticket.queued = True
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the case stays spooled and the decision stands
            reason = f"escalation queue unavailable: {exc}" if isinstance(exc, (QueueError, OSError)) else \
                f"escalation queue unavailable: {type(exc).__name__}: {exc}"
            ticket.error = f"{ticket.error}; {reason}" if ticket.error else reason
            logger.error("escalation %s: %s", ticket.case["case_id"], reason)
        return ticket.status

    def finish(self, ticket: Ticket, audited: bool) -> None:
        if ticket.entry is not None and audited and ticket.queued:
            self._notify_then_done(ticket.entry, ticket.case)
            return
        if ticket.queued:
            try:  # a notifier that fails (or was shut down) must not keep the spool entry locked
                self._notify(ticket.case)
            except Exception:  # noqa: BLE001
                logger.exception("escalation %s: its route could not be notified", ticket.case["case_id"])
        if ticket.entry is None:
            return
        try:
            if audited:
                ticket.entry.update(audited=True)
            if ticket.queued:
                ticket.entry.update(queued=True)
        except OSError as exc:  # the entry stays as it is; replay checks the log and the queue itself
            logger.error("escalation %s: spool entry not updated (%s)", ticket.case["case_id"], exc)
        ticket.entry.release()
        self.start()
        self._wake.set()

    def _notify(self, case: dict, reminder: bool = False) -> concurrent.futures.Future | None:
        if not self.notify or case.get("test"):
            return None
        future = self.notifier.notify_async(case, reminder)
        with self._lock:
            self.notifications = [f for f in self.notifications if not f.done()] + [future]
        return future

    def _notify_then_done(self, entry: SpoolEntry, case: dict) -> None:
        """Notify a queued and audited case; its spool entry goes once the outcome is recorded on the case. Until
        then the entry stays held: a process killed meanwhile leaves an orphan, and the replay notifies the case
        again (at least once) unless a notice is recorded or a person resolved it."""
        try:
            future = self._notify(case)
        except Exception:  # noqa: BLE001 - a notifier that fails (or was shut down) must not keep the entry locked
            logger.exception("escalation %s: its route could not be notified", case["case_id"])
            future = None
        if isinstance(future, concurrent.futures.Future):
            with self._lock:
                held = self._held_notices < MAX_HELD_NOTICES
                self._held_notices += held
            if held:
                kept = entry.hand_over()
                future.add_done_callback(lambda done: self._notice_settled(kept, done))
                return
            logger.warning("escalation %s: %d notices in flight; its spool entry goes before its notice is "
                           "recorded (a crash now loses the notice; the overdue reminder still comes)",
                           case["case_id"], MAX_HELD_NOTICES)
        try:
            entry.done()
        except OSError as exc:
            logger.error("escalation %s: spool entry not removed (%s)", case["case_id"], exc)
            entry.release()

    def _notice_settled(self, entry: SpoolEntry, future: concurrent.futures.Future) -> None:
        """The entry goes once its notice's outcome is recorded (or the sending crashed, which is logged: not
        retried for ever); an outcome the queue did not take leaves it for the replay, which notifies again."""
        settled = not future.cancelled() and (future.exception() is not None or getattr(future, "recorded", False))
        try:
            if settled:
                entry.done()
                return
        except OSError as exc:
            logger.error("escalation %s: spool entry not removed (%s)", entry.case_id, exc)
        finally:  # counted down once the entry is gone or let go: close() waits on the count
            with self._lock:
                self._held_notices -= 1
        entry.release()
        self.start()

    # ----- catching up ------------------------------------------------------------------------------
    def replay(self) -> dict:
        """Finish every orphaned spool entry that can be finished now: {"finished": [...], "failed": [...]}.
        Entries are taken ``REPLAY_BATCH`` at a time, each batch locked, finished and let go before the next: a
        backlog larger than the descriptors the process may open is still drained in one pass. Every entry it
        picked is let go again whatever happens, so a failure here never strands one."""
        finished: list[str] = []
        failed: list[str] = []
        with self._replay_lock:
            orphans = self.spool.orphans()  # one listing per pass: an entry let go after a failure waits for the next
            try:
                while self._replay_batch(orphans, finished, failed):
                    pass
            finally:
                orphans.close()
        if finished:
            logger.warning("replayed %d spooled escalation(s): %s", len(finished), ", ".join(finished))
        if failed:
            logger.error("spooled escalation(s) not finished, retried later: %s", "; ".join(failed))
        return {"finished": finished, "failed": failed}

    def _replay_batch(self, orphans: Iterator[SpoolEntry], finished: list[str], failed: list[str]) -> bool:
        """Lock up to ``REPLAY_BATCH`` orphans, finish them and let them go; False when the pass is over (the
        listing is done, or the spool or the audit log could not be read: nothing written twice, retried later)."""
        entries: list[SpoolEntry] = []
        try:
            try:
                entries.extend(islice(orphans, REPLAY_BATCH))  # inside: whatever was picked before a failure is let go
                # looked up while the batch is locked: no other replica can audit one of them meanwhile
                unaudited = [e.data["record"] for e in entries if not e.data.get("audited")]
                present = self.audit.find_requests({r.get("request_id") for r in unaudited} - {None},
                                                   since=_oldest_decision(unaudited))
            except Exception as exc:  # noqa: BLE001
                failed.append(f"spool or audit log unreadable: {type(exc).__name__}: {exc}")
                return False
            for entry in entries:
                case_id = entry.case_id
                try:
                    self._finish_orphan(entry, present)
                    finished.append(case_id)
                except Exception as exc:  # noqa: BLE001 - the entry stays for the next pass
                    failed.append(f"{case_id}: {type(exc).__name__}: {exc}")
        finally:
            for entry in entries:
                entry.release()  # a no-op for the finished ones
        return len(entries) == REPLAY_BATCH

    def _finish_orphan(self, entry: SpoolEntry, present: set) -> None:
        """Queue, audit and notify one orphan, each only if it has not happened yet, then delete it. Whether the
        case is owed a notification is kept in the entry with ``queued``: the pass that queues it may fail at the
        audit record, and the pass that finishes the entry sends it, unless a reviewer resolved the case meanwhile
        (a "new escalation" notice, with its text, for a case already settled)."""
        case = entry.data["case"]
        notify = owed = entry.data.get("notify") is True
        if not entry.data.get("queued"):
            # a case already in the queue may have been added by a process that died before it notified
            notify = self.store.add(case) or self._never_notified(case["case_id"])
            entry.update(queued=True, notify=notify)
            owed = False  # read just now
        if not entry.data.get("audited") and entry.data["record"].get("request_id") not in present:
            record = dict(entry.data["record"])
            record["flags"] = list(record.get("flags") or []) + ["recovered_from_spool"]
            self.audit.append(record)
            entry.update(audited=True)
        if owed:  # read before the entry goes: a queue that does not answer keeps it for the next pass
            notify = self._still_owed(case["case_id"])
        if notify:
            self._notify_then_done(entry, case)
        else:
            entry.done()

    def _still_owed(self, case_id: str) -> bool:
        """Unresolved, and no notice recorded (one recorded by a process that died before letting go of the entry
        is not sent twice)."""
        try:
            stored = self.store.get(case_id)
        except KeyError:  # gone from the queue (restored from an older copy): the notice stands, as before
            return True
        return stored["status"] != "resolved" and not any(
            isinstance(n, dict) and not n.get("reminder") for n in stored["notifications"])

    def _never_notified(self, case_id: str) -> bool:
        stored = self.store.get(case_id)
        return stored["status"] == "open" and not stored["notifications"]

    def sweep_overdue(self, now: dt.datetime | None = None) -> list[str]:
        """Mark cases past escalation_timeout as overdue, log them, and remind the route: each case on its own, so
        a queue that fails on one read still lets the others be reminded, and that one is tried again next time."""
        overdue = self.store.mark_overdue(now)
        with self._lock:  # a reminder an earlier sweep could not send is due too (its case is already marked)
            due, self._unreminded = sorted({*self._unreminded, *overdue}), set()
        for case_id in due:
            try:
                case = self.store.get(case_id)
                if case["status"] == "resolved":  # decided since it was marked: nobody needs a reminder
                    continue
                logger.warning("escalation %s (%s) is overdue: no decision since %s", case_id, case["category"],
                               case["created_at"])
                self._notify(case, reminder=True)
            except KeyError:  # gone from the queue (restored from an older copy): nothing to remind
                logger.error("escalation %s: overdue, but no longer in the queue; no reminder sent", case_id)
            except Exception as exc:  # noqa: BLE001 - one case's failure must not cost the others their reminder
                logger.error("escalation %s: overdue reminder not sent (%s: %s); tried again at the next sweep",
                             case_id, type(exc).__name__, exc)
                with self._lock:
                    self._unreminded.add(case_id)
        return overdue

    def maintain(self) -> None:
        """One pass of the background thread: the replay, then the overdue sweep, each whatever the other did."""
        for step in (self.replay, self.sweep_overdue):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the background thread must keep running
                logger.error("escalation maintenance (%s) failed: %r", step.__name__, exc)

    def maintain_soon(self) -> None:
        """Wake the background thread now (it must be started)."""
        self._wake.set()

    def start(self) -> None:
        """Start the background thread once (daemon: it never keeps a process alive); not with ``background`` off."""
        with self._lock:
            if self.background and self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._loop, name="so8t-escalation-desk", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.retry_interval_s)
            self._wake.clear()
            if not self._stopped.is_set():
                self.maintain()

    def waiting_in_spool(self) -> int:
        """Cases in the spool not yet in the queue: the entries held until their notice is recorded are queued."""
        with self._lock:
            held = self._held_notices
        return max(0, self.spool.count() - held)

    def close(self, notice_wait_s: float | None = None) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.retry_interval_s + 5)
        # notices in flight are recorded while the queue is open, and their held entries go: the notifier's
        # workers end with the process, and an entry left held would be sent again at the next start
        wait_s = self.notifier.config.notify_timeout_s + NOTICE_CLOSE_GRACE_S
        wait_s = wait_s if notice_wait_s is None else min(wait_s, notice_wait_s)  # a server's stop budget
        deadline = time.monotonic() + wait_s
        concurrent.futures.wait([f for f in self.notifications if isinstance(f, concurrent.futures.Future)],
                                timeout=wait_s)
        while self._held_notices and time.monotonic() < deadline:  # removed by the futures' callbacks
            time.sleep(0.01)
        if self._held_notices:
            logger.warning("%d notice(s) still being sent after %gs at close: their spool entries stay, and the "
                           "next start sends them again", self._held_notices, wait_s)
        if self._store is not None and hasattr(self._store, "close"):
            self._store.close()  # a server queue's pooled connections


def _oldest_decision(records: list[dict]) -> float | None:
    """The POSIX time of the oldest of these audit records' ``timestamp``s: no log file last written before it
    can hold any of them. None (read every file) when one has no readable timestamp."""
    times = [parse_time(record.get("timestamp")) for record in records]
    if None in times:
        return None
    return min((t.timestamp() for t in times), default=None)
