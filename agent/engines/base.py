"""The engine seam: what an instance's llumlet and HTTP server need from an engine.

Two implementations: `agent.engines.vllm` (real vLLM V1, GPU or CPU) and `agent.engines.sim`
(a simulated engine on the simulator's instance model; always labelled "sim"). The llumlet
runs the migration protocol on top of these primitives and never touches engine internals.

Migration primitives (docs/architecture.md, "Live migration"):
  source:      read_kv (pre-copy stages) -> stop -> read_kv (last delta) -> release
  destination: reserve -> write_kv ... -> resume -> (cancel on abort)

Changes since the first draft (additive but the last):
- `PreparedRequest.priority` (default NORMAL) so the engine can report it in its load.
- `stop` may raise MigrationError(reason="finished") when the request ended before the stop;
  `num_full_blocks`/`read_kv` raise MigrationError(reason="finished"|"preempted") when the
  request is no longer running with its blocks.
- After `stop`, `generate` of that request ends without a finish_reason (the llumlet then
  ends the stream with `migrated`, or resumes locally if the destination failed).
- 2026-11-29: `StoppedRequest.num_kv_tokens` and `resume(num_staged_tokens=...)` replace
  `num_full_blocks` / `num_staged_blocks`: the partial last block is copied too, so the
  destination computes one token instead of recomputing that block.
- 2026-11-29: `stop(request_id, timeout_s)`; an EngineError from `stop` means the engine
  could not confirm the stop and ended that attempt of the request for good (its `generate`
  ends without a finish_reason, no blocks kept, nothing to `release`): the llumlet resumes
  the request from its stream.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from llumctl.policy.views import Priority, RequestLoad
from llumctl.protocol import GenerateRequest, SamplingParams


@dataclass(frozen=True)
class EngineSpec:
    """Static facts about a started engine."""

    kind: str  # "vllm" or "sim"
    model: str
    block_size_tokens: int
    num_total_blocks: int
    max_model_len: int
    # Equal fingerprints <=> KV blocks can be copied between the two engines as they are.
    fingerprint: str


@dataclass(frozen=True)
class EngineLoad:
    """The engine's scheduler state at its last step (the llumlet adds the rest)."""

    num_used_blocks: int
    running: tuple[RequestLoad, ...]
    queued: tuple[RequestLoad, ...]
    num_preempted: int
    # Output tokens produced since the engine started (for tokens/s).
    num_generated_tokens: int = 0
    # Preemptions since the engine started (a counter: short ones count too).
    num_preemptions_total: int = 0
    # Prompt tokens running requests still have to prefill (see `InstanceLoad`).
    num_prefill_tokens: int = 0


@dataclass(frozen=True)
class PreparedRequest:
    """A request after tokenisation and validation, ready for `generate`."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    # Added (issue 3): the llumlet reports it in the load (headroom for high priority).
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True)
class EngineOutput:
    """New output of one request after an engine step."""

    token_ids: tuple[int, ...]
    # Text those tokens add to the output (detokenised with everything before them).
    text: str
    finish_reason: str | None = None  # "stop", "length", "abort" once finished


@dataclass(frozen=True)
class KvChunk:
    """Full KV blocks of a request, in block order, as opaque bytes."""

    first_block: int
    num_blocks: int
    payload: bytes


@dataclass(frozen=True)
class StoppedRequest:
    """A request stopped on the source for migration; its blocks stay readable."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    # Output tokens delivered to the client before the stop (the splice point).
    output_token_ids: tuple[int, ...]
    # Tokens whose KV the kept blocks hold for the destination: prompt + delivered output
    # but the last token (its KV is computed by the next step), fewer if the engine kept
    # fewer blocks. Their blocks are copied, the last one usually partial: the destination
    # then computes one token, not up to a block's worth over the whole context.
    num_kv_tokens: int

    def num_kv_blocks(self, block_size: int) -> int:
        """Blocks to copy: those holding the first `num_kv_tokens` tokens."""
        return -(-self.num_kv_tokens // block_size)


class Engine(abc.ABC):
    """One engine instance. All methods run on the instance's asyncio loop."""

    @abc.abstractmethod
    async def start(self) -> EngineSpec:
        """Start (load the model, allocate KV); return its spec."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop and free everything; idempotent."""

    @abc.abstractmethod
    async def prepare(self, request: GenerateRequest) -> PreparedRequest:
        """Tokenise (applying the chat template for messages) and validate.

        Raises `llumctl.errors.InputError` for a prompt longer than the context, bad
        sampling values, etc.
        """

    @abc.abstractmethod
    def generate(
        self, request: PreparedRequest, *, previous_output_ids: Sequence[int] = ()
    ) -> AsyncIterator[EngineOutput]:
        """Run a request; yields outputs until one carries a finish_reason.

        `previous_output_ids` is set when this request resumes a migrated one (its prompt
        then holds the original prompt followed by those tokens): detokenisation continues
        as if the outputs had been produced here, and `max_tokens` counts only new tokens.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request for good and free its blocks."""

    @abc.abstractmethod
    def load(self) -> EngineLoad:
        """Scheduler state at the last step (cheap; called every report period)."""

    # ---- source side of a migration -------------------------------------------------
    @abc.abstractmethod
    async def num_full_blocks(self, request_id: str) -> int:
        """Blocks of the running request that are full (immutable) right now."""

    @abc.abstractmethod
    async def read_kv(self, request_id: str, first_block: int, num_blocks: int) -> KvChunk:
        """Copy out full blocks [first_block, first_block + num_blocks) of a request."""

    @abc.abstractmethod
    async def stop(self, request_id: str, timeout_s: float | None = None) -> StoppedRequest:
        """Stop a running request for migration, keeping its blocks until `release`.

        `timeout_s` bounds the wait for the engine to confirm the stop (None: the engine's
        default); past it, EngineError, with that attempt of the request ended here."""

    @abc.abstractmethod
    async def release(self, request_id: str) -> None:
        """Free the blocks a stopped request kept."""

    # ---- destination side ----------------------------------------------------------
    @abc.abstractmethod
    async def reserve(self, migration_id: str, num_blocks: int) -> None:
        """Reserve staging room; raise MigrationError(reason="no-room") if there is none."""

    @abc.abstractmethod
    async def write_kv(self, migration_id: str, chunk: KvChunk) -> None:
        """Stage received blocks for a later `resume`."""

    @abc.abstractmethod
    def resume(
        self,
        migration_id: str,
        request: PreparedRequest,
        *,
        previous_output_ids: Sequence[int],
        num_staged_tokens: int,
    ) -> AsyncIterator[EngineOutput]:
        """Start the migrated request on this engine, using the staged blocks as the KV
        of its first `num_staged_tokens` tokens (0 = recompute everything; the block
        holding the last of them may be partial)."""

    @abc.abstractmethod
    async def cancel(self, migration_id: str) -> None:
        """Drop staged blocks of an aborted migration; idempotent."""
