"""The simulated engine ("sim"): the simulator's instance model, stepped in real time.

`llumctl.sim.instance.SimInstance` decides every step (paged KV blocks, continuous
batching, preemption, per-step latency from a `LatencyProfile`); this engine sleeps each
step's modelled duration (divided by `speedup`) and then delivers that step's tokens, which
are deterministic (agent/engines/sim/tokens.py). Its KV is simulated: migration moves
block *counts*, taking `transfer_ms_per_block` per block, through the same llumlet
protocol as a real engine. It is always labelled `sim` (spec kind and fingerprint).

engine_args: `profile` (LatencyProfile keys), `speedup` (default 1.0),
`transfer_ms_per_block` (default from the profile's block size at 10 GB/s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.engines.base import (
    Engine,
    EngineLoad,
    EngineOutput,
    EngineSpec,
    KvChunk,
    PreparedRequest,
    StoppedRequest,
)
from agent.engines.sim import tokens
from llumctl.errors import ConfigError, InputError, MigrationError, NotFoundError
from llumctl.protocol import GenerateRequest
from llumctl.sim.instance import QUEUED, RUNNING, SimInstance, SimRequest
from llumctl.sim.profile import LatencyProfile, ProfileError

_TRANSFER_BYTES_PER_S = 10e9


@dataclass
class _Live:
    """A request this engine is serving: its sim twin and the outputs not yet read."""

    req: SimRequest
    prompt_ids: tuple[int, ...]
    # Output tokens the reader has taken (what the instance's stream holds): a stop for
    # migration cuts here, not at what the steps produced, which may wait in `outputs`.
    delivered: list[int]
    stop: tuple[str, ...]
    # Output tokens the steps produced (each token follows from its index).
    num_produced: int = 0
    outputs: asyncio.Queue[EngineOutput] = field(default_factory=asyncio.Queue)
    text: str = ""
    is_stopped: bool = False


class SimEngine(Engine):
    def __init__(self, instance_id: str, model: str, engine_args: dict[str, Any] | None = None):
        args = dict(engine_args or {})
        try:
            self.profile = LatencyProfile.from_dict(args.pop("profile", {}))
            self.speedup = float(args.pop("speedup", 1.0))
            default_ms = self.profile.block_bytes / _TRANSFER_BYTES_PER_S * 1000
            self.transfer_ms_per_block = float(args.pop("transfer_ms_per_block", default_ms))
        except (ProfileError, TypeError, ValueError) as exc:
            raise ConfigError(f"sim engine_args: {exc}") from None
        self.speedup = max(self.speedup, 1e-6)
        # Arguments meant for a real engine (dtype, max_model_len...) are accepted and
        # ignored, so one cluster.toml can switch engines.
        self.ignored_args = sorted(args)
        self.instance_id = instance_id
        self.model = model
        self._sim = SimInstance(instance_id, self.profile, model)
        self._live: dict[str, _Live] = {}
        self._held: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._num_generated = 0

    async def start(self) -> EngineSpec:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        p = self.profile
        return EngineSpec(
            kind="sim",
            model=self.model,
            block_size_tokens=p.block_size_tokens,
            num_total_blocks=p.num_total_blocks,
            max_model_len=p.max_model_len,
            fingerprint=f"sim|{self.model}|{p.name}|bs{p.block_size_tokens}",
        )

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for live in self._live.values():
            live.outputs.put_nowait(EngineOutput((), "", finish_reason="abort"))
        self._live.clear()

    # ---- requests ------------------------------------------------------------------
    async def prepare(self, request: GenerateRequest) -> PreparedRequest:
        given = [request.prompt is not None, request.prompt_token_ids is not None]
        given.append(request.messages is not None)
        if sum(given) != 1:
            raise InputError("give exactly one of prompt, prompt_token_ids, messages")
        if request.prompt_token_ids is not None:
            ids = tuple(request.prompt_token_ids)
        elif request.messages is not None:
            ids = tokens.tokenize(tokens.chat_text(request.messages))
        else:
            ids = tokens.tokenize(request.prompt or "")
        if not ids:
            raise InputError("the prompt is empty")
        if request.sampling.max_tokens < 1:
            raise InputError("max_tokens must be at least 1")
        limit = self.profile.max_model_len
        if len(ids) + request.sampling.max_tokens > limit:
            raise InputError(
                f"prompt ({len(ids)} tokens) plus max_tokens ({request.sampling.max_tokens}) "
                f"exceeds the model context ({limit})"
            )
        return PreparedRequest(request.request_id, ids, request.sampling, request.priority)

    def generate(
        self, request: PreparedRequest, *, previous_output_ids: Sequence[int] = ()
    ) -> AsyncIterator[EngineOutput]:
        live = self._new_live(request, previous_output_ids)
        self._sim.add(live.req)
        return self._outputs(live)

    def _new_live(self, request: PreparedRequest, previous: Sequence[int]) -> _Live:
        rid = request.request_id
        if rid in self._live:
            raise InputError(f"request {rid!r} is already running here")
        priority = request.priority
        req = SimRequest(
            rid,
            prompt_tokens=len(request.prompt_token_ids),
            output_tokens=request.sampling.max_tokens,
            priority=int(priority),
            arrival_time=time.monotonic(),
        )
        req.num_generated = len(previous)
        live = _Live(
            req, request.prompt_token_ids, list(previous), request.sampling.stop, len(previous)
        )
        live.text = "".join(tokens.token_text(t) for t in previous)
        self._live[rid] = live
        self._wake.set()
        return live

    async def _outputs(self, live: _Live) -> AsyncIterator[EngineOutput]:
        try:
            while True:
                out = await live.outputs.get()
                if live.is_stopped:
                    return  # what waits unread is dropped: the migration resumes from it
                if out.token_ids or out.finish_reason:
                    live.delivered.extend(out.token_ids)
                    yield out
                if out.finish_reason is not None:
                    return
        finally:
            if self._live.get(live.req.request_id) is live and not live.is_stopped:
                self._remove(live)

    async def abort(self, request_id: str) -> None:
        live = self._live.get(request_id)
        if live is None:
            raise NotFoundError(f"request {request_id!r} is not running")
        self._remove(live)
        live.outputs.put_nowait(EngineOutput((), "", finish_reason="abort"))

    def _remove(self, live: _Live) -> None:
        """Take a request out of the sim (running or queued) and free its blocks."""
        self._live.pop(live.req.request_id, None)
        req = live.req
        if req.state == RUNNING and req.instance is self._sim:
            self._sim.release(self._sim.stop(req))
        elif req.instance is self._sim and req.state == QUEUED:
            self._sim.remove_queued(req)

    def load(self) -> EngineLoad:
        view = self._sim.load(time.monotonic())
        return EngineLoad(
            view.num_used_blocks,
            view.running,
            view.queued,
            view.num_preempted,
            self._num_generated,
            self._sim.num_preempted_total,
            view.num_prefill_tokens,
        )

    # ---- the step loop ---------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            result = self._sim.step()
            if result is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(result.duration_s / self.speedup)
            finished = {id(r) for r in result.finished}
            for req in (*result.started, *result.decoded):
                live = self._live.get(req.request_id)
                if live is not None and live.req is req and not live.is_stopped:
                    self._deliver(live, is_last=id(req) in finished)

    def _deliver(self, live: _Live, *, is_last: bool) -> None:
        token = tokens.output_token(live.prompt_ids, live.num_produced)
        text = tokens.token_text(token)
        live.num_produced += 1
        live.text += text
        self._num_generated += 1
        reason = "length" if is_last else None
        if any(s in live.text for s in live.stop):
            reason = "stop"
        if reason is not None:
            self._live.pop(live.req.request_id, None)
            if not is_last:
                self._remove_running(live)
        live.outputs.put_nowait(EngineOutput((token,), text, finish_reason=reason))

    def _remove_running(self, live: _Live) -> None:
        req = live.req
        if req.state == RUNNING and req.instance is self._sim:
            self._sim.release(self._sim.stop(req))

    # ---- migration: source side ---------------------------------------------------------
    def _running(self, request_id: str) -> _Live:
        live = self._live.get(request_id)
        if live is None or live.is_stopped:
            raise MigrationError(f"request {request_id} is no longer running", "finished")
        if live.req.state != RUNNING:
            raise MigrationError(f"request {request_id} is queued or preempted", "preempted")
        return live

    async def num_full_blocks(self, request_id: str) -> int:
        live = self._running(request_id)
        num_tokens = len(live.prompt_ids) + len(live.delivered)
        return (num_tokens - 1) // self.profile.block_size_tokens

    async def read_kv(self, request_id: str, first_block: int, num_blocks: int) -> KvChunk:
        if request_id not in self._held:
            self._running(request_id)
        await asyncio.sleep(num_blocks * self.transfer_ms_per_block / 1000 / self.speedup)
        # Simulated KV: the chunk carries the block count, not the bytes.
        return KvChunk(first_block, num_blocks, b"")

    async def stop(self, request_id: str, timeout_s: float | None = None) -> StoppedRequest:
        # The simulated stop is immediate: nothing to wait for, `timeout_s` never bites.
        queued = self._live.get(request_id)
        if queued is not None and not queued.is_stopped and queued.req.state == QUEUED:
            return self._stop_queued(queued)
        live = self._running(request_id)
        live.is_stopped = True
        self._live.pop(request_id, None)
        self._held[request_id] = self._sim.stop(live.req)
        live.outputs.put_nowait(EngineOutput((), ""))  # wakes the reader, which then ends
        num_tokens = len(live.prompt_ids) + len(live.delivered)
        return StoppedRequest(request_id, live.prompt_ids, tuple(live.delivered), num_tokens - 1)

    def _stop_queued(self, live: _Live) -> StoppedRequest:
        """A queued request leaves the queue; it holds no blocks (the destination
        recomputes it)."""
        live.is_stopped = True
        self._live.pop(live.req.request_id, None)
        self._sim.remove_queued(live.req)
        live.outputs.put_nowait(EngineOutput((), ""))  # wakes the reader, which then ends
        return StoppedRequest(live.req.request_id, live.prompt_ids, tuple(live.delivered), 0)

    async def release(self, request_id: str) -> None:
        blocks = self._held.pop(request_id, 0)
        if blocks:
            self._sim.release(blocks)
            self._wake.set()

    # ---- migration: destination side ------------------------------------------------------
    async def reserve(self, migration_id: str, num_blocks: int) -> None:
        if not self._sim.reserve(num_blocks):
            raise MigrationError(
                f"destination has {self._sim.num_free_blocks} free blocks, {num_blocks} needed",
                "no-room",
            )
        self._reserved[migration_id] = self._reserved.get(migration_id, 0) + num_blocks

    async def write_kv(self, migration_id: str, chunk: KvChunk) -> None:
        if migration_id not in self._reserved:
            raise MigrationError(f"no reservation for migration {migration_id}", "no-room")

    def resume(
        self,
        migration_id: str,
        request: PreparedRequest,
        *,
        previous_output_ids: Sequence[int],
        num_staged_tokens: int,
    ) -> AsyncIterator[EngineOutput]:
        reserved = self._reserved.pop(migration_id, 0)
        live = self._new_live(request, previous_output_ids)
        if num_staged_tokens and reserved:
            self._sim.resume(live.req, reserved)
        else:
            self._sim.unreserve(reserved)
            self._sim.add(live.req)  # recompute: prefill prompt + previous outputs
        self._wake.set()
        return self._outputs(live)

    async def cancel(self, migration_id: str) -> None:
        reserved = self._reserved.pop(migration_id, 0)
        if reserved:
            self._sim.unreserve(reserved)
