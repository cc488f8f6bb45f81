"""The agent runtime: the safety gate in production.

    so8t runtime --config configs/basic.yaml --request "経費精算の締め日は？" [--pretty]
    cat requests.jsonl | so8t runtime --config configs/basic.yaml [--use-gguf] [--test-mode]

``Agent.from_config(path)`` loads the decider (HF checkpoint or GGUF file), the audit log and the
escalation desk; ``agent.run_batch(requests)`` returns one result per request, in order:
decision, rationale, task_response (ALLOW only), confidence, probabilities, category,
human_required, request_id, model_version, processing_time_ms, flags, error and, for ESCALATE,
escalation_id and escalation_status. The policy's threshold rule decides (shared/SAFETY_POLICY.md)
and the gate fails closed: invalid input, a model that cannot load, a model error, a timeout,
unreadable probabilities, *and an audit record that cannot be written* give ESCALATE with
``human_required: true`` and the error named, never ALLOW. ``mode: emergency`` escalates everything.

Every decision has exactly one audit record. An ESCALATE is spooled durably before anything
else, queued within ``queue_timeout_s`` (else retried from the spool), then audited; see
``escalation_desk`` for how a crash or a locked queue is caught up. ``run_batch`` may be called from
several threads at once: the model runs on one thread (backends are not thread-safe; ``model_worker``:
decisions go before task answers, and a time limit counts a pass's own time, not its wait), the
audit log locks each append, the queue and the spool lock per case.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..core.checkpoint import UNVERIFIED_MARK
from ..core.config import ConfigError, parse_size
from ..core.schema import LABELS
from ..data.tables import detect_lang
from .answering import AnswerTurns, write_answer
from .applog import configure_logging
from .audit import AuditLog, AuditWriteError
from .audit_verify import make_fernet
from .backends import load_decider
from .categories import categorize, keyword_scores
from .config import RuntimeConfig, load_runtime_config, runtime_paths
from .deciding import decide_all
from .escalation import EscalationQueue
from .escalation_desk import EscalationDesk
from .fields import bounded, pseudonym
from .masking import mask_personal_data
from .model_worker import ModelWorker
from .notify import NO_CHANNEL, Notifier
from .outcome import (
    Delivery,
    audit_record,
    escalation_case,
    fail_closed,
    join_errors,
    make_result,
    new_case_id,
    rationale_for,
)
from .policy import threshold_decisions
from .request_checks import CleanRequest, InvalidRequest, Unparsed, checked_client, validate_request
from .router import RouterError, load_router
from .spool import CaseSpool
from .urgency import URGENT_FLAG, is_urgent, mark_urgent, urgent_route

logger = logging.getLogger("so8t.runtime")


class Agent:
    """One loaded model plus its audit log and escalation desk, applying the runtime contract."""

    def __init__(self, config: RuntimeConfig, decider=None, test_mode: bool = False, log_dir: str | None = None,
                 shared_queue: bool = True):
        self.config = config
        self.test_mode = test_mode
        self.paths = runtime_paths(config, log_dir, shared_queue)
        configure_logging(config.logging.log_level, self.paths.log_file)
        enc_key = self._secret(config.logging.encryption_key_env, "the audit log cannot be encrypted")
        self._mac_key = self._secret(config.logging.hmac_key_env, "the audit anchor cannot be signed")
        self.decider, self.load_error = decider, None
        if decider is None and config.mode != "emergency":  # emergency mode never consults a model
            try:
                self.decider = load_decider(config.model.model_path(), config.inference.device,
                                            config.inference.gpu_layers)
            except Exception as exc:  # noqa: BLE001 - the gate must still answer (fail closed)
                self.load_error = f"model could not be loaded: {type(exc).__name__}: {exc}"
                logger.error("%s", self.load_error)
        self.router, self.router_error = None, None
        if config.escalation.router:  # like the model: a router that cannot be read is reported, not fatal
            try:  # (routing by the keyword table instead changes who reviews a case, never the decision)
                self.router = load_router(config.escalation.router)
            except Exception as exc:  # noqa: BLE001 - RouterError names the problem; anything else is one too
                detail = str(exc) if isinstance(exc, RouterError) else f"{type(exc).__name__}: {exc}"
                self.router_error = f"escalation router not loaded, routing by the keyword table: {detail}"
                logger.error("%s", self.router_error)
        logs = config.logging
        self.audit = AuditLog(self.paths.audit, parse_size(logs.max_log_size), logs.backup_count,
                              mask_input=logs.mask_personal_data, encryption_key=enc_key, hmac_key=self._mac_key,
                              max_field_chars=logs.max_field_chars, lock_timeout_s=logs.audit_lock_timeout_s)
        esc = config.escalation
        self.notifier = Notifier(esc)
        self.desk = EscalationDesk(
            lambda: EscalationQueue(self.paths.queue_target, config.queue_wait_s(), True, enc_key, esc.escalation_timeout),
            CaseSpool(self.paths.spool, make_fernet(enc_key) if enc_key else None), self.audit, self.notifier,
            notify=esc.enable_notifications and not test_mode, retry_interval_s=esc.retry_interval_s)
        self._model = ModelWorker()
        self._answering = AnswerTurns()  # one answer written at a time, in the order asked (answering.py)
        self._lock = threading.Lock()
        self.audit_failures = 0
        if esc.enable_notifications and not test_mode and not self.notifier.channels():
            logger.warning("escalations will reach nobody: %s", NO_CHANNEL)
        elif esc.enable_notifications and not test_mode and self.notifier.unset_route_webhooks():
            fallback = ("use the shared webhook" if self.notifier.shared_webhook() else
                        "have no webhook (their cases are notified by e-mail, if at all)")
            logger.warning("route webhook variables not set, so those routes %s: %s", fallback,
                           ", ".join(self.notifier.unset_route_webhooks()))
        if self.unverified:
            logger.warning("serving %s, a model whose files were not verified (%s)", self.model_version,
                           "SO8T_ALLOW_UNVERIFIED_MODEL is set")
        if self.desk.spool.count():  # cases left by a crash or a locked queue: catch up in the background
            self.desk.start()
            self.desk.maintain_soon()

    @classmethod
    def from_config(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = (), **kwargs) -> Agent:
        return cls(load_runtime_config(path, overrides), **kwargs)

    @staticmethod
    def _secret(env_name: str | None, consequence: str) -> str | None:
        if not env_name:
            return None
        value = os.environ.get(env_name)
        if not value:
            raise ConfigError(f"the config names the environment variable {env_name}, but it is not set: {consequence}")
        return value

    @property
    def model_version(self) -> str:
        if self.decider is not None:
            return str(self.decider.model_version)
        return "none (emergency mode)" if self.config.mode == "emergency" else "unloaded"

    @property
    def unverified(self) -> bool:
        return UNVERIFIED_MARK in self.model_version

    @property
    def queue(self):
        """The escalation queue (a CaseStore)."""
        return self.desk.store

    @property
    def pending_notifications(self) -> list[concurrent.futures.Future]:
        return self.desk.notifications

    def set_mode(self, mode: str) -> str:
        """Switch between ``normal`` and ``emergency`` without a restart (a server's emergency switch);
        returns the previous mode. A batch already deciding finishes in the mode it started in."""
        with self._lock:
            previous = self.config.mode
            self.config = RuntimeConfig.model_validate({**self.config.model_dump(), "mode": mode})
        return previous

    def close(self) -> None:
        self.desk.close()
        self.notifier.close()
        self._model.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- deciding ---------------------------------------------------------------------------------
    def _decide_all(self, cleans: list[CleanRequest]) -> list:
        """One entry per request: a row of probabilities, None (emergency mode) or a failure reason
        (``deciding.decide_all``: a batch that fails is decided again one by one)."""
        if self.config.mode == "emergency":
            return [None] * len(cleans)
        if self.load_error:
            return [self.load_error] * len(cleans)
        return decide_all(self._model, self.decider, [c.user_request for c in cleans], [c.context for c in cleans],
                          self.config.inference.decision_timeout_s, self.config.service.max_batch)

    def _generate(self, request: str, context: str | None) -> tuple[str, str | None]:
        """(masked task answer, error); an answer that fails leaves the decision standing."""
        inference = self.config.inference
        if not inference.generate_responses:
            return "", None
        try:
            text = write_answer(self._model, self.decider, request, context, inference, self._answering)
        except TimeoutError as exc:
            return "", f"generation timed out after {inference.generation_timeout_s}s ({exc})"
        except Exception as exc:  # noqa: BLE001
            return "", f"generation failed: {type(exc).__name__}: {exc}"
        return mask_personal_data(str(text).strip()), None

    def run_agent(self, context, user_request, user_id=None) -> dict:
        return self.run_batch([{"context": context, "user_request": user_request, "user_id": user_id}])[0]

    def run_batch(self, requests: list, received_at: list[float] | None = None,
                  on_result: Callable[[int, dict], None] | None = None,
                  on_decided: Callable[[], None] | None = None) -> list[dict]:
        """Many requests in passes of service.max_batch; one result and one audit record each, in order.
        ``received_at`` (``time.perf_counter()`` values) lets a server count the time a request waited
        before this call in its processing_time_ms. Never raises for a bad item: it fails closed.

        A server passes ``on_result(index, result)`` to hand each result on as soon as it is final, and
        ``on_decided()`` to hear when only answers are left to write: then the results that need no answer come
        first and the ALLOWs' answers after, so no request waits for another's answer (nor does the next batch's
        decision pass, if the server starts one then)."""
        now = time.perf_counter()
        starts = list(received_at) if received_at is not None else [now] * len(requests)
        results: list[dict | None] = [None] * len(requests)
        deliver = Delivery(results, on_result)
        valid: list[tuple[int, CleanRequest]] = []
        for i, item in enumerate(requests):
            try:
                valid.append((i, self._check(item)))
            except InvalidRequest as exc:
                deliver(i, self._guarded(self._fail_closed, item, f"invalid input: {exc}", starts[i]))
            except Exception as exc:  # noqa: BLE001 - a checker bug must not lose the batch
                deliver(i, self._guarded(self._fail_closed, item, f"internal error: {type(exc).__name__}: {exc}",
                                         starts[i]))
        later: list = [] if on_result is not None else None  # ALLOWs whose answers are written last
        if valid:
            outcomes = self._decide_all([clean for _, clean in valid])
            for (i, clean), outcome in zip(valid, outcomes):
                if isinstance(outcome, str):
                    deliver(i, self._guarded(self._fail_closed, vars(clean), outcome, starts[i], clean.flags))
                else:
                    defer = None if later is None else \
                        (lambda result, i=i, clean=clean, start=starts[i]: later.append((i, clean, result, start)))
                    result = self._guarded(self._decide_one, clean, outcome, defer, starts[i])
                    if result is not None:  # None: deferred
                        deliver(i, result)
        deliver.call(on_decided)
        for i, clean, result, start in later or ():
            deliver(i, self._guarded(self._answer_and_finish, clean, result, start))
        return results  # type: ignore[return-value]

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

    def _flags(self, flags: list[str]) -> list[str]:
        return [*flags, "unverified_model"] if self.unverified else list(flags)

    def _decide_one(self, clean: CleanRequest, probs, defer, start: float) -> dict | None:
        """The request's result, finished and recorded; an ALLOW whose answer is to be written later is handed
        to ``defer`` unfinished instead, and None is returned."""
        urgent = is_urgent(clean.user_request, clean.context)
        category = self._categorize(clean.user_request, clean.context, urgent)
        notify, lang = self.config.escalation.routes[category].notify or category, detect_lang(clean.user_request)
        if probs is None:  # emergency mode
            decision, confidence, prob_map = "ESCALATE", None, None
            rationale = rationale_for("EMERGENCY_MODE", lang, notify=notify)
        else:
            decision = str(threshold_decisions(probs[None, :], self.config.inference.safety_threshold)[0])
            confidence = float(probs.max())
            prob_map = {label: round(float(p), 6) for label, p in zip(LABELS, probs)}
            rationale = rationale_for(decision, lang, category=category, notify=notify)
        result = make_result(decision, rationale, None, confidence, prob_map, category, self.model_version,
                             self._flags(clean.flags))
        if urgent:
            mark_urgent(result, clean.user_request)
        if decision == "ALLOW" and defer is not None and self.config.inference.generate_responses:
            defer(result)
            return None
        return self._answer_and_finish(clean, result, start)

    def _answer_and_finish(self, clean: CleanRequest, result: dict, start: float) -> dict:
        if result["decision"] == "ALLOW":
            result["task_response"], result["error"] = self._generate(clean.user_request, clean.context)
        return self._finish(result, clean, start)

    def _categorize(self, request: str, context: str | None, urgent: bool = False) -> str:
        """The route: the learned router where one is configured, the keyword table otherwise or if it fails
        (a route never changes the decision, only who reviews it). A possible emergency goes to medical unless
        the keyword table found another desk (``urgent_route``): never by the learned router's guess alone."""
        routed = None
        if self.router is not None:
            try:
                routed = self.router.route(request, context)
            except Exception:  # noqa: BLE001
                logger.exception("the escalation router failed; routing by the keyword table")
        if routed is None:
            routed = categorize(request, context)
        return urgent_route(routed, keyword_scores(request, context)) if urgent else routed

    def _fail_closed(self, item, reason: str, start: float, flags: list[str] | None = None) -> dict:
        """ESCALATE for a request that could not be decided, storing only a bounded prefix of it."""
        v = self.config.validation
        item = item if isinstance(item, dict) else {"user_request": item.raw if isinstance(item, Unparsed) else item}
        text = bounded(item.get("user_request"), v.max_request_chars)
        context = bounded(item.get("context"), v.max_context_chars)
        user_id = bounded(item.get("user_id"), v.max_user_id_chars)
        urgent = is_urgent(text, context)
        category = self._categorize(text or "", context, urgent)
        result = fail_closed(make_result("ESCALATE", "", None, None, None, category, self.model_version,
                                         self._flags(flags or [])), reason, detect_lang(text or ""))
        if urgent:
            mark_urgent(result, text)
        return self._finish(result, CleanRequest(text, context, user_id, client=self._client(item)), start)

    # ----- recording --------------------------------------------------------------------------------
    def _record(self, result: dict, asked: CleanRequest) -> dict:
        return audit_record(result, asked.user_request, asked.user_id, self.test_mode,
                            self.config.logging.max_field_chars, asked.context)

    @staticmethod
    def _stamp(result: dict, start: float) -> None:
        result["processing_time_ms"] = round((time.perf_counter() - start) * 1000, 3)

    def _audit_failed(self, result: dict, exc: Exception) -> None:
        with self._lock:
            self.audit_failures += 1
        logger.error("audit record of %s not written: %s", result["request_id"], exc)
        result["flags"] = list(dict.fromkeys([*result["flags"], "audit_write_failed"]))

    def _finish(self, result: dict, asked: CleanRequest, start: float) -> dict:
        """Write the one audit record; an ALLOW or REFUSE whose record fails becomes ESCALATE."""
        request = asked.user_request
        if result["decision"] != "ESCALATE":
            self._stamp(result, start)
            try:
                self.audit.append(self._record(result, asked))
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
        stored_uid = pseudonym(user_id, self._mac_key) if self.config.logging.mask_personal_data else user_id
        case = escalation_case(result, request, stored_uid, self.test_mode, limit, asked.client, asked.context)
        ticket = self.desk.open(case, self.audit.prepare(self._record(result, asked)))
        result["escalation_status"] = self.desk.try_queue(ticket)
        if not ticket.queued:
            result["flags"] = [*result["flags"], f"escalation_{result['escalation_status']}"]
            result["error"] = join_errors(result["error"], ticket.error)
        self._stamp(result, start)
        try:  # spooled: from here nothing may raise, or _guarded would open a second case for this request
            self.audit.append(self._record(result, asked))
            audited = True
        except Exception as exc:  # noqa: BLE001 - an AuditWriteError, or a bug: the spool's replay writes it
            self._audit_failed(result, exc)
            result["error"] = join_errors(result["error"], f"audit write failed: {exc}")
            audited = False
        try:  # recorded: whatever goes wrong from here must not decide the request a second time (_guarded)
            self.desk.finish(ticket, audited)
        except Exception:  # noqa: BLE001 - the spool entry stays; the desk's replay finishes it
            logger.exception("escalation %s: recorded, but finishing its case failed", result["escalation_id"])
        return result

