"""KV transfer between instances: one seam (`KvTransport`), one implementation (TCP).

The llumlet of the source sends `KvChunk`s of a migration to the destination's transport
server, which hands each to the destination engine (`write_kv`) and acknowledges it, so the
source knows every block is staged before it asks the destination to resume. NIXL or NCCL
transports (GPU to GPU) would implement the same seam.

TCP is authenticated by the cluster secret without sending it: the server opens with a
random nonce, the client answers HMAC-SHA256(secret, nonce); a wrong answer closes the
connection. Frames are `agent.engines.vllm.wire` frames (JSON header + raw KV bytes).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.engines.base import KvChunk
from agent.engines.vllm.wire import read_frame, write_frame
from llumctl.errors import AuthError, ConnectionFailed, LlumctlError, MigrationError

log = logging.getLogger(__name__)

ChunkHandler = Callable[[str, KvChunk], Awaitable[None]]
NONCE_BYTES = 16
CONNECT_TIMEOUT_S = 5.0
ACK_TIMEOUT_S = 60.0


@dataclass
class TransferStats:
    """Bytes and time spent sending, for throughput reports."""

    num_bytes: int = 0
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.num_bytes / self.seconds / 1e6 if self.seconds else 0.0


class KvSender(abc.ABC):
    """A connection to one destination."""

    @abc.abstractmethod
    async def send(self, migration_id: str, chunk: KvChunk) -> None:
        """Deliver a chunk; returns once the destination has staged it."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class KvTransport(abc.ABC):
    """The transfer seam: a server for incoming chunks, senders for outgoing ones."""

    @abc.abstractmethod
    async def serve(self, on_chunk: ChunkHandler) -> str:
        """Start receiving; return the address peers connect to."""

    @abc.abstractmethod
    async def connect(self, address: str) -> KvSender: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


def _answer(secret: str, nonce: bytes) -> bytes:
    return hmac.new(secret.encode(), nonce, hashlib.sha256).digest()


class TcpSender(KvSender):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: TransferStats
    ):
        self._reader, self._writer, self._stats = reader, writer, stats
        self._lock = asyncio.Lock()

    async def send(self, migration_id: str, chunk: KvChunk) -> None:
        header = {"mig": migration_id, "first": chunk.first_block, "num": chunk.num_blocks}
        start = time.perf_counter()
        async with self._lock:
            try:
                await write_frame(self._writer, header, chunk.payload)
                reply, _ = await asyncio.wait_for(read_frame(self._reader), ACK_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                raise MigrationError(f"KV transfer failed: {exc!r}", "transfer-failed") from None
        self._stats.num_bytes += len(chunk.payload)
        self._stats.seconds += time.perf_counter() - start
        if not reply.get("ok"):
            raise MigrationError(f"destination refused blocks: {reply.get('error')}", "dst-failed")

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


class TcpTransport(KvTransport):
    def __init__(self, secret: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self._secret, self._host, self._port = secret, host, port
        self._server: asyncio.Server | None = None
        self.stats = TransferStats()

    async def serve(self, on_chunk: ChunkHandler) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if await self._authenticate(reader, writer):
                    await self._receive(reader, writer, on_chunk)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(handle, self._host, self._port)
        port = self._server.sockets[0].getsockname()[1]
        return f"{self._host}:{port}"

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        nonce = os.urandom(NONCE_BYTES)
        writer.write(nonce)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(32), CONNECT_TIMEOUT_S)
        if not hmac.compare_digest(answer, _answer(self._secret, nonce)):
            log.warning("KV transfer: rejected a connection with a wrong secret")
            return False
        writer.write(b"OK")
        await writer.drain()
        return True

    async def _receive(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_chunk: ChunkHandler
    ) -> None:
        while True:
            header, payload = await read_frame(reader)
            chunk = KvChunk(int(header["first"]), int(header["num"]), payload)
            reply: dict[str, Any]
            try:
                await on_chunk(str(header["mig"]), chunk)
                reply = {"ok": True}
            except LlumctlError as exc:
                reply = {"ok": False, "error": str(exc)}
            await write_frame(writer, reply)

    async def connect(self, address: str) -> KvSender:
        host, _, port = address.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT_S
            )
            nonce = await asyncio.wait_for(reader.readexactly(NONCE_BYTES), CONNECT_TIMEOUT_S)
            writer.write(_answer(self._secret, nonce))
            await writer.drain()
            ok = await asyncio.wait_for(reader.readexactly(2), CONNECT_TIMEOUT_S)
        except asyncio.IncompleteReadError:
            raise AuthError(f"KV transfer peer {address} rejected the cluster secret") from None
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            raise ConnectionFailed(f"cannot reach KV transfer peer {address}: {exc!r}") from None
        if ok != b"OK":
            raise AuthError(f"KV transfer peer {address} rejected the cluster secret")
        return TcpSender(reader, writer, self.stats)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
