"""The agent runtime: the safety gate in production.

    so8t runtime --config configs/basic.yaml --request "経費精算の締め日は？" [--pretty]
    cat requests.jsonl | so8t runtime --config configs/basic.yaml [--use-gguf] [--test-mode]

``Agent.from_config(path)`` loads the decider (HF checkpoint or GGUF file) and the audit log;
``agent.run_agent(context, user_request, user_id)`` returns decision, rationale, task_response
(ALLOW only), confidence, probabilities, category, human_required, request_id, model_version,
processing_time_ms and flags, and writes one audit record. The policy's threshold rule decides
(shared/SAFETY_POLICY.md); the gate fails closed: invalid input, a model error, a timeout or
unreadable probabilities give ESCALATE with ``human_required: true`` and the error in the audit
record, never ALLOW. ``mode: emergency`` escalates everything.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import math
import os
import time
import uuid
from pathlib import Path

import numpy as np

from ..core.config import ConfigError, parse_size
from ..core.schema import LABELS
from .audit import AuditLog
from .backends import load_decider
from .categories import categorize
from .config import RuntimeConfig, load_runtime_config
from .escalation import EscalationQueue, Notifier
from .masking import mask_personal_data
from .policy import threshold_decisions
from .request_checks import InvalidRequest, validate_request

FAIL_CLOSED_RATIONALE = ("The safety gate could not reach a decision ({reason}); a person will review this "
                         "request before anything is done.")
RATIONALES = {
    "ALLOW": "Allowed under the company safety policy.",
    "REFUSE": "This request conflicts with the company safety policy ({category}), so it is declined.",
    "ESCALATE": "This request needs a person's judgement ({category}); it has been passed to {notify}.",
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Agent:
    """One loaded model plus its audit log, applying the runtime contract to every request."""

    def __init__(self, config: RuntimeConfig, decider=None, test_mode: bool = False, log_dir: str | None = None):
        self.config = config
        self.test_mode = test_mode
        self.decider = decider
        self._load_error: str | None = None
        if decider is None:
            try:
                self.decider = load_decider(config.model.model_path())
            except Exception as exc:  # noqa: BLE001 - the gate must still answer (fail closed)
                self._load_error = f"model could not be loaded: {type(exc).__name__}: {exc}"
        log_dir = log_dir or os.environ.get("SO8T_LOG_DIR")
        audit_path = Path(config.logging.audit_log)
        if log_dir:
            audit_path = Path(log_dir) / audit_path.name
        key = None
        if config.logging.encryption_key_env:
            key = os.environ.get(config.logging.encryption_key_env)
            if not key:
                raise ConfigError(f"logging.encryption_key_env names {config.logging.encryption_key_env}, but that "
                                  "environment variable is not set: the audit log cannot be encrypted")
        self.audit = AuditLog(audit_path, parse_size(config.logging.max_log_size), config.logging.backup_count,
                              mask_input=config.logging.mask_personal_data, encryption_key=key)
        queue_path = Path(config.escalation.queue_db)
        if log_dir:
            queue_path = Path(log_dir) / queue_path.name
        self.queue = EscalationQueue(queue_path)
        self.notifier = Notifier(config.escalation, self.queue)
        self.pending_notifications: list[concurrent.futures.Future] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="so8t-decide")

    @classmethod
    def from_config(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = (), **kwargs) -> Agent:
        return cls(load_runtime_config(path, overrides), **kwargs)

    @property
    def model_version(self) -> str:
        return str(self.decider.model_version) if self.decider is not None else "unloaded"

    # ----- one request --------------------------------------------------------------------------
    def _probabilities(self, requests: list[str], contexts: list[str | None]) -> np.ndarray:
        if self._load_error:
            raise RuntimeError(self._load_error)
        future = self._pool.submit(self.decider.decide, requests, contexts)
        probs = future.result(timeout=self.config.inference.decision_timeout_s)
        probs = np.asarray(probs.detach().cpu().numpy() if hasattr(probs, "detach") else probs, dtype=float)
        if probs.shape != (len(requests), len(LABELS)) or not np.isfinite(probs).all() \
                or (probs < 0).any() or not np.allclose(probs.sum(-1), 1.0, atol=1e-3):
            raise ValueError(f"unreadable model output: probabilities of shape {probs.shape}")
        return probs

    def _generate(self, request: str, context: str | None) -> str:
        if not self.config.inference.generate_responses:
            return ""
        text = self.decider.generate(request, context, max_tokens=min(self.config.inference.max_tokens, 256))
        return mask_personal_data(text.strip())

    def run_agent(self, context, user_request, user_id=None) -> dict:
        return self.run_batch([{"context": context, "user_request": user_request, "user_id": user_id}])[0]

    def run_batch(self, requests: list[dict]) -> list[dict]:
        """Many requests in one decision pass; one result (and one audit record) each, in order."""
        starts = [time.perf_counter() for _ in requests]
        results: list[dict | None] = [None] * len(requests)
        valid: list[tuple[int, object]] = []
        for i, item in enumerate(requests):
            try:
                if not isinstance(item, dict):
                    raise InvalidRequest(f"each request must be an object with user_request, got {type(item).__name__}")
                if item.get("_error"):  # the CLI could not parse this line
                    raise InvalidRequest(item["_error"])
                v = self.config.validation
                clean = validate_request(item.get("user_request"), item.get("context"), item.get("user_id"),
                                         v.max_request_chars, v.max_context_chars, v.max_user_id_chars)
                valid.append((i, clean))
            except InvalidRequest as exc:
                results[i] = self._fail_closed(item if isinstance(item, dict) else {}, f"invalid input: {exc}", starts[i])
        if valid:
            try:
                if self.config.mode == "emergency":
                    probs = None
                else:
                    probs = self._probabilities([c.user_request for _, c in valid], [c.context for _, c in valid])
            except concurrent.futures.TimeoutError:
                probs = f"timeout after {self.config.inference.decision_timeout_s}s"
            except Exception as exc:  # noqa: BLE001 - fail closed on anything
                probs = f"model error: {type(exc).__name__}: {exc}"
            for k, (i, clean) in enumerate(valid):
                if isinstance(probs, str):
                    results[i] = self._fail_closed(vars(clean), probs, starts[i], clean.flags)
                else:
                    results[i] = self._decide_one(clean, None if probs is None else probs[k], starts[i])
        return results  # type: ignore[return-value]

    def _decide_one(self, clean, probs, start: float) -> dict:
        category = categorize(clean.user_request, clean.context)
        route = self.config.escalation.routes[category]
        if probs is None:  # emergency mode
            decision, confidence, prob_map = "ESCALATE", None, None
            rationale = f"Emergency mode: every request is reviewed by a person ({route.notify or category})."
        else:
            decision = str(threshold_decisions(probs[None, :], self.config.inference.safety_threshold)[0])
            confidence = float(probs.max())
            prob_map = {label: round(float(p), 6) for label, p in zip(LABELS, probs)}
            rationale = RATIONALES.get(decision, "").format(category=category, notify=route.notify or category)
        task_response = None
        error = None
        if decision == "ALLOW":
            try:
                task_response = self._generate(clean.user_request, clean.context)
            except Exception as exc:  # noqa: BLE001 - the decision stands; the missing answer is recorded
                error = f"generation failed: {type(exc).__name__}: {exc}"
                task_response = ""
        result = self._result(decision, rationale, task_response, confidence, prob_map, category,
                              decision == "ESCALATE", start, clean.flags)
        self._audit(result, clean.user_request, clean.user_id, error)
        return result

    def _fail_closed(self, item: dict, reason: str, start: float, flags: list[str] | None = None) -> dict:
        request = item.get("user_request")
        text = request if isinstance(request, str) else repr(request)[:200]
        try:
            category = categorize(text, item.get("context") if isinstance(item.get("context"), str) else None)
        except Exception:  # noqa: BLE001
            category = "general"
        result = self._result("ESCALATE", FAIL_CLOSED_RATIONALE.format(reason=reason.split(":")[0]), None, None, None,
                              category, True, start, list(flags or []) + ["fail_closed"])
        result["error"] = reason  # e.g. "invalid input: user_request has 5000 characters; the limit is 4000"
        user_id = item.get("user_id") if isinstance(item.get("user_id"), str) else None
        self._audit(result, text, user_id, reason)
        return result

    def _result(self, decision, rationale, task_response, confidence, probabilities, category, human_required,
                start, flags) -> dict:
        return {
            "decision": decision, "rationale": rationale,
            "task_response": task_response if decision == "ALLOW" else None,
            "confidence": None if confidence is None or math.isnan(confidence) else round(confidence, 6),
            "probabilities": probabilities, "category": category, "human_required": bool(human_required),
            "request_id": f"req_{uuid.uuid4().hex[:16]}", "model_version": self.model_version,
            "processing_time_ms": round((time.perf_counter() - start) * 1000, 3), "flags": flags,
        }

    def _escalate(self, result: dict, request: str, user_id: str | None) -> None:
        """Queue the case; notify in the background (never in test mode), so the decision is not delayed."""
        try:
            case_id = self.queue.add(result, mask_personal_data(request), user_id, test=self.test_mode)
            result["escalation_id"] = case_id
            if self.config.escalation.enable_notifications and not self.test_mode:
                self.pending_notifications.append(self.notifier.notify_async(self.queue.get(case_id)))
        except Exception as exc:  # noqa: BLE001 - the decision (ESCALATE) stands; the failure is audited
            result["escalation_id"] = None
            result["flags"] = result["flags"] + [f"escalation_queue_error: {type(exc).__name__}"]

    def _audit(self, result: dict, request: str, user_id: str | None, error: str | None) -> None:
        if result["decision"] == "ESCALATE":
            self._escalate(result, request, user_id)
        record = {
            "timestamp": _now(), "request_id": result["request_id"], "user_id": user_id, "input": request,
            "decision": result["decision"], "rationale": result["rationale"],
            "human_required": result["human_required"], "model_version": result["model_version"],
            "processing_time_ms": result["processing_time_ms"], "confidence_score": result["confidence"],
            "category": result["category"], "flags": result["flags"], "error": error, "test": self.test_mode,
            "escalation_id": result.get("escalation_id"),
        }
        self.audit.append(record)
