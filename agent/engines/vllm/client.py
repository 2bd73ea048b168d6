"""Instance-side clients of the connector's local sockets (asyncio).

`SocketClient` sends one command frame and awaits its reply (one command at a time per
connection; a small pool lets several migrations copy blocks concurrently).
`SnapshotFeed` keeps the scheduler's latest per-step snapshot and wakes waiters on change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from agent.engines.vllm.wire import read_frame, write_frame
from llumctl.errors import EngineError

log = logging.getLogger(__name__)


class SocketClient:
    def __init__(self, path: str, pool_size: int = 1) -> None:
        self._path = path
        self._pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._pool_size = pool_size
        self._ids = itertools.count()

    async def connect(self) -> None:
        for _ in range(self._pool_size):
            self._pool.put_nowait(await asyncio.open_unix_connection(self._path))

    async def call(
        self, header: dict[str, Any], payload: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        reader, writer = await self._pool.get()
        try:
            await write_frame(writer, {**header, "id": next(self._ids)}, payload)
            reply, body = await read_frame(reader)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise EngineError(f"engine connector socket failed: {exc}") from None
        finally:
            self._pool.put_nowait((reader, writer))
        if not reply.get("ok"):
            raise EngineError(f"connector op {header['op']} failed: {reply.get('error')}")
        return reply, body

    async def close(self) -> None:
        while not self._pool.empty():
            _, writer = self._pool.get_nowait()
            writer.close()


class SnapshotFeed:
    """Latest scheduler snapshot, pushed by the connector after every step."""

    def __init__(self, path: str) -> None:
        self._path = path
        self.latest: dict[str, Any] = {
            "seq": 0, "free": 0, "total": 0, "requests": [], "held": {}, "held_outputs": {},
        }  # fmt: skip
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self._path)
        await write_frame(writer, {"op": "subscribe"})
        self._writer = writer
        self._task = asyncio.create_task(self._pump(reader))

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self.latest, _ = await read_frame(reader)
                self._changed.set()
                self._changed = asyncio.Event()
        except (ConnectionError, asyncio.IncompleteReadError):
            log.warning("engine snapshot feed closed")

    async def wait_change(self, timeout_s: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    def row(self, key: str) -> dict[str, Any] | None:
        for row in self.latest["requests"]:
            if row["key"] == key:
                return dict(row)
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()
