"""Deciding one request: its route, its decision by the policy's threshold rule (or emergency mode), the task
answer an ALLOW gets, and the fail-closed ESCALATE for a request that could not be decided.

It exists so that what one result says is built in one place, apart from how a batch is run
(``runtime_batches``) and how a result is recorded (``runtime_records``). ``RequestDeciding`` is a part of
``runtime.Agent`` and works on an Agent's attributes (its config, decider, router and model worker).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..core.schema import LABELS
from ..data.tables import detect_lang
from .answering import AnswerTurns, write_answer
from .backends import Decider
from .categories import categorize, keyword_scores
from .config import RuntimeConfig
from .fields import bounded, masked_if_cut
from .masking import mask_personal_data
from .model_worker import ModelWorker
from .outcome import fail_closed, make_result, rationale_for
from .policy import threshold_decisions
from .request_checks import CleanRequest, Unparsed
from .router import LearnedRouter
from .urgency import is_urgent, mark_urgent, urgent_route

logger = logging.getLogger("so8t.runtime")


class RequestDeciding:
    """The Agent's per-request steps, each ending in ``_finish`` (``runtime_records``): ``_decide_one`` for a
    request the model decided (or emergency mode escalates), ``_fail_closed`` for one it could not."""

    config: RuntimeConfig
    decider: Decider | None
    router: LearnedRouter | None
    unverified: bool
    model_version: str
    _model: ModelWorker
    _answering: AnswerTurns
    _finish: Callable[[dict, CleanRequest, float], dict]
    _client: Callable[[dict], str | None]

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
        """ESCALATE for a request that could not be decided, storing only a bounded prefix of it.

        The route reads the raw prefix; what is recorded is masked before it is cut (``masked_if_cut``), even
        with ``logging.mask_personal_data`` off: cut raw, an address at the cut ('tanaka.taro@ex') was stored
        half, and the queue's masking could no longer recognise it. A field within its bound is kept as it is."""
        v = self.config.validation
        item = item if isinstance(item, dict) else {"user_request": item.raw if isinstance(item, Unparsed) else item}
        request, context, user_id = item.get("user_request"), item.get("context"), item.get("user_id")
        recorded = CleanRequest(masked_if_cut(request, v.max_request_chars), masked_if_cut(context, v.max_context_chars),
                                masked_if_cut(user_id, v.max_user_id_chars), client=self._client(item))
        text, context = bounded(request, v.max_request_chars), bounded(context, v.max_context_chars)
        urgent = is_urgent(text, context)
        category = self._categorize(text or "", context, urgent)
        result = fail_closed(make_result("ESCALATE", "", None, None, None, category, self.model_version,
                                         self._flags(flags or [])), reason, detect_lang(text or ""))
        if urgent:
            mark_urgent(result, text)
        return self._finish(result, recorded, start)
