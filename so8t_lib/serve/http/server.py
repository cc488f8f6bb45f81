"""Running a Service under uvicorn: the listening socket and the server settings, shared by
``so8t serve``, the tests and the load benchmark so they all measure the same thing."""

from __future__ import annotations

import socket

import uvicorn

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


def uvicorn_server(service: Service) -> uvicorn.Server:
    """uvicorn for this service: SIGTERM waits up to ``service.shutdown_timeout_s`` for requests in flight,
    then the app's shutdown decides what is still queued and closes the agent."""
    config = uvicorn.Config(create_app(service), log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=service.config.shutdown_timeout_s)
    return uvicorn.Server(config)
