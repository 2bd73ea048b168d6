"""Load views: what the global scheduler knows about the cluster, as frozen data.

Llumlets build an `InstanceLoad` from their engine's per-step snapshot and report it; the
controller (or the simulator) assembles a `ClusterView` and hands it to the policy. Nothing
here does I/O or reads a clock: `now` travels in the view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum


class Priority(IntEnum):
    """Request priority; ordered so that a larger value is served first."""

    NORMAL = 0
    HIGH = 1


@dataclass(frozen=True)
class RequestLoad:
    """One request as the instance's scheduler sees it."""

    request_id: str
    # Physical KV blocks the request holds now (running) or will need in full (queued).
    num_blocks: int
    priority: Priority = Priority.NORMAL
    # True once the prompt is prefilled and the request produces tokens.
    is_decoding: bool = True
    # Monotonic admission order on its instance: larger = admitted more recently.
    admitted_seq: int = 0
    # False when the request's sampling state cannot travel (n > 1, seed, penalties...).
    is_migratable: bool = True


@dataclass(frozen=True)
class InstanceLoad:
    """One instance's load report (the llumlet's view of its engine)."""

    instance_id: str
    # KV capacity M, in blocks.
    num_total_blocks: int
    # Blocks held by running requests (and staged migrations) right now.
    num_used_blocks: int
    # Running requests, any order.
    running: tuple[RequestLoad, ...] = ()
    # Waiting requests in the engine's queue order (index 0 is the head of line);
    # num_blocks is each one's full demand.
    queued: tuple[RequestLoad, ...] = ()
    # Requests preempted (and waiting to be recomputed) at the time of the report.
    num_preempted: int = 0
    # Being terminated: counts as infinite usage so it drains by migration.
    is_draining: bool = False
    # Report time (controller clock, seconds).
    timestamp: float = 0.0
    # Serving group: only instances of the same model and engine configuration interact.
    model: str = "default"
    # Tokens per KV block (to turn token budgets into blocks).
    block_size_tokens: int = 16
    # Migrations in flight with this instance as source / destination.
    num_migrating_out: int = 0
    num_migrating_in: int = 0
    # Prompt tokens (new prompts and recomputes) the engine step in progress is computing,
    # 0 when it only decodes: a request dispatched here now waits for that step.
    num_prefill_tokens: int = 0

    @property
    def num_free_blocks(self) -> int:
        return self.num_total_blocks - self.num_used_blocks

    @property
    def num_requests(self) -> int:
        return len(self.running) + len(self.queued)


def without_departed(load: InstanceLoad, departed: frozenset[str] | set[str]) -> InstanceLoad:
    """`load` without the requests known to have left the instance since it was reported.

    The counterpart of `PendingDispatch`: the scheduler sees a request finish (its stream
    ends) before the instance's next report stops listing it; until then the report
    counts it, and its blocks, which the engine has already freed.
    """
    if not departed:
        return load
    running = tuple(r for r in load.running if r.request_id not in departed)
    queued = tuple(r for r in load.queued if r.request_id not in departed)
    if len(running) == len(load.running) and len(queued) == len(load.queued):
        return load
    freed = sum(r.num_blocks for r in load.running if r.request_id in departed)
    return replace(
        load,
        running=running,
        queued=queued,
        num_used_blocks=max(0, load.num_used_blocks - freed),
    )


@dataclass(frozen=True)
class PendingDispatch:
    """A request dispatched to an instance after that instance's last report."""

    request_id: str
    num_blocks: int
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True)
class NewRequest:
    """A request waiting for a dispatch decision."""

    request_id: str
    # Blocks its prompt (plus the first token) needs.
    num_blocks: int
    priority: Priority = Priority.NORMAL
    arrival_time: float = 0.0
    model: str = "default"


@dataclass(frozen=True)
class ClusterView:
    """Everything a policy decision may depend on."""

    instances: tuple[InstanceLoad, ...]
    now: float = 0.0
    # Dispatched-but-not-yet-reported requests per instance id.
    pending: Mapping[str, tuple[PendingDispatch, ...]] = field(default_factory=dict)
    # Requests dispatched so far per instance id (the round-robin baseline's state).
    num_dispatched: Mapping[str, int] = field(default_factory=dict)
    # Instances being started per model (count toward capacity while they boot).
    num_starting: Mapping[str, int] = field(default_factory=dict)
    # Time of the last scaling action per model (for the cool-down).
    last_scale_time: Mapping[str, float] = field(default_factory=dict)

    def models(self) -> list[str]:
        return sorted({inst.model for inst in self.instances})

    def of_model(self, model: str) -> list[InstanceLoad]:
        return [inst for inst in self.instances if inst.model == model]
