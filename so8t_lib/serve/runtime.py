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

This module holds the Agent itself: what it loads at start, and how it is switched and closed. Its work is
done by three parts it inherits: ``runtime_batches`` (a batch's bookkeeping, and ``run_batch``),
``runtime_decisions`` (one request's route, decision, answer or fail-closed result) and ``runtime_records``
(the one audit record per decision, and an ESCALATE's spool, queue and audit steps).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from pathlib import Path

from ..core.checkpoint import UNVERIFIED_MARK
from ..core.config import ConfigError, parse_size
from .answering import AnswerTurns
from .applog import configure_logging
from .audit import AuditLog
from .audit_files import key_bytes
from .audit_verify import make_fernet
from .backends import load_decider
from .config import QUEUE_URL_ENV, RuntimeConfig, load_runtime_config, runtime_paths
from .config_fields import PG_SHORTEST_CONNECT_S
from .escalation import EscalationQueue
from .escalation_desk import EscalationDesk
from .model_worker import STUCK_FACTOR, ModelWorker, Stuck
from .notify import NO_CHANNEL, Notifier
from .router import RouterError, load_router
from .runtime_batches import BatchRunning
from .runtime_decisions import RequestDeciding
from .runtime_records import DecisionRecording
from .spool import CaseSpool

logger = logging.getLogger("so8t.runtime")


class Agent(BatchRunning, RequestDeciding, DecisionRecording):
    """One loaded model plus its audit log and escalation desk, applying the runtime contract."""

    def __init__(self, config: RuntimeConfig, decider=None, test_mode: bool = False, log_dir: str | None = None,
                 shared_queue: bool = True):
        self.config = config
        self.test_mode = test_mode
        self.paths = runtime_paths(config, log_dir, shared_queue)
        if str(self.paths.queue_url or "").startswith("postgres") and config.queue_wait_s() < PG_SHORTEST_CONNECT_S:
            raise ConfigError(f"the escalation queue is PostgreSQL ({QUEUE_URL_ENV}), whose connection may take "
                              f"{PG_SHORTEST_CONNECT_S} s, but escalation.queue_timeout_s is {config.queue_wait_s():g} s: "
                              f"set it to {PG_SHORTEST_CONNECT_S} or more (with inference.decision_timeout_s above it)")
        configure_logging(config.logging.log_level, self.paths.log_file)
        enc_key = self._secret(config.logging.encryption_key_env, "the audit log cannot be encrypted")
        # bytes once, here: the audit log and the case's user-id digest (runtime_records) key hmac with it
        self._mac_key = key_bytes(self._secret(config.logging.hmac_key_env, "the audit anchor cannot be signed"))
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
        self.notifier = Notifier(esc, sending=not test_mode)  # test mode sends nothing: its variables are moot
        self.desk = EscalationDesk(
            lambda: EscalationQueue(self.paths.queue_target, config.queue_wait_s(), True, enc_key, esc.escalation_timeout,
                                    mask_personal_data=logs.mask_personal_data,  # a reviewer's note as its record
                                    max_field_chars=logs.max_field_chars),
            CaseSpool(self.paths.spool, make_fernet(enc_key) if enc_key else None), self.audit, self.notifier,
            notify=esc.enable_notifications and not test_mode, retry_interval_s=esc.retry_interval_s)
        self._model = ModelWorker(stuck_floor_s=STUCK_FACTOR * config.inference.decision_timeout_s)
        self._answering = AnswerTurns()  # one answer written at a time, in the order asked (answering.py)
        self._lock = threading.Lock()
        self._delivery = threading.local()  # the claim of the request a batch thread is recording (run_batch)
        self.audit_failures = 0
        self.last_audit_failure = None
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

    def stop_answering(self) -> None:
        """A server's shutdown deadline passed: no task answer is started or continued from now on (an ALLOW
        still waiting for one is recorded without it, as after a generation timeout); a model call already
        running finishes."""
        self._answering.stop()

    def model_stuck(self) -> Stuck | None:
        """``ModelWorker.stuck()``: whether a call holds the model's thread well past its limit (None when not); a
        server's readiness reports it, since that thread cannot be replaced while the call runs."""
        return self._model.stuck()

    def model_busy(self) -> bool:
        """Whether a call still runs on this agent's model thread (one a timeout gave up on, even after close):
        another agent must not call the same model meanwhile, since backends are not thread-safe."""
        return self._model.busy()

    def close(self, notice_wait_s: float | None = None) -> None:
        """Stop the desk (waiting at most ``notice_wait_s`` for notices in flight, else the notifier's own bound),
        the notifier and the model's thread."""
        self.desk.close(notice_wait_s)
        self.notifier.close()
        self._model.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
