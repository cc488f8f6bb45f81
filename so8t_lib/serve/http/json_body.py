"""Request bodies read as JSON whose objects give each key once (``core.json_objects``).

Starlette's ``Request.json`` keeps the last of a repeated key; a proxy, a WAF or a log reader in front of the gate
may keep the first, so ``{"user_request": <harmful>, "user_request": <harmless>}`` was decided on the one the
others did not see. Every route reads its body through ``UniqueKeysRoute``; the refusal is a 422
(``errors.unreadable_body``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from ...core.json_objects import unique_keys


class UniqueKeysRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=unique_keys)
        return self._json


class UniqueKeysRoute(APIRoute):
    """An ``APIRoute`` whose handler reads the body with ``UniqueKeysRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def unique_keys_handler(request: Request) -> Response:
            return await handler(UniqueKeysRequest(request.scope, request.receive))

        return unique_keys_handler
