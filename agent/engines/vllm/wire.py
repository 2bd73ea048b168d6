"""Framing for the local sockets between an instance and its engine processes.

One frame = 4-byte header length, 8-byte payload length (big endian), a JSON header, then
the payload bytes (KV blocks). The connector side (threads inside vLLM's processes) uses
the blocking functions; the instance side (asyncio) uses the async ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

_PREFIX = struct.Struct(">IQ")


def encode(header: dict[str, Any], payload: bytes | memoryview = b"") -> list[bytes | memoryview]:
    head = json.dumps(header, separators=(",", ":")).encode()
    return [_PREFIX.pack(len(head), len(payload)) + head, payload]


def send_frame(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    head, body = encode(header, payload)
    sock.sendall(head)
    if body:
        sock.sendall(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("peer closed the socket")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    head_len, body_len = _PREFIX.unpack(_recv_exact(sock, _PREFIX.size))
    header = json.loads(_recv_exact(sock, head_len))
    return header, _recv_exact(sock, body_len) if body_len else b""


async def write_frame(
    writer: asyncio.StreamWriter, header: dict[str, Any], payload: bytes = b""
) -> None:
    for part in encode(header, payload):
        if part:
            writer.write(part)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    head_len, body_len = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    header = json.loads(await reader.readexactly(head_len))
    payload = await reader.readexactly(body_len) if body_len else b""
    return header, payload


def serve_unix(path: str, handle: Callable[[socket.socket], None]) -> None:
    """Accept connections on a Unix socket at `path`, each handled on its own daemon thread
    (the engine-side connector halves run inside vLLM's processes, which own no event loop)."""
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
