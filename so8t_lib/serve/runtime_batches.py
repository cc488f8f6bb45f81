"""Running a batch of requests through the gate: each item checked, the valid ones decided together in passes
of ``service.max_batch`` (``deciding.decide_all``), one result each delivered in order, the ALLOWs' answers
written last when a server asks for results as they are final, and a fail-closed result for whatever goes wrong.

It exists so that the batch's bookkeeping (which item is where, what is deferred, that no item is lost to an
exception) sits apart from how one request is decided (``runtime_decisions``) and recorded
(``runtime_records``). ``BatchRunning`` is a part of ``runtime.Agent`` and works on an Agent's attributes.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable

from .backends import Decider
from .config import RuntimeConfig
from .deciding import decide_all
from .fields import bounded
from .model_worker import ModelWorker
from .outcome import Delivery, fail_closed, make_result
from .request_checks import CleanRequest, InvalidRequest, Unparsed, checked_client, validate_request

logger = logging.getLogger("so8t.runtime")


def _check_start(index: int, start: object) -> None:
    """A caller's ``received_at`` value must be a finite ``time.perf_counter()`` reading: a datetime or a NaN would
    only fail once a request is decided (its processing time), after its case is opened. Said before anything is."""
    try:
        ok = isinstance(start, numbers.Real) and not isinstance(start, bool) and math.isfinite(float(start))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"received_at[{index}] must be a finite number (a time.perf_counter() reading), "
                         f"got {type(start).__name__} {bounded(repr(start) if isinstance(start, str) else start, 60)}")


class BatchRunning:
    """The Agent's public entry points ``run_batch`` and ``run_agent``, and the steps that keep a batch whole:
    ``_check`` (an item's validation), ``_decide_all`` (the model's passes), ``_guarded`` (no step may raise)."""

    config: RuntimeConfig
    decider: Decider | None
    load_error: str | None
    model_version: str
    audit_failures: int
    _model: ModelWorker
    _lock: threading.Lock
    _delivery: threading.local  # .claim: the request being recorded on this thread (``runtime_records``)

    def _decide_all(self, cleans: list[CleanRequest]) -> list:
        """One entry per request: a row of probabilities, None (emergency mode) or a failure reason
        (``deciding.decide_all``: a batch that fails is decided again one by one)."""
        if self.config.mode == "emergency":
            return [None] * len(cleans)
        if self.load_error:
            return [self.load_error] * len(cleans)
        return decide_all(self._model, self.decider, [c.user_request for c in cleans], [c.context for c in cleans],
                          self.config.inference.decision_timeout_s, self.config.service.max_batch)

    def run_agent(self, context: str | None, user_request: str, user_id: str | None = None) -> dict:
        return self.run_batch([{"context": context, "user_request": user_request, "user_id": user_id}])[0]

    def run_batch(self, requests: list, received_at: list[float] | None = None,
                  on_result: Callable[[int, dict], None] | None = None,
                  on_decided: Callable[[], None] | None = None,
                  claim: Callable[[int], bool] | None = None) -> list[dict]:
        """Many requests in passes of service.max_batch; one result and one audit record each, in order.
        ``received_at`` (``time.perf_counter()`` values) lets a server count the time a request waited
        before this call in its processing_time_ms. Never raises for a bad item: it fails closed.

        A server passes ``on_result(index, result)`` to hand each result on as soon as it is final, and
        ``on_decided()`` to hear when only answers are left to write: then the results that need no answer come
        first and the ALLOWs' answers after, so no request waits for another's answer (nor does the next batch's
        decision pass, if the server starts one then).

        ``claim(index)`` is asked just before a request's audit record is written: False means a shutdown cut the
        request off and its client was answered 503, so the record says it was not delivered (``runtime_records``)."""
        now = time.perf_counter()
        starts = list(received_at) if received_at is not None else [now] * len(requests)
        if len(starts) != len(requests):  # a caller's mistake, not a bad item: said before anything is decided
            raise ValueError(f"{len(requests)} requests but {len(starts)} received_at values")
        for i, start in enumerate(starts):
            _check_start(i, start)
        results: list[dict | None] = [None] * len(requests)
        deliver = Delivery(results, on_result)
        valid: list[tuple[int, CleanRequest]] = []
        for i, item in enumerate(requests):
            try:
                valid.append((i, self._check(item)))
            except InvalidRequest as exc:
                deliver(i, self._step(claim, i, self._fail_closed, item, f"invalid input: {exc}", starts[i]))
            except Exception as exc:  # noqa: BLE001 - a checker bug must not lose the batch
                deliver(i, self._step(claim, i, self._fail_closed, item,
                                      f"internal error: {type(exc).__name__}: {exc}", starts[i]))
        later: list = [] if on_result is not None else None  # ALLOWs whose answers are written last
        if valid:
            outcomes = self._decide_all([clean for _, clean in valid])
            for (i, clean), outcome in zip(valid, outcomes):
                if isinstance(outcome, str):
                    deliver(i, self._step(claim, i, self._fail_closed, vars(clean), outcome, starts[i], clean.flags))
                else:
                    defer = None if later is None else \
                        (lambda result, i=i, clean=clean, start=starts[i]: later.append((i, clean, result, start)))
                    result = self._step(claim, i, self._decide_one, clean, outcome, defer, starts[i])
                    if result is not None:  # None: deferred
                        deliver(i, result)
        deliver.call(on_decided)
        for i, clean, result, start in later or ():
            deliver(i, self._step(claim, i, self._answer_and_finish, clean, result, start))
        return results  # type: ignore[return-value]

    def _step(self, claim: Callable[[int], bool] | None, index: int, step, item, *args) -> dict:
        """``_guarded``, with the request's claim where ``runtime_records`` finds it (this thread's ``_delivery``)."""
        self._delivery.claim = None if claim is None else (lambda: claim(index))
        try:
            return self._guarded(step, item, *args)
        finally:
            self._delivery.claim = None

    def _guarded(self, step, item, *args) -> dict:
        """Run one request's step; an unexpected failure still yields a fail-closed result, and never raises."""
        try:
            return step(item, *args)
        except Exception as exc:  # noqa: BLE001
            logger.exception("internal error while deciding a request")
            failure = exc
        if step != self._fail_closed:  # decide it again as a failure: a recorded ESCALATE
            try:
                return self._fail_closed(vars(item) if isinstance(item, CleanRequest) else item,
                                         f"internal error: {type(failure).__name__}: {failure}", args[-1])
            except Exception as exc:  # noqa: BLE001
                logger.exception("internal error while failing a request closed")
                failure = exc
        result = make_result("ESCALATE", "", None, None, None, "general", self.model_version, [])
        with self._lock:  # nothing left to try but an unrecorded ESCALATE
            self.audit_failures += 1
        return fail_closed(result, f"internal error: {type(failure).__name__}: {failure}; not recorded")

    def _check(self, item) -> CleanRequest:
        if isinstance(item, Unparsed):
            raise InvalidRequest(item.reason)
        if not isinstance(item, dict):
            raise InvalidRequest(f"each request must be an object with user_request, got {type(item).__name__}")
        v = self.config.validation
        clean = validate_request(item.get("user_request"), item.get("context"), item.get("user_id"),
                                 v.max_request_chars, v.max_context_chars, v.max_user_id_chars)
        clean.client = self._client(item)
        return clean

    @staticmethod
    def _client(item: dict) -> str | None:
        """The item's client (the HTTP service sets its API key's name) when the queue can store it
        (``checked_client``); any other value counts as none: it must never cost a record or a case."""
        value = item.get("client")
        client = checked_client(value)
        if client is None and value is not None:
            logger.warning("a request's client is not a key name the queue can store (%s); decided without one",
                           type(value).__name__)
        return client
