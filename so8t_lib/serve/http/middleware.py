"""Three ASGI middlewares: the API key check on ``/v1/``, before anything else looks at a request; the
body size limit, enforced before anything parses the body; and the HTTP metrics (count and latency per
route and status), which also stamps each request's arrival time for the runtime's ``received_at``."""

from __future__ import annotations

import json
import time

from fastapi.security.utils import get_authorization_scheme_param
from starlette.exceptions import HTTPException
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServiceMetrics


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes (service.max_body_bytes)")


def error_bytes(kind: str, message: str) -> bytes:
    return json.dumps({"error": {"type": kind, "message": message}}).encode("utf-8")


class BodySizeLimit:
    """413 for a declared Content-Length over the limit (the body is never read), and for a body that
    grows past it while it is read (chunked uploads): the reader stops at the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = BodyTooLarge(self.max_bytes)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _answer(send, 400, "invalid_request", "Content-Length is not a number")
                return
            if size > self.max_bytes:
                await _answer(send, 413, "request_too_large", too_large.detail)
                return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except BodyTooLarge:
            if not started:
                await _answer(send, 413, "request_too_large", too_large.detail)


class RequireKey:
    """401 for a ``/v1/`` request without a known API key, before its body, its size or its query is looked
    at: a caller with no key learns nothing of a route's parameters and costs no JSON parsing. The route's own
    check then decides what the key's role may do (403).

    ``charge(key, path)`` then takes what a call on that path costs up front (the tokens taken, 0 for a path
    that is not rate-limited) or refuses it (an HTTPException with a ``kind``: 429): so every call on a charged
    path pays before its body is read, whatever refuses it later (400, 413, 422), and an empty bucket is
    answered before anything is parsed. What was taken is ``scope["state"]["charged"]``, for the route."""

    def __init__(self, app: ASGIApp, keys_of, charge=None, prefix: str = "/v1/") -> None:
        self.app, self.keys_of, self.prefix = app, keys_of, prefix  # keys_of(): the service's current ApiKeys
        self.charge = charge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        headers = [value for name, value in scope.get("headers") or [] if name == b"authorization"]
        scheme, token = get_authorization_scheme_param(headers[0].decode("latin-1") if headers else "")
        if len(headers) > 1:  # this check and the route's could read different ones: a key must be unambiguous
            message = "send one Authorization header, not several"
        elif scheme.lower() != "bearer" or not token:
            message = "send an API key: Authorization: Bearer <secret>"
        elif (key := self.keys_of().identify(token)) is None:
            message = "unknown API key"
        else:
            paid = self.charge(key, scope["path"]) if self.charge is not None else 0
            if isinstance(paid, HTTPException):
                headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (paid.headers or {}).items()]
                await _answer(send, paid.status_code, getattr(paid, "kind", "error"), paid.detail, headers)
                return
            scope.setdefault("state", {})["charged"] = paid
            await self.app(scope, receive, send)
            return
        await _answer(send, 401, "unauthorized", message, [(b"www-authenticate", b"Bearer")])


async def _answer(send: Send, status: int, kind: str, message: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = error_bytes(kind, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})  # any other token: "other"


class HttpMetrics:
    """so8t_http_requests_total and so8t_http_request_duration_seconds by route template and method (never the
    raw path or a client's made-up method, so the label set stays small); ``scope["state"]["received_at"]`` is
    the arrival time. A request answered before routing (413 by Content-Length) is labelled with the route its
    path matches."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, router: Router | None = None) -> None:
        self.app, self.metrics, self.router = app, metrics, router

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None and self.router is not None:
            route = next((r for r in self.router.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})["received_at"] = start
        status = {"code": 500}

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording)
        finally:
            self.metrics.in_flight.dec()
            route, method = self._route(scope), scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.http_requests.labels(method, route, str(status["code"])).inc()
            self.metrics.http_latency.labels(route).observe(time.perf_counter() - start)
