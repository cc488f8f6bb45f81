"""Recording a decided request: the one audit record every result gets, and for an ESCALATE the case's
spool, queue and audit steps in that order.

It exists so that the runtime's recording contract (an ALLOW or REFUSE whose record cannot be written
becomes ESCALATE; an ESCALATE is spooled before it is queued or audited, and is never opened twice) sits
in one place, apart from how requests are decided. ``DecisionRecording`` is a part of
``runtime.Agent`` and works on an Agent's attributes (its config, audit log, escalation desk and lock).
"""

from __future__ import annotations

import logging
import threading
import time

from ..data.tables import detect_lang
from .audit import AuditLog, AuditWriteError
from .config import RuntimeConfig
from .escalation_desk import EscalationDesk
from .fields import pseudonym
from .outcome import audit_record, escalation_case, fail_closed, join_errors, new_case_id
from .request_checks import CleanRequest
from .urgency import URGENT_FLAG, mark_urgent

logger = logging.getLogger("so8t.runtime")

SHUTDOWN_FLAG = "shutdown_cut_off"  # a record of a request whose client was answered 503 shutting_down instead
NOT_DELIVERED = ("not delivered: the service's shutdown deadline (service.shutdown_timeout_s) passed first and its "
                 "client was answered 503 shutting_down")


class DecisionRecording:
    """The Agent's recording steps: ``_finish`` writes a result's audit record (escalating an ALLOW or
    REFUSE whose record fails), ``_escalate`` spools, queues and audits an ESCALATE."""

    config: RuntimeConfig
    test_mode: bool
    audit: AuditLog
    desk: EscalationDesk
    audit_failures: int
    last_audit_failure: tuple[float, str] | None  # (time.monotonic(), why) while the latest append failed
    _mac_key: bytes | None  # as hmac takes it (runtime.Agent converts the configured key once)
    _lock: threading.Lock
    _delivery: threading.local

    def _record(self, result: dict, asked: CleanRequest) -> dict:
        return audit_record(result, asked.user_request, asked.user_id, self.test_mode,
                            self.config.logging.max_field_chars, asked.context)

    @staticmethod
    def _stamp(result: dict, start: float) -> None:
        result["processing_time_ms"] = round((time.perf_counter() - start) * 1000, 3)

    def _audit_failed(self, result: dict, exc: Exception) -> None:
        with self._lock:
            self.audit_failures += 1
            self.last_audit_failure = (time.monotonic(), str(exc))  # /readyz reports it
        logger.error("audit record of %s not written: %s", result["request_id"], exc)
        result["flags"] = list(dict.fromkeys([*result["flags"], "audit_write_failed"]))

    def _claimed(self, result: dict) -> None:
        """Before a record is written: a request a server's shutdown cut off keeps its decision, but its record
        says it was not delivered (flag and error, the answer dropped as after a failed answer), so no record
        claims an answer that no client received."""
        claim = getattr(self._delivery, "claim", None)
        if claim is None or claim():
            return
        result["flags"] = list(dict.fromkeys([*result["flags"], SHUTDOWN_FLAG]))
        result["error"] = join_errors(result["error"], NOT_DELIVERED)  # the fail-closed reason stays first
        if result["decision"] == "ALLOW":
            result["task_response"] = ""

    def _finish(self, result: dict, asked: CleanRequest, start: float) -> dict:
        """Write the one audit record; an ALLOW or REFUSE whose record fails becomes ESCALATE."""
        request = asked.user_request
        self._claimed(result)
        if result["decision"] != "ESCALATE":
            self._stamp(result, start)
            try:
                self.audit.append(self._record(result, asked))
                self.last_audit_failure = None
                return result
            except AuditWriteError as exc:
                self._audit_failed(result, exc)
                fail_closed(result, f"audit write failed: {exc}", detect_lang(request or ""))
                if URGENT_FLAG in result["flags"]:  # the emergency line survives the rewritten rationale
                    mark_urgent(result, request)
        return self._escalate(result, asked, start)

    def _escalate(self, result: dict, asked: CleanRequest, start: float) -> dict:
        """Spool, queue (bounded wait), then audit; the desk retries whatever did not happen."""
        request, user_id = asked.user_request, asked.user_id
        result["escalation_id"] = new_case_id()
        limit = self.config.logging.max_field_chars
        self._stamp(result, start)  # before the case exists: a failure here is decided again, never a second case
        stored_uid = pseudonym(user_id, self._mac_key) if self.config.logging.mask_personal_data else user_id
        case = escalation_case(result, request, stored_uid, self.test_mode, limit, asked.client, asked.context)
        ticket = self.desk.open(case, self.audit.prepare(self._record(result, asked)))
        result["escalation_status"] = self.desk.try_queue(ticket)
        if not ticket.queued:
            result["flags"] = [*result["flags"], f"escalation_{result['escalation_status']}"]
            result["error"] = join_errors(result["error"], ticket.error)
        try:  # spooled: from here nothing may raise, or _guarded would open a second case for this request
            self._stamp(result, start)  # again, now counting the queue's wait
            self.audit.append(self._record(result, asked))
            audited, self.last_audit_failure = True, None
        except Exception as exc:  # noqa: BLE001 - an AuditWriteError, or a bug: the spool's replay writes it
            self._audit_failed(result, exc)
            result["error"] = join_errors(result["error"], f"audit write failed: {exc}")
            audited = False
        try:  # recorded: whatever goes wrong from here must not decide the request a second time (_guarded)
            self.desk.finish(ticket, audited)
        except Exception:  # noqa: BLE001 - the spool entry stays; the desk's replay finishes it
            logger.exception("escalation %s: recorded, but finishing its case failed", result["escalation_id"])
        return result
