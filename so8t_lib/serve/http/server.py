"""Running a Service under uvicorn: the listening socket and the server settings, shared by
``so8t serve``, the tests and the load benchmark so they all measure the same thing."""

from __future__ import annotations

import socket

import uvicorn

from ..config import RESPONSE_MARGIN_S
from .app import create_app
from .service import Service


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket (port 0: any free port). It is made with ``IPPROTO_TCP`` on purpose:
    asyncio sets TCP_NODELAY only on sockets that declare it, and without it every answer on a kept-alive
    connection waits about 40 ms for the client's delayed ACK (Nagle)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class GateServer(uvicorn.Server):
    """uvicorn whose shutdown (SIGTERM) starts the service's own deadline at once: at ``shutdown_timeout_s`` the
    service answers what is still in flight with its JSON 503 shutting_down. uvicorn's own grace ends
    ``RESPONSE_MARGIN_S`` later, only as a backstop: what it cancels gets a bare plain-text 500."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.begin_shutdown()
        await super().shutdown(sockets)


def uvicorn_server(service: Service) -> uvicorn.Server:
    """uvicorn for this service: SIGTERM stops taking connections, waits up to ``service.shutdown_timeout_s`` for
    requests in flight, answers the rest 503 shutting_down, and the app's shutdown closes the agent; all within
    ``service.stop_budget_s`` (docs/serving.md)."""
    config = uvicorn.Config(create_app(service), log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=service.config.shutdown_timeout_s + RESPONSE_MARGIN_S)
    return GateServer(config, service)
