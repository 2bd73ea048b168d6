"""Destination role of the llumlet: reservations, staged KV, resume (design.md §4).

A reservation holds room for one incoming request until the source resumes it, cancels
it, or goes quiet for `idle_timeout_s` (source died): then the staged blocks are dropped,
so nothing leaks and nothing waits forever. The source decides whether a migration
commits: when the resumed request brings no first token in the time the source allows,
or the source cancels a migration it has resumed here, the copy here is aborted, since the
request goes on at the source.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from agent.engines.base import Engine, KvChunk, PreparedRequest
from agent.llumlet import RESUME_TIMEOUT_S, RequestRecord
from agent.streams import RequestStream, StreamRegistry
from llumctl.errors import EngineError, InputError, MigrationError, NotFoundError
from llumctl.protocol import EventType, GenerateRequest, StreamEvent, from_json_dict

log = logging.getLogger(__name__)


@dataclass
class Reservation:
    migration_id: str
    request_id: str
    num_blocks: int
    last_activity: float = field(default_factory=time.monotonic)


class MigrationDestination:
    def __init__(
        self, engine: Engine, streams: StreamRegistry, records: dict[str, RequestRecord],
        start_runner: Any, idle_timeout_s: float = 30.0,
    ) -> None:  # fmt: skip
        self.engine, self.streams, self.records = engine, streams, records
        self.start_runner = start_runner
        self.idle_timeout_s = idle_timeout_s
        self.reservations: dict[str, Reservation] = {}
        # Requests resumed here whose first token has not come yet: their migration in
        # has not committed, so none may migrate out (see `MigrationSource.check`).
        self.arriving: set[str] = set()
        # Migrations resumed here (id -> request id) whose request still runs: the source
        # may yet call one off (its resume call failed), and then this copy must go.
        self.resumed: dict[str, str] = {}
        self._janitor: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._janitor = asyncio.create_task(self._expire_loop())

    async def reserve(self, body: dict[str, Any], fingerprint: str) -> dict[str, Any]:
        mid, rid = str(body["migration_id"]), str(body["request_id"])
        if body.get("fingerprint") and fingerprint and body["fingerprint"] != fingerprint:
            raise MigrationError("source and destination engines differ", "incompatible")
        stream = self.streams.find(rid)
        if stream is not None and not stream.is_ended:
            raise MigrationError(f"request {rid} already runs here", "already-migrating")
        await self.engine.reserve(mid, int(body["num_blocks"]))
        self.reservations[mid] = Reservation(mid, rid, int(body["num_blocks"]))
        return {"migration_id": mid}

    def _get(self, mid: str) -> Reservation:
        res = self.reservations.get(mid)
        if res is None:
            raise NotFoundError(f"unknown or expired migration {mid!r}")
        res.last_activity = time.monotonic()
        return res

    async def on_chunk(self, mid: str, chunk: KvChunk) -> None:
        self._get(mid)
        await self.engine.write_kv(mid, chunk)

    async def resume(self, mid: str, body: dict[str, Any]) -> dict[str, Any]:
        res = self._get(mid)
        try:
            request = from_json_dict(GenerateRequest, body["request"])
            previous = tuple(int(t) for t in body["previous_output_ids"])
            timeout_s = float(body.get("timeout_s", RESUME_TIMEOUT_S))
            num_staged_tokens = int(body.get("num_staged_tokens", 0))
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"bad resume body: {exc}") from None
        if request.prompt_token_ids is None or request.request_id != res.request_id:
            raise InputError("resume needs the reserved request with its prompt_token_ids")
        if not 0 < timeout_s < math.inf or num_staged_tokens < 0:
            raise InputError("resume needs a positive timeout_s and num_staged_tokens >= 0")
        del self.reservations[mid]
        prepared = PreparedRequest(
            request.request_id, request.prompt_token_ids, request.sampling, request.priority
        )
        stream = RequestStream(
            request.request_id, first_index=len(previous),
            num_prompt_tokens=len(request.prompt_token_ids),
        )  # fmt: skip
        self.streams.create(stream)
        self.records[request.request_id] = RequestRecord(request, prepared, previous)
        outputs = self.engine.resume(
            mid, prepared, previous_output_ids=previous,
            num_staged_tokens=num_staged_tokens,
        )  # fmt: skip
        t0 = time.perf_counter()
        self.start_runner(request.request_id, outputs)
        self._forget_ended()
        self.resumed[mid] = request.request_id
        self.arriving.add(request.request_id)
        try:
            await self._first_output(stream, timeout_s)
        except MigrationError:
            await self._drop_copy(mid)
            raise
        finally:
            self.arriving.discard(request.request_id)
        log.info(
            "migration %s: first token %.1f ms after resume", mid, (time.perf_counter() - t0) * 1000
        )
        return {"ok": True, "first_token_ms": (time.perf_counter() - t0) * 1000}

    async def _first_output(self, stream: RequestStream, timeout_s: float) -> None:
        async def first() -> StreamEvent:
            async for event in stream.events(stream.first_index):
                return event
            raise AssertionError("a stream always ends with an end event")

        try:
            event = await asyncio.wait_for(first(), timeout_s)
        except asyncio.TimeoutError:
            raise MigrationError(
                f"resumed request produced no token in {timeout_s:g} s", "dst-failed"
            ) from None
        if event.type == EventType.ERROR:
            raise MigrationError(f"resume failed: {event.message}", "dst-failed")
        if event.type != EventType.TOKEN:
            # Aborted here (a cancel) before its first token: nothing runs here to commit to.
            raise MigrationError(f"resumed request ended here: {event.type.value}", "dst-failed")

    async def _drop_copy(self, mid: str) -> None:
        """Abort the request a called-off migration resumed here (it goes on at the
        source); its runner then ends the stream here."""
        rid = self.resumed.pop(mid, None)
        stream = self.streams.find(rid) if rid is not None else None
        if rid is None or stream is None or stream.is_ended:
            return
        log.warning("migration %s called off after resume: aborting %s here", mid, rid)
        try:
            await self.engine.abort(rid)
        except (EngineError, NotFoundError) as exc:
            log.warning("abort of %s: %s", rid, exc)

    def _forget_ended(self) -> None:
        for mid, rid in list(self.resumed.items()):
            stream = self.streams.find(rid)
            if stream is None or stream.is_ended:
                del self.resumed[mid]

    async def cancel(self, mid: str) -> None:
        await self._drop_copy(mid)
        self.reservations.pop(mid, None)
        try:
            await self.engine.cancel(mid)
        except EngineError as exc:
            log.warning("cancel of migration %s: %s", mid, exc)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout_s / 4))
            now = time.monotonic()
            for mid, res in list(self.reservations.items()):
                if now - res.last_activity > self.idle_timeout_s:
                    log.warning("migration %s: source went quiet; dropping its staging", mid)
                    await self.cancel(mid)

    @property
    def num_incoming(self) -> int:
        return len(self.reservations)
