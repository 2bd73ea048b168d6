"""Listening sockets for the daemons' HTTP servers (controller, agent, instance)."""

from __future__ import annotations

import socket
from typing import Any

from llumctl.errors import InputError

# How long our servers keep an idle keep-alive connection: far longer than any client's
# pool keeps one (httpx: 5 s). With equal limits (uvicorn's default is also 5 s), a client
# can send a request on a connection the server is closing at that instant; the request
# then fails with "server disconnected" before the server ever read it.
KEEP_ALIVE_S = 75


def bind_tcp(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn's `sockets=[...]` (uvicorn starts listening on it).

    Token streams are many small writes: without TCP_NODELAY, which accepted connections
    inherit from this socket, Nagle holds each write until the peer's delayed ACK, adding
    ~40 ms to a request's first token and bunching the rest (measured: first token of a
    tiny-model request 43 ms -> 7 ms at the instance API).
    Binding early also holds the port while a slow start-up (an engine load) runs.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def server_config(app: Any, host: str, port: int) -> Any:
    """The uvicorn config every llumctl daemon serves with (one place for its settings)."""
    import uvicorn

    # lifespan="on": the apps start their background work (the controller's policy loop)
    # in the lifespan; uvicorn's default ("auto") logs a failing lifespan at info level and
    # serves on without it, a daemon that answers but never acts. This fails the start.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="on",
    )
