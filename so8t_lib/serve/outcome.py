"""The shapes the runtime hands out and stores: the result of one request (and its delivery to a server as
soon as it is final), its audit record and its escalation case, and the rationales. Kept apart from
``runtime`` so the decision flow reads on its own."""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from collections.abc import Callable

from .fields import bounded, masked_bounded
from .urgency import URGENT_FLAG

logger = logging.getLogger("so8t.runtime")

MAX_ERROR_CHARS = 1000
# what the employee reads, in the request's language (Japanese when it holds Japanese script)
FAIL_CLOSED_RATIONALES = {
    "en": ("The safety gate could not reach a decision ({reason}); a person will review this request before "
           "anything is done."),
    "ja": "安全ゲートが判断できませんでした（{reason}）。対応の前に担当者が確認します。",
}
RATIONALES_BY_LANG = {
    "en": {
        "ALLOW": "Allowed under the company safety policy.",
        "REFUSE": "This request conflicts with the company safety policy ({category}), so it is declined.",
        "ESCALATE": "This request needs a person's judgement ({category}); it has been passed to {notify}.",
        "EMERGENCY_MODE": "Emergency mode: every request is reviewed by a person ({notify}).",
    },
    "ja": {
        "ALLOW": "社内の安全ポリシーに沿った依頼として対応します。",
        "REFUSE": "この依頼は社内の安全ポリシー（{category}）に反するため、お受けできません。",
        "ESCALATE": "この依頼は人の判断が必要なため（{category}）、{notify} に回しました。",
        "EMERGENCY_MODE": "緊急モード中のため、すべての依頼を担当者が確認します（{notify}）。",
    },
}


def rationale_for(kind: str, lang: str, **fields: str) -> str:
    """The rationale template ``kind`` (a decision or EMERGENCY_MODE) in ``lang`` (English when unknown)."""
    return RATIONALES_BY_LANG.get(lang, RATIONALES_BY_LANG["en"]).get(kind, "").format(**fields)


def utc_timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(stamp: str | None) -> dt.datetime | None:
    """An audit timestamp (``utc_timestamp``'s ``2026-11-01T09:00:00.123456Z``, or ISO with an offset; without one,
    UTC) as aware UTC; None when it is missing or unreadable, or has no UTC time (``9999-12-31T23:30:00-01:00`` is
    past the last moment Python can hold: OverflowError)."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:16]}"


def new_case_id() -> str:
    return f"esc_{uuid.uuid4().hex[:12]}"


def join_errors(*errors: str | None) -> str | None:
    parts = [e for e in errors if e]
    return bounded("; ".join(parts), MAX_ERROR_CHARS) if parts else None


def make_result(decision: str, rationale: str, task_response: str | None, confidence: float | None,
                probabilities: dict | None, category: str, model_version: str, flags: list[str]) -> dict:
    """The result of one request (the runtime's contract; processing_time_ms is set last)."""
    return {
        "decision": decision, "rationale": rationale,
        "task_response": task_response if decision == "ALLOW" else None,
        "confidence": None if confidence is None or math.isnan(confidence) else round(confidence, 6),
        "probabilities": probabilities, "category": category, "human_required": decision == "ESCALATE",
        "request_id": new_request_id(), "model_version": model_version, "processing_time_ms": None,
        "flags": list(dict.fromkeys(flags)), "error": None,
    }


def fail_closed(result: dict, reason: str, lang: str = "en") -> dict:
    """Turn a result into ESCALATE because something broke; the reason is named, the answer dropped."""
    template = FAIL_CLOSED_RATIONALES.get(lang, FAIL_CLOSED_RATIONALES["en"])
    result.update(decision="ESCALATE", human_required=True, task_response=None,
                  rationale=template.format(reason=reason.split(":")[0]),
                  error=join_errors(reason, result.get("error")))  # the reason first: metrics and reports read it
    result["flags"] = list(dict.fromkeys([*result["flags"], "fail_closed"]))
    return result


def audit_record(result: dict, request: str | None, user_id: str | None, test: bool, limit: int,
                 context: str | None = None) -> dict:
    """The operations manual's record plus the context the gate read with the request ("" when none: a
    reviewer's label belongs to the two together, and retraining needs both), the head's probabilities
    (which way an escalated request leaned: compliance reports compare it with the reviewer's decision),
    category, flags, error, test and the escalation fields.

    The input and context go in whole: ``AuditLog`` masks (when ``logging.mask_personal_data`` is on) and bounds
    them in one step. Cut here first, an address or number straddling ``limit`` was stored half ('tanaka.taro@exa',
    '090-1'), since masking no longer saw the rest of it. ``limit`` stays for callers that keep the signature."""
    return {
        "event": "decision", "timestamp": utc_timestamp(), "request_id": result["request_id"],
        "user_id": user_id, "input": request, "context": context or "",
        "decision": result["decision"],
        "rationale": result["rationale"], "human_required": result["human_required"],
        "model_version": result["model_version"], "processing_time_ms": result["processing_time_ms"],
        "confidence_score": result["confidence"], "probabilities": result.get("probabilities"),
        "category": result["category"], "flags": result["flags"],
        "error": result.get("error"), "test": test, "escalation_id": result.get("escalation_id"),
        "escalation_status": result.get("escalation_status"),
    }


def escalation_case(result: dict, request: str | None, user_id: str | None, test: bool, limit: int,
                    client: str | None = None, context: str | None = None) -> dict:
    """The queue's copy: personal data masked in the input and its context (the reviewer decides on the two, as
    the gate did; the user id is masked by the caller); ``client``, the API key that asked, is the one that may
    read the outcome."""
    return {
        "case_id": result["escalation_id"], "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "request_id": result["request_id"], "user_id": user_id, "category": result["category"],
        "input": masked_bounded(request, limit) if request is not None else None,
        "context": masked_bounded(context or "", limit) if request is not None else None, "rationale": result["rationale"],
        "confidence": result["confidence"], "test": test, "error": result.get("error"),
        "urgent": URGENT_FLAG in result.get("flags", ()), "client": client,
    }


class Delivery:
    """Puts each of a batch's results in its place and hands it on as soon as it is final (``Agent.run_batch``),
    so a request that needs no answer does not wait for another's. A server's callback that fails is logged,
    never raised: ``run_batch`` must not lose a batch because a client went away."""

    def __init__(self, results: list, on_result: Callable[[int, dict], None] | None) -> None:
        self.results, self.on_result = results, on_result

    def __call__(self, index: int, result: dict) -> None:
        self.results[index] = result
        self.call(self.on_result, index, result)

    @staticmethod
    def call(callback: Callable | None, *args) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # noqa: BLE001
            logger.exception("a server's result callback failed")
