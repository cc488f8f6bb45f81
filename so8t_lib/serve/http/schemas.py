"""The service's request and response shapes: they are its OpenAPI schema, which clients read and
schemathesis checks every response against.

The decision result is the runtime's (``outcome.make_result``) field for field; the moderation shape
is OpenAI's (``results[].flagged``, ``categories``, ``category_scores``) with the routing categories
of the safety policy, plus an ``so8t`` object a gateway may log. Limits that come from the config
(items per call) are part of the schema, so a request the schema allows is never refused for them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ...core.schema import HUMAN_DECISIONS, LABELS, ROUTE_CATEGORIES
from ...core.unicode_text import LINE_STEERING_RANGES
from ..escalation import MAX_NAME_CHARS, unseen

ESCALATION_STATUSES = ("queued", "spooled", "unqueued")
# a person's name or a reason: one line with a visible character (Python's strip(), which the queue applies, also
# removes \x1c-\x1f and \x85, which JSON Schema's \S lets through) and no control character anywhere (a line break,
# an escape sequence or a bidi override in it would forge or hide lines of the logs and listings that show it)
_CONTROLS = "".join(rf"\u{lo:04x}-\u{hi:04x}" for lo, hi in LINE_STEERING_RANGES)  # the queue refuses the same
ONE_LINE_TEXT = rf"^[^{_CONTROLS}]*[^\s{_CONTROLS}][^{_CONTROLS}]*$"


def _escaped(cp: int) -> str:
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def _unseen_class() -> str:
    """The characters the queue does not count as visible in a name (``escalation.unseen``: whitespace, controls,
    format characters such as U+200B, default-ignorables) as regex ranges; none lies outside the planes scanned."""
    spans: list[list[int]] = []
    for cp in (cp for lo, hi in ((0, 0x2FFFF), (0xE0000, 0xE0FFF)) for cp in range(lo, hi + 1)):
        if not unseen(chr(cp)):
            continue
        if spans and spans[-1][1] == cp - 1:
            spans[-1][1] = cp
        else:
            spans.append([cp, cp])
    return "".join(_escaped(lo) if lo == hi else f"{_escaped(lo)}-{_escaped(hi)}" for lo, hi in spans)


# a reviewer's name: ONE_LINE_TEXT whose visible character is one a reader sees (a name of zero-width spaces, soft
# hyphens or BOMs would sign a decision with nobody's name); the queue refuses the same (escalation.checked_name)
NAME_TEXT = rf"^[^{_CONTROLS}]*[^{_CONTROLS}{_unseen_class()}][^{_CONTROLS}]*$"


# every request body: unknown fields refused, and no lax conversions (pydantic would read 1 or "true" as true,
# so a schema-violating body could switch a flag such as the emergency mode on)
REQUEST_CONFIG = ConfigDict(extra="forbid", strict=True)


# beyond this many unknown fields a body gets one error, not one per field: pydantic builds an error per extra key,
# and a 0.9 MB object of 115,000 made-up keys held the event loop (every other request) for about half a second
MAX_UNKNOWN_FIELDS = 8


class _Strict(BaseModel):
    model_config = REQUEST_CONFIG

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) > len(cls.model_fields) + MAX_UNKNOWN_FIELDS:
            unknown = [key for key in data if key not in cls.model_fields]
            if len(unknown) > MAX_UNKNOWN_FIELDS:
                raise ValueError(f"{len(unknown)} unknown fields; the fields are {', '.join(cls.model_fields)}")
        return data


class ErrorDetail(BaseModel):
    type: str = Field(description="a short machine-readable kind, e.g. unauthorized, rate_limited")
    message: str = Field(description="what went wrong, in words")


class ErrorBody(BaseModel):
    """Every error of the service, whatever the status."""

    error: ErrorDetail


class DecideRequest(_Strict):
    user_request: str = Field(description="the employee's request (checked by the runtime: length, characters)")
    context: str | None = Field(None, description="earlier conversation or task context")
    user_id: str | None = Field(None, description="who asks: an account name, employee number or e-mail")


class DecisionResult(BaseModel):
    """One decision, exactly as ``so8t runtime`` prints it."""

    decision: Literal[LABELS]
    rationale: str
    task_response: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    category: str
    human_required: bool
    request_id: str
    model_version: str
    processing_time_ms: float | None
    flags: list[str]
    error: str | None
    escalation_id: str | None = None
    escalation_status: Literal[ESCALATION_STATUSES] | None = None


class DecisionSummary(BaseModel):
    """The gate's own view of a moderation result (OpenAI clients ignore it)."""

    decision: Literal[LABELS]
    request_id: str
    human_required: bool
    category: str
    escalation_id: str | None = None
    escalation_status: Literal[ESCALATION_STATUSES] | None = None
    flags: list[str]
    error: str | None


ModerationCategories = create_model("ModerationCategories", **{c: (bool, ...) for c in ROUTE_CATEGORIES})
ModerationScores = create_model("ModerationScores", **{c: (float, ...) for c in ROUTE_CATEGORIES})


class ModerationResult(BaseModel):
    flagged: bool = Field(description="true unless the gate decided ALLOW")
    categories: ModerationCategories  # type: ignore[valid-type]
    category_scores: ModerationScores  # type: ignore[valid-type]
    so8t: DecisionSummary


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


class EscalationCase(BaseModel):
    case_id: str
    created_at: str
    due_at: str | None = None
    request_id: str | None = None
    user_id: str | None = None
    category: str | None = None
    input: str | None = None
    context: str | None = None  # what the gate read with the request ("" for none; None in cases made before)
    rationale: str | None = None
    confidence: float | None = None
    status: str
    overdue: bool
    urgent: bool = False  # the emergency screen marked the request (docs/runtime.md, "Emergencies")
    client: str | None = None  # the API key that asked (None: decided outside the HTTP service)
    test: bool
    human_decision: str | None = None
    resolved_by: str | None = None
    resolved_at: str | None = None
    note: str | None = None
    gate_label: str | None = None  # the reviewer's label for retraining, never shown to the employee
    error: str | None = None
    notifications: list[dict[str, Any]] = []


class EscalationOutcome(BaseModel):
    """What the person who asked may learn of their escalated request: where it stands and what a person
    decided, without the stored input, the reviewer's name or note."""
    case_id: str
    request_id: str | None = None
    category: str | None = None
    status: str
    overdue: bool
    human_decision: str | None = None
    resolved_at: str | None = None


class EscalationList(BaseModel):
    count: int
    cases: list[EscalationCase]


class ResolveRequest(_Strict):
    decision: Literal[HUMAN_DECISIONS]
    by: str = Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_TEXT, description="the person who decided")
    note: str | None = Field(None, max_length=4000)
    supersede: bool = Field(False, description="replace an earlier resolution (it stays in the history)")
    gate_label: Literal[LABELS] | None = Field(
        None, description="what the gate should have decided on this request (SAFETY_POLICY.md), the only label "
        "retraining takes from a resolution; `decision` says what this employee gets, and a request that belongs "
        "to a person stays ESCALATE however it was settled. Without it, the case is no training row")


class Resolution(BaseModel):
    case: EscalationCase
    resolution: dict[str, Any]
    history: list[dict[str, Any]]


class EmergencyRequest(_Strict):
    enabled: bool = Field(description="true: escalate every request from now on; false: back to normal")
    reason: str = Field(min_length=1, max_length=1000, pattern=ONE_LINE_TEXT, description="why (audited)")


class EmergencyState(BaseModel):
    mode: Literal["normal", "emergency"]
    sources: dict[str, dict[str, Any]] = Field(description="what holds emergency mode: config, api, flag file")
    changed: bool = False
    audited: bool = True
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


def request_models(max_items: int) -> tuple[Any, Any]:
    """(decide body, moderation body): their list limits are the config's ``service.max_items``."""
    decide_list = Annotated[list[DecideRequest], Field(min_length=1, max_length=max_items)]
    texts = Annotated[list[str], Field(min_length=1, max_length=max_items)]
    moderation = create_model(
        "ModerationRequest", __base__=_Strict,
        input=(str | texts, Field(description="one text or a list of texts")),
        model=(str | None, Field(None, description="accepted for OpenAI clients; the gate's model answers")),
        user=(str | None, Field(None, description="the employee (the audit log's user_id)")))
    return DecideRequest | decide_list, moderation


ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "the body cannot be read (not UTF-8)", 401: "no API key, or an unknown one", 403: "the key's role may not do this", 404: "no such case",
    409: "already resolved (pass supersede), or supersede on a case nobody resolved", 413: "the body is larger than service.max_body_bytes",
    422: "the body or a parameter does not match the schema (the message names it)",
    429: "the key's rate limit (Retry-After says when to try again)",
    503: "overloaded, shutting down, or a store that does not answer"}.items()}


def errors(*codes: int) -> dict:
    """The OpenAPI ``responses`` entries of these error statuses."""
    return {code: ERRORS[code] for code in codes}
