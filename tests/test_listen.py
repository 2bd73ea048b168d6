"""The daemons' HTTP server settings (llumctl.listen) on a real uvicorn server."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from llumctl.listen import bind_tcp, server_config

REQUEST = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"


def test_an_idle_connection_outlives_a_clients_pool_expiry() -> None:
    # httpx keeps idle connections 5 s; uvicorn's default closes them after 5 s too, so a
    # request sent on a pooled connection at that moment could be lost. Ours stay open.
    app = FastAPI()
    app.get("/ping")(lambda: {"ok": True})
    sock = bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(REQUEST)
            assert b"200 OK" in conn.recv(4096)
            time.sleep(6.5)
            conn.sendall(REQUEST)
            assert b"200 OK" in conn.recv(4096)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
