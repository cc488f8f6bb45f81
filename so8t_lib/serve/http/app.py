"""The gate as a service: FastAPI routes over one ``Agent`` (the runtime contract of ``so8t runtime``).

    POST /v1/decide                    one request or a list -> the run_agent result(s)      client
    POST /v1/moderations               OpenAI moderation shape (input: text or list)         client
    GET  /v1/escalations/{id}/outcome  where an escalated request stands, what a person decided  client
    GET  /v1/escalations?status=unresolved  the escalation queue                             reviewer
    POST /v1/escalations/{id}/resolve  a person's decision, audited                          reviewer
    GET|POST /v1/admin/emergency       the emergency switch, audited                         reviewer
    GET  /healthz, /readyz, /metrics, /dashboard                                             open

Every error is JSON ``{"error": {"type", "message"}}`` naming the problem. The gate never answers
ALLOW because something broke: a failure inside the gate is a fail-closed ESCALATE from the runtime
(audited), and a failure of the service around it is a 4xx/5xx error or an unrecorded ESCALATE,
never an ALLOW.
"""

# No "from __future__ import annotations": FastAPI reads the route signatures, whose body types are
# built inside create_app from the config.
import logging
import re
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi import Path as FastPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ...core.config import parse_size
from ...core.schema import ROUTE_CATEGORIES
from ..audit import AuditWriteError
from ..escalation import (
    CASE_STATUSES,
    UNRESOLVED,
    QueueError,
    QueueUnavailable,
    ResolutionConflict,
    ResolvedButUnread,
)
from ..resolutions import resolve_audited
from ..urgency import is_urgent_case
from .auth import CLIENT, REVIEWER, ApiKey, RateLimiter
from .batching import Closing, Overloaded
from .dashboard_page import PAGE, SCRIPT
from .emergency import API, SwitchRefused
from .errors import (
    KINDS,
    ApiError,
    SafeJSONResponse,
    content_type_hint,
    error_response,
    reject_unknown_query,
    schema_problems,
    unreadable_body,
)
from .json_body import UniqueKeysRoute
from .middleware import BodySizeLimit, HttpMetrics, RequireKey
from .schemas import (
    DecisionResult,
    EmergencyRequest,
    EmergencyState,
    EscalationCase,
    EscalationList,
    EscalationOutcome,
    Health,
    ModerationResponse,
    Readiness,
    Resolution,
    ResolveRequest,
    errors,
    request_models,
)
from .service import Service

CASE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # case ids are esc_ and hex; anything else cannot name one
logger = logging.getLogger("so8t.service")
BEARER = Depends(HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <secret>"))
CHARGED = re.compile(r"/v1/(decide|moderations|escalations/[^/]+/outcome)")  # calls counted against a key's rate


def create_app(service: Service) -> FastAPI:
    """The FastAPI app of one Service; uvicorn (or a test client) runs its start and stop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="SO8T safety gate", version="1", lifespan=lifespan, default_response_class=SafeJSONResponse,
                  dependencies=[Depends(reject_unknown_query)],
                  description="ALLOW / REFUSE / ESCALATE for employee requests (shared/SAFETY_POLICY.md). "
                              "Fail-closed: a failure inside the gate is never ALLOW.")
    app.router.route_class = UniqueKeysRoute  # a key given twice in a body is refused, not decided on the last
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=parse_size(service.config.max_body_bytes))
    app.add_middleware(RequireKey, keys_of=lambda: service.keys,  # outside the size limit: no key, no 413 either
                       charge=lambda key, path: admit(key, path))  # and an empty bucket's 429 before a 413
    app.add_middleware(HttpMetrics, metrics=service.metrics, router=app.router)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        status, kind, message = unreadable_body(exc) or (
            exc.status_code, getattr(exc, "kind", None) or KINDS.get(exc.status_code, "error"), str(exc.detail))
        return error_response(status, kind, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):  # on a charged path, already paid (admit)
        return error_response(422, "invalid_request", content_type_hint(request) + schema_problems(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: the service failed; no decision was made")

    def role(required: str):
        def check(credentials: HTTPAuthorizationCredentials | None = BEARER) -> ApiKey:
            if credentials is None:
                raise ApiError(401, "unauthorized", "send an API key: Authorization: Bearer <secret>",
                               {"WWW-Authenticate": "Bearer"})
            key = service.keys.identify(credentials.credentials)
            if key is None:
                raise ApiError(401, "unauthorized", "unknown API key", {"WWW-Authenticate": "Bearer"})
            if not key.may(required):
                raise ApiError(403, "forbidden", f"the key {key.name!r} has the role {key.role!r}; this needs "
                               f"{required!r}")
            return key
        return check

    def rate_limited(key: ApiKey, wait: float) -> ApiError:
        service.metrics.rate_limited.labels(key.name).inc()
        return ApiError(429, "rate_limited", f"rate limit of {service.config.rate_limit_per_minute:g} requests/min "
                       f"for {key.name!r}; retry in {wait:.1f}s", {"Retry-After": RateLimiter.retry_after(wait)})

    def admit(key: ApiKey, path: str) -> int | ApiError:
        """A call's first token, taken by RequireKey before the body is read: whatever refuses the call later has
        been paid for, and an empty bucket is 429 before any parsing."""
        if not CHARGED.fullmatch(path):
            return 0
        wait = service.limiter.take(key.name, 1)
        return 1 if wait is None else rate_limited(key, wait)

    def charge(key: ApiKey, cost: int, request: Request) -> int:
        """The rest of a valid call's cost (``admit`` took the first token); the tokens taken in all. A call that
        does not fit the bucket is 429 and gets its first token back: a 429 costs nothing."""
        paid = getattr(request.state, "charged", 0)
        wait = service.limiter.take(key.name, cost - paid) if cost > paid else None
        if wait is not None:
            service.limiter.refund(key.name, paid)
            raise rate_limited(key, wait)
        return max(cost, paid)

    async def decide(items: list[dict], request: Request, endpoint: str, key: ApiKey) -> list[dict]:
        """The decisions of the items, charged to ``key`` here; a 503 gives the charge back (nothing was decided)."""
        charged = charge(key, len(items), request)
        received = getattr(request.state, "received_at", None)
        try:
            return await service.decide(items, received, endpoint)
        except Overloaded as exc:
            service.limiter.refund(key.name, charged)
            raise ApiError(503, "overloaded", f"{exc}; retry shortly", {"Retry-After": "1"}) from None
        except Closing as exc:
            service.limiter.refund(key.name, charged)
            raise ApiError(503, "shutting_down", str(exc), {"Retry-After": "5"}) from None

    client, reviewer = Depends(role(CLIENT)), Depends(role(REVIEWER))
    DecideBody, ModerationBody = request_models(service.config.max_items)

    @app.post("/v1/decide", response_model=DecisionResult | list[DecisionResult], tags=["gate"],
              responses=errors(400, 401, 403, 413, 422, 429, 503),
              summary="Decide one request (an object) or several (a list): ALLOW, REFUSE or ESCALATE")
    async def decide_route(body: Annotated[DecideBody, Body()], request: Request,  # type: ignore[valid-type]
                           key: ApiKey = client):
        items = [{**i.model_dump(), "client": key.name} for i in (body if isinstance(body, list) else [body])]
        results = await decide(items, request, "decide", key)
        return SafeJSONResponse(results if isinstance(body, list) else results[0])

    @app.post("/v1/moderations", response_model=ModerationResponse, tags=["gate"],
              responses=errors(400, 401, 403, 413, 422, 429, 503),
              summary="The gate in OpenAI's moderation shape: flagged unless the decision is ALLOW")
    async def moderations(body: Annotated[ModerationBody, Body()], request: Request,  # type: ignore[valid-type]
                          key: ApiKey = client):
        texts = body.input if isinstance(body.input, list) else [body.input]
        results = await decide([{"user_request": t, "context": None, "user_id": body.user, "client": key.name}
                                for t in texts],
                               request, "moderations", key)
        model = results[0]["model_version"] if results else service.agent.model_version
        return SafeJSONResponse({"id": f"modr-{uuid.uuid4().hex[:24]}", "model": model,
                                 "results": [moderation_result(r) for r in results]})

    @app.get("/v1/escalations", response_model=EscalationList, tags=["review"], responses=errors(401, 403, 422, 503),
             summary="Escalation cases, oldest first")
    async def escalations(key: ApiKey = reviewer,
                          status: Annotated[Literal[(*CASE_STATUSES, UNRESOLVED)] | None,  # type: ignore[valid-type]
                                            Query(description="a case status, or 'unresolved'")] = None,
                          overdue: Annotated[bool, Query(description="only cases past escalation_timeout")] = False,
                          urgent: Annotated[bool, Query(description="only cases the emergency screen marked")] = False,
                          include_tests: bool = True,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 100):
        def listing() -> list[dict]:
            return [c for c in service.agent.queue.list(status, overdue, include_tests)
                    if key.reviews(c.get("category")) and (is_urgent_case(c) or not urgent)]
        try:
            cases = await run_in_threadpool(listing)
        except QueueError as exc:
            raise ApiError(503, "queue_unavailable", str(exc), {"Retry-After": "2"}) from None
        shown = [EscalationCase.model_validate(c).model_dump() for c in cases[:limit]]
        return SafeJSONResponse({"count": len(cases), "cases": shown})

    @app.get("/v1/escalations/{case_id}/outcome", response_model=EscalationOutcome, tags=["gate"],
             responses=errors(401, 403, 404, 422, 429, 503),
             summary="Where an escalated request stands and what a person decided (the client key that asked, "
                     "or a reviewer of its desk, may read it)")
    async def outcome(case_id: Annotated[str, FastPath(pattern=CASE_ID_PATTERN, description="the escalation_id "
                                                       "of the decision")], request: Request, key: ApiKey = client):
        charge(key, 1, request)  # polling counts against the key's rate, so ids cannot be guessed at speed
        try:
            case = await run_in_threadpool(service.agent.queue.get, case_id)
        except KeyError:
            raise ApiError(404, "not_found", f"no escalation case {case_id!r}") from None
        except QueueError as exc:
            raise ApiError(503, "queue_unavailable", str(exc), {"Retry-After": "2"}) from None
        asked_by = case.get("client")  # None: decided outside the HTTP service, so no client key asked for it
        if asked_by != key.name and not key.reviews(case.get("category")):
            raise ApiError(404, "not_found", f"no escalation case {case_id!r}")  # another key's case: none to it
        return SafeJSONResponse(EscalationOutcome.model_validate(case).model_dump())

    @app.post("/v1/escalations/{case_id}/resolve", response_model=Resolution, tags=["review"],
              responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
              summary="Record a person's decision on a case (append-only, audited in the same transaction)")
    async def resolve(case_id: Annotated[str, FastPath(pattern=CASE_ID_PATTERN)], body: ResolveRequest,
                      key: ApiKey = reviewer):  # an id no case can have (a NUL in it) is 422, never a queue fault
        for name, text in (("by", body.by), ("note", body.note or "")):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, "invalid_request", f"{name}: not valid Unicode text") from None

        def resolve_on_its_desk() -> dict:
            category = service.agent.queue.get(case_id)["category"]  # KeyError: no such case
            if not key.reviews(category):  # answered as a missing case: a desk key learns nothing of others
                raise KeyError(case_id)
            return resolve_audited(service.agent.queue, service.agent.audit, case_id, body.decision, body.by,
                                   body.note, body.supersede, via=f"api key {key.name}", gate_label=body.gate_label)

        try:
            case = await run_in_threadpool(resolve_on_its_desk)
        except KeyError:
            raise ApiError(404, "not_found", f"no escalation case {case_id!r}" + (
                f" on the desks of {key.name!r}" if key.desks is not None else "")) from None
        except ResolutionConflict as exc:
            raise ApiError(409, exc.code, str(exc).replace("--supersede", "supersede: true")) from None
        except ResolvedButUnread as exc:  # done: retrying would only meet 409 already resolved
            raise ApiError(503, "resolved_not_shown", f"{exc}; GET /v1/escalations shows it",
                           {"Retry-After": "2"}) from None
        except (QueueUnavailable, AuditWriteError) as exc:
            raise ApiError(503, "unavailable", f"not resolved: {exc}", {"Retry-After": "2"}) from None
        except QueueError as exc:
            raise ApiError(503, "queue_unavailable", f"not resolved: {exc}", {"Retry-After": "2"}) from None
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        await run_in_threadpool(service.count_queue)
        shown = EscalationCase.model_validate(case).model_dump()
        return SafeJSONResponse({"case": shown, "resolution": case["resolution"], "history": case["history"]})

    @app.get("/v1/admin/emergency", response_model=EmergencyState, tags=["admin"], responses=errors(401, 403, 422),
             summary="Whether every request is being escalated, and who holds it")
    async def emergency_state(key: ApiKey = reviewer):
        state = await run_in_threadpool(service.switch.state)  # it waits for a change being recorded: off the loop
        return SafeJSONResponse({**state, "changed": False, "audited": True, "error": None})

    @app.post("/v1/admin/emergency", response_model=EmergencyState, tags=["admin"],
              responses=errors(400, 401, 403, 413, 422, 503),
              summary="Hold (enabled: true) or release emergency mode: every request escalated; audited")
    async def emergency(body: EmergencyRequest, key: ApiKey = reviewer):
        if key.desks is not None:
            raise ApiError(403, "forbidden", f"the key {key.name!r} reviews {sorted(key.desks)} only; the emergency "
                           "switch stops the whole gate and needs a reviewer key of every desk")
        try:
            state = await run_in_threadpool(service.switch.set, API, body.enabled, f"api key {key.name}", body.reason)
        except SwitchRefused as exc:
            raise ApiError(503, "switch_refused", str(exc)) from None
        return SafeJSONResponse(state)

    @app.get("/healthz", response_model=Health, tags=["ops"], responses=errors(422), summary="The process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, tags=["ops"], responses={**errors(422), 503: {"model": Readiness}},
             summary="Model loaded, its thread not stuck, audit log writable, batcher running (503 says what is not)")
    async def readyz():
        checks = service.readiness()
        ready = not any(v.startswith("not ready") for v in checks.values())
        return SafeJSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        service.metrics.pending.set(service.batcher.pending)
        service.readiness()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard():
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'",
                                           "Cache-Control": "no-store"})

    @app.get("/dashboard/app.js", include_in_schema=False)
    async def dashboard_script():
        return Response(SCRIPT, media_type="text/javascript", headers={"Cache-Control": "no-store"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():  # browsers ask for it; no icon, and no 404 in their console
        return Response(status_code=204)

    @app.get("/dashboard/data", include_in_schema=False)
    async def dashboard_data():
        return SafeJSONResponse(service.dashboard_summary(), headers={"Cache-Control": "no-store"})

    return app


def moderation_result(result: dict) -> dict:
    """OpenAI's moderation result for one decision: flagged unless ALLOW; the routed category carries
    the score 1 - p(ALLOW) (1.0 when the gate could not decide, even if the head had: a failed audit write)."""
    flagged = result["decision"] != "ALLOW"
    probs = result.get("probabilities") or {}
    failed = "ALLOW" not in probs or "fail_closed" in (result.get("flags") or [])
    score = 1.0 if failed else round(1.0 - float(probs["ALLOW"]), 6)
    category = result.get("category")
    return {
        "flagged": flagged,
        "categories": {c: flagged and c == category for c in ROUTE_CATEGORIES},
        "category_scores": {c: (score if c == category else 0.0) for c in ROUTE_CATEGORIES},
        "so8t": {k: result.get(k) for k in ("decision", "request_id", "human_required", "category", "escalation_id",
                                            "escalation_status", "flags", "error")},
    }
