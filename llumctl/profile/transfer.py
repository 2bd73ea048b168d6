"""Loopback TCP throughput: the rate llumlets' KV transport (TCP) gets on this machine."""

from __future__ import annotations

import socket
import threading
import time

CHUNK = 1 << 20


def loopback_transfer_gbps(total_bytes: int = 256 << 20) -> float:
    """Send `total_bytes` over a loopback TCP connection; the rate in Gb/s."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = [0]

    def sink() -> None:
        conn, _ = server.accept()
        with conn:
            while received[0] < total_bytes:
                data = conn.recv(CHUNK)
                if not data:
                    break
                received[0] += len(data)

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    payload = b"\x5a" * CHUNK
    with socket.create_connection(("127.0.0.1", port)) as client:
        start = time.perf_counter()
        sent = 0
        while sent < total_bytes:
            client.sendall(payload)
            sent += CHUNK
        thread.join(timeout=60)
        elapsed = time.perf_counter() - start
    server.close()
    return received[0] * 8 / elapsed / 1e9
