"""The llumlet: an instance's load reporter and its migration coordinator.

Load: it turns the engine's per-step state into the instance's `InstanceLoad` (the same
dataclass the policy reads; freeness is computed by `llumctl.policy`, never here) and
pushes a `LoadReport` to the controller on change (at most every `report_min_interval_s`)
and at least every `report_period_s`.

Migration (design.md §4), source role, per request R to destination B:
  1. reserve room on B (`/migrate-in/reserve`), or abort (`no-room`, `dst-unreachable`);
  2. pre-copy: send R's full blocks while R keeps decoding, repeat for newly filled
     blocks until the delta is at most one block (or a stage limit);
  3. stop R (the engine keeps its blocks); 4. send the last full blocks;
  5. B resumes R (`/migrate-in/{id}/resume`) from the staged blocks and answers once R
     produced its first token there; 6. commit: free R's blocks, end R's stream here with
     `migrated(to=B, at=k)`.
Every failure is a `MigrationAbort` reason. Before the stop, R simply keeps running here;
after the stop (B failed to resume), R is resumed here from its own kept blocks (prefix
cache hit), so the client still gets exactly the tokens of an unmigrated run.
`mode="recompute"` skips steps 2 and 4 (B recomputes all tokens) and `mode="blocking"`
skips step 2 (all blocks copied after the stop): the benchmark baselines. A request still
waiting in the engine's queue always moves in `recompute` mode: it has no KV to copy (the
policy moves such requests first, see `llumctl.policy.migration.movable_queued`).
The destination role lives in `agent.llumlet_in`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from agent.engines.base import Engine, PreparedRequest, StoppedRequest
from agent.streams import RequestStream, StreamRegistry
from agent.transfer import KvSender, KvTransport
from llumctl.errors import (
    ConnectionFailed,
    EngineError,
    LlumctlError,
    MigrationError,
    NotFoundError,
)
from llumctl.policy.freeness import blocks_for_tokens
from llumctl.policy.migration import select_candidates
from llumctl.protocol import GenerateRequest, MigrationResult, bearer, to_json_dict

log = logging.getLogger(__name__)

# Pre-copy stops when at most this many full blocks remain to send after the stop.
MAX_DELTA_BLOCKS = 1
MAX_NUM_STAGES = 8
HTTP_TIMEOUT_S = 30.0
# The destination answers a resume after the first token (a full prefill in recompute mode);
# it gives up (and drops its copy) after the time the source allows, which the source then
# waits for plus a margin for the answer to come back: the destination decides first.
RESUME_TIMEOUT_S = 170.0
RESUME_REPLY_MARGIN_S = 10.0


class MigrationAbort:
    """Stable reason names of migrations that did not commit."""

    UNKNOWN_REQUEST = "unknown-request"
    FINISHED = "finished"  # R finished (or was aborted) before the stop
    PREEMPTED = "preempted"  # R lost its blocks on the source during pre-copy
    NO_ROOM = "no-room"  # B has no room for R's blocks
    INCOMPATIBLE = "incompatible"  # different model/dtype/block size/layout
    DST_UNREACHABLE = "dst-unreachable"
    DST_FAILED = "dst-failed"  # B failed during the migration
    SOURCE_FAILED = "source-failed"  # A's own engine failed a step (read, stop, resume)
    TRANSFER_FAILED = "transfer-failed"
    BUSY = "already-migrating"


@dataclass
class RequestRecord:
    """What the instance knows about a request it serves (for migration and listing)."""

    generate: GenerateRequest
    prepared: PreparedRequest
    # Output tokens R made on earlier instances (migrated in); its stream here holds the rest.
    previous_output_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class MigrationLimits:
    """How long one migration's steps may take (the `/migrate` body's fields)."""

    # B's first token of the resumed R, before B gives up and R goes on here.
    resume_timeout_s: float = RESUME_TIMEOUT_S
    # This engine confirming the stop (None: the engine's own default); past it the
    # engine ends this attempt of R and R goes on here. 0 fails every stop (tests).
    stop_timeout_s: float | None = None
    # Test hook: pre-copy held after its first stage until R ends or this passes.
    pause_s: float = 0.0


# Starts a runner that feeds a request's stream from an engine output iterator.
StartRunner = Callable[[str, Any], None]


class MigrationSource:
    def __init__(
        self,
        instance_id: str,
        engine: Engine,
        streams: StreamRegistry,
        records: dict[str, RequestRecord],
        transport: KvTransport,
        secret: str,
        start_runner: StartRunner,
        arriving: set[str] | None = None,
    ) -> None:
        self.instance_id = instance_id
        # Requests still migrating in (the destination role's set): not movable yet.
        self.arriving = arriving if arriving is not None else set()
        self.engine = engine
        self.streams = streams
        self.records = records
        self.transport = transport
        self.secret = secret
        self.start_runner = start_runner
        self.migrating: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        """The session every migration calls its destinations with, opened at first use
        (in the serving loop). One per instance: building an HTTP client per migration
        (httpx, 55 ms of CPU each on this project's machine, in this process's event loop)
        stopped every stream of the source instance at the start of every migration."""
        if self._http is None:
            self._http = aiohttp.ClientSession(headers=bearer(self.secret))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def check(self, request_id: str) -> RequestRecord:
        """404 for an unknown or finished request, 409 for one that cannot migrate."""
        stream = self.streams.find(request_id)
        record = self.records.get(request_id)
        if stream is None or record is None:
            raise NotFoundError(f"unknown request {request_id!r}")
        if stream.is_ended:
            raise NotFoundError(f"request {request_id!r} already finished on this instance")
        refusal = record.prepared.sampling.migration_refusal()
        if refusal is not None:
            raise MigrationError(f"request {request_id} cannot migrate: {refusal}", refusal)
        if request_id in self.migrating or request_id in self.arriving:
            raise MigrationError(f"request {request_id} is already migrating", MigrationAbort.BUSY)
        return record

    def pick(
        self,
        load: Any,
        num_requests: int,
        selector: str,
        *,
        queued_first: bool = True,
        max_num_blocks: int | None = None,
    ) -> list[str]:
        # A request that just migrated in and has not started here is not moved on: its
        # source still waits for its first token here (a queued request can wait a while).
        busy = self.migrating | self.arriving
        picked = select_candidates(
            load,
            num_requests + len(busy),
            selector,
            queued_first=queued_first,
            max_num_blocks=max_num_blocks,
        )
        return [r for r in picked if r not in busy][:num_requests]

    async def migrate(
        self, request_id: str, dst_url: str, dst_id: str, mode: str,
        limits: MigrationLimits = MigrationLimits(),
    ) -> MigrationResult:  # fmt: skip
        record = self.check(request_id)
        self.migrating.add(request_id)
        migration = _Migration(self, record, dst_url, dst_id, mode, limits)
        try:
            return await migration.run()
        except LlumctlError as exc:
            reason = abort_reason(exc)
            log.info("migration of %s to %s aborted: %s (%s)", request_id, dst_id, reason, exc)
            return migration.result("aborted", reason=reason)
        finally:
            self.migrating.discard(request_id)


def abort_reason(exc: LlumctlError) -> str:
    """The named reason of a migration that failed with `exc`: the error's own, else the
    side that failed. An engine error here comes from this instance's own engine (the
    destination's failures reach us as HTTP answers or transfer errors, each named)."""
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    if isinstance(exc, EngineError):
        return MigrationAbort.SOURCE_FAILED
    return MigrationAbort.DST_FAILED


def cut_at_stream(stopped: StoppedRequest, stream: RequestStream) -> StoppedRequest:
    """The stop as the client sees it: R's outputs up to the end of its stream here.

    The stream, not the engine, holds what the client has read or will read, and the
    destination must continue right after its last token. Engines cut at the tokens their
    reader took, so the two agree; should an engine cut elsewhere (the sim engine once
    cut at the tokens its steps produced), the stream wins and the staged blocks stop at
    the cut, rather than the migration failing after the stop or the controller splicing
    a gap or a repeat into the client's stream.
    """
    outputs = tuple(stopped.output_token_ids[: stream.first_index]) + tuple(stream.token_ids())
    if outputs == stopped.output_token_ids:
        return stopped
    log.warning(
        "request %s: the engine stopped at %d output tokens, its stream holds %d; "
        "cutting at the stream",
        stopped.request_id, len(stopped.output_token_ids), len(outputs),
    )  # fmt: skip
    # KV is taken only for positions whose tokens, and all before them, are the ones the
    # destination resumes with, and never for the last token (the next step computes it).
    engine_outputs = stopped.output_token_ids
    num_same = next(
        (i for i, (a, b) in enumerate(zip(outputs, engine_outputs, strict=False)) if a != b),
        min(len(outputs), len(engine_outputs)),
    )
    num_prompt = len(stopped.prompt_token_ids)
    num_kv_tokens = min(stopped.num_kv_tokens, num_prompt + num_same, num_prompt + len(outputs) - 1)
    return replace(stopped, output_token_ids=outputs, num_kv_tokens=num_kv_tokens)


class _Migration:
    """One request's live (or recompute) migration, source side."""

    def __init__(
        self, src: MigrationSource, record: RequestRecord, dst_url: str, dst_id: str,
        mode: str, limits: MigrationLimits,
    ) -> None:  # fmt: skip
        self.src, self.record, self.mode = src, record, mode
        self.limits = limits
        # A copy: the test pause is spent by its one use.
        self.pause_s = limits.pause_s
        self.dst_url, self.dst_id = dst_url.rstrip("/"), dst_id
        self.rid = record.prepared.request_id
        self.mid = f"m-{uuid.uuid4().hex[:12]}"
        self.num_stages = self.num_blocks = self.at = 0
        self.downtime_ms = 0.0
        # Set once B has answered the resume: from then on R is B's, never called off.
        self.is_committed = False
        self.sender: KvSender | None = None

    def result(self, status: str, reason: str = "") -> MigrationResult:
        return MigrationResult(
            self.rid, self.src.instance_id, self.dst_id, status, reason, self.mode,
            self.downtime_ms, self.num_stages, self.num_blocks, self.at,
        )  # fmt: skip

    async def _post(
        self, path: str, body: dict[str, Any], timeout_s: float = HTTP_TIMEOUT_S
    ) -> Any:
        url = f"{self.dst_url}{path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self.src.http().post(url, json=body, timeout=timeout) as resp:
                status, data = resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise MigrationError(
                f"destination {self.dst_url}: {exc!r}", MigrationAbort.DST_UNREACHABLE
            ) from None
        if status >= 400:
            try:
                err = json.loads(data).get("error", {})
            except (ValueError, AttributeError):
                err = {}
            reason = err.get("reason") or MigrationAbort.DST_FAILED
            message = err.get("message") or data.decode(errors="replace")[:300]
            raise MigrationError(f"destination: {message}", reason)
        return json.loads(data)

    async def run(self) -> MigrationResult:
        if self.mode != "recompute" and self._is_queued():
            # Waiting in the engine's queue, R has no KV worth copying: the destination
            # prefills it (as this engine would have), and the move costs no copy at all.
            self.mode = "recompute"
        reply = await self._post("/migrate-in/reserve", self._reserve_body())
        try:
            if self.mode != "recompute":
                self.sender = await self._connect(reply["kv_address"])
            if self.mode == "live":
                await self._precopy()
            return await self._stop_and_resume()
        except BaseException:
            if not self.is_committed:
                await self._cancel()
            raise
        finally:
            if self.sender is not None:
                await self.sender.close()

    def _is_queued(self) -> bool:
        return any(r.request_id == self.rid for r in self.src.engine.load().queued)

    def _reserve_body(self) -> dict[str, Any]:
        spec = getattr(self.src.engine, "spec", None)
        prepared = self.record.prepared
        stream = self.src.streams.get(self.rid)
        num_tokens = len(prepared.prompt_token_ids) + prepared.sampling.max_tokens
        block_size = spec.block_size_tokens if spec else 16
        return {
            "migration_id": self.mid,
            "request_id": self.rid,
            "src_instance": self.src.instance_id,
            "fingerprint": spec.fingerprint if spec else "",
            "mode": self.mode,
            # Room for what R holds now plus a block of growth; the rest is the
            # destination's usual business (it may preempt like for any request).
            "num_blocks": min(
                blocks_for_tokens(num_tokens, block_size),
                blocks_for_tokens(len(prepared.prompt_token_ids) + stream.next_index, block_size)
                + 1,
            ),
        }

    async def _connect(self, address: str) -> KvSender:
        try:
            return await self.src.transport.connect(address)
        except ConnectionFailed as exc:
            raise MigrationError(str(exc), MigrationAbort.DST_UNREACHABLE) from None

    async def _send(self, first: int, num: int) -> None:
        if num <= 0:
            return
        assert self.sender is not None
        chunk = await self.src.engine.read_kv(self.rid, first, num)
        await self.sender.send(self.mid, chunk)
        self.num_blocks += num

    async def _precopy(self) -> None:
        sent = 0
        while self.num_stages < MAX_NUM_STAGES:
            num_full = await self.src.engine.num_full_blocks(self.rid)
            if self.num_stages > 0 and num_full - sent <= MAX_DELTA_BLOCKS:
                return
            t0 = time.perf_counter()
            await self._send(sent, num_full - sent)
            log.info("migration %s stage %d: blocks %d..%d in %.1f ms", self.mid, self.num_stages,
                     sent, num_full, (time.perf_counter() - t0) * 1000)  # fmt: skip
            sent = num_full
            self.num_stages += 1
            if self.pause_s:
                await self._debug_pause()

    async def _debug_pause(self) -> None:
        """Test hook: hold pre-copy until R ends here or `pause_s` passes."""
        stream = self.src.streams.get(self.rid)
        deadline = time.monotonic() + self.pause_s
        self.pause_s = 0.0
        while not stream.is_ended and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _stop_and_resume(self) -> MigrationResult:
        engine, stream = self.src.engine, self.src.streams.get(self.rid)
        t_stop = time.perf_counter()
        try:
            stopped = await engine.stop(self.rid, self.limits.stop_timeout_s)
        except EngineError:
            # No confirmed stop: the engine ended this attempt of R for good (the base's
            # contract), so R goes on here from what its stream holds, recomputed.
            self._resume_here(self.record.previous_output_ids + tuple(stream.token_ids()))
            raise
        t_stopped = time.perf_counter()
        spec = getattr(engine, "spec", None)
        stopped = cut_at_stream(stopped, stream)
        self.at = len(stopped.output_token_ids)
        num_staged_tokens = stopped.num_kv_tokens if self.mode != "recompute" else 0
        try:
            if self.mode != "recompute":
                # The last delta: the blocks filled since the pre-copy and the partial
                # last block, whose KV stopped changing with the stop.
                num_blocks = stopped.num_kv_blocks(spec.block_size_tokens if spec else 16)
                await self._send(self.num_blocks, num_blocks - self.num_blocks)
            await self._post(
                f"/migrate-in/{self.mid}/resume",
                self._resume_body(stopped, num_staged_tokens),
                self.limits.resume_timeout_s + RESUME_REPLY_MARGIN_S,
            )
        except BaseException:
            # B gave up or cannot be heard: R goes on here, and `run` cancels the
            # migration on B, which drops any copy of R that B started.
            self._resume_here(stopped.output_token_ids)
            raise
        self.downtime_ms = (time.perf_counter() - t_stop) * 1000
        log.info(
            "migration %s: stop %.1f ms, downtime %.1f ms",
            self.mid,
            (t_stopped - t_stop) * 1000,
            self.downtime_ms,
        )
        # Committed: R runs on B from here on, whatever happens to A's copy of its blocks.
        self.is_committed = True
        stream.migrated(self.dst_id, self.dst_url)
        try:
            await engine.release(self.rid)
        except LlumctlError as exc:
            log.warning("migration %s: releasing %s here failed: %s", self.mid, self.rid, exc)
        return self.result("committed")

    def _resume_body(self, stopped: Any, num_staged_tokens: int) -> dict[str, Any]:
        original = self.record.generate
        request = replace(
            original, prompt=None, messages=None, prompt_token_ids=stopped.prompt_token_ids
        )
        return {
            "request": to_json_dict(request),
            "previous_output_ids": list(stopped.output_token_ids),
            "num_staged_tokens": num_staged_tokens,
            "timeout_s": self.limits.resume_timeout_s,
        }

    def _resume_here(self, previous: tuple[int, ...]) -> None:
        """B failed after the stop, or the stop failed: continue R here (blocks it kept
        are a prefix-cache hit)."""
        engine = self.src.engine
        outputs = engine.resume(
            f"{self.mid}-back",
            self.record.prepared,
            previous_output_ids=previous,
            num_staged_tokens=0,
        )
        self.src.start_runner(self.rid, outputs)
        asyncio.ensure_future(engine.release(self.rid))

    async def _cancel(self) -> None:
        url = f"{self.dst_url}/migrate-in/{self.mid}/cancel"
        try:
            async with self.src.http().post(url, timeout=aiohttp.ClientTimeout(total=5.0)) as r:
                await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass  # B is gone: its reservation expires on its own
