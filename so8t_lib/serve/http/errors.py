"""The service's errors as JSON ``{"error": {"type", "message"}}`` naming the problem: the error class the routes
raise, the response that carries it, and the wording of what FastAPI found wrong with a request."""

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ...core.json_objects import RepeatedKey


class ApiError(HTTPException):
    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        super().__init__(status, message, headers)
        self.kind = kind


class SafeJSONResponse(JSONResponse):
    """UTF-8 JSON; text the client sent that cannot be UTF-8 (a lone surrogate) is escaped, not a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, kind: str, message: str, headers: dict | None = None) -> SafeJSONResponse:
    return SafeJSONResponse({"error": {"type": kind, "message": message}}, status, headers=headers)


KINDS = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "request_too_large", 422: "invalid_request", 429: "rate_limited",
         503: "unavailable"}


MAX_LOCATION_CHARS = 64  # of each part of a problem's location: an unknown field's name is the client's text


def schema_problems(exc: RequestValidationError) -> str:
    """Each schema problem as 'where: what' (never the value: it may be megabytes of hostile text; nor more than
    the start of a field name the client made up)."""
    parts = []
    for err in exc.errors()[:10]:
        if err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'cannot be parsed')})")
            continue
        where = ".".join(_short(str(p)) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _short(text: str) -> str:
    return text if len(text) <= MAX_LOCATION_CHARS else text[:MAX_LOCATION_CHARS] + "…"


def _query_names(dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is an error, not silently ignored (a typo such as
    ?stauts=open would otherwise list every case)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown query parameter(s) {unknown}; this route takes "
                       f"{sorted(known) or 'none'}")


JSON_TYPE = "application/json"


def unreadable_body(exc: HTTPException) -> tuple[int, str, str] | None:
    """(status, kind, message) for a body FastAPI could not read: bytes that are not text stay 400; text Python's
    JSON parser gives up on (nested deeper than its recursion limit, an integer of thousands of digits) is
    JSON this service cannot take, a 422 like any other invalid JSON."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, RepeatedKey):  # readers in front of the gate may keep the other value
        return 422, "invalid_request", f"the body is refused: {cause}; JSON readers differ on which one counts, say it once"
    if isinstance(cause, RecursionError | ValueError) and not isinstance(cause, UnicodeError):
        return 422, "invalid_request", (f"the body is not JSON this service can read ({type(cause).__name__}: "
                                        f"{str(cause)[:200]}): nested too deep, or a number too long")
    return 400, "invalid_request", f"the body cannot be read: {type(cause).__name__}: {str(cause)[:200]}"


def content_type_hint(request: Request) -> str:
    """A note for a body that failed the schema because it was not sent as JSON (``curl -d`` sends a form): the
    schema's message alone would blame the fields."""
    given = request.headers.get("content-type", "")
    media = given.split(";")[0].strip().lower()  # what FastAPI (0.132 on) reads as JSON, and nothing else
    json_like = media == JSON_TYPE or (media.startswith("application/") and media.endswith("+json"))
    if request.method not in ("POST", "PUT", "PATCH") or json_like:
        return ""
    return f"send Content-Type: {JSON_TYPE} (got {given[:80]!r}); "
