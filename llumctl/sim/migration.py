"""Live migration in the simulator: pre-copy stages at a bandwidth, then a short stop.

Stage k copies the full KV blocks the request filled since stage k-1 while it keeps
decoding on the source; once the new delta is at most `migration_delta_blocks` (or the
stage limit is hit) the source stops the request, the last delta is copied, and the
destination resumes it after a fixed stop cost. Downtime = last copy + stop cost.
The destination reserves staging room for every copied block; no room aborts the
migration, as does the request finishing or being preempted during a stage.
A queued request has no KV to copy: it leaves the source's queue, the destination reserves
room for it and queues it after the stop cost (it prefills there, as it would have here).
Handlers return the next (delay, migration) to schedule, or None when done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llumctl.sim.config import SimConfig
from llumctl.sim.instance import RUNNING, SimInstance, SimRequest
from llumctl.sim.profile import LatencyProfile


@dataclass
class Migration:
    """One request moving from `src` to `dst`."""

    src: SimInstance
    dst: SimInstance
    req: SimRequest
    reason: str
    # Blocks reserved on the destination so far, and full blocks already copied.
    staged_blocks: int = 0
    copied_blocks: int = 0
    num_stages: int = 0
    # Blocks the stopped request still holds on the source (0 until the stop).
    held_blocks: int = 0
    is_stopped: bool = False
    stop_time: float = 0.0
    # A queued request (no KV): the destination queues it instead of resuming it.
    is_queued: bool = False
    outcome: str = field(default="running")


@dataclass
class MigrationStats:
    num_committed: int = 0
    # Committed migrations of queued requests (no KV copied, no downtime counted).
    num_queued: int = 0
    num_aborted: int = 0
    total_downtime_s: float = 0.0
    aborts: dict[str, int] = field(default_factory=dict)


class MigrationModel:
    """Carries out `Migrate` decisions on simulated instances."""

    def __init__(self, config: SimConfig, profile: LatencyProfile) -> None:
        self.config = config
        self.block_s = profile.block_bytes * 8 / (config.migration_bandwidth_gbps * 1e9)
        self._bs = profile.block_size_tokens
        self.stats = MigrationStats()
        # Request id -> its in-flight migration.
        self.in_flight: dict[str, Migration] = {}
        self.num_out: dict[str, int] = {}
        self.num_in: dict[str, int] = {}

    def start(
        self, src: SimInstance, dst: SimInstance, req: SimRequest, reason: str
    ) -> float | None:
        """Begin stage 0; returns its duration, or None when the destination has no room."""
        full = src.kv_tokens(req) // self._bs
        if not dst.reserve(full + 1):
            self._count_abort("no-room")
            return None
        self._track(Migration(src, dst, req, reason, staged_blocks=full + 1, copied_blocks=full))
        return full * self.block_s

    def start_queued(
        self, src: SimInstance, dst: SimInstance, req: SimRequest, reason: str, now: float
    ) -> float | None:
        """Move a queued request; returns the stop cost, or None when the destination has
        no room for its prompt (and a block of growth, as a real reserve asks)."""
        blocks = src.blocks_of(req) + 1
        if not dst.reserve(blocks):
            self._count_abort("no-room")
            return None
        src.remove_queued(req)
        mig = Migration(
            src, dst, req, reason, staged_blocks=blocks, is_stopped=True, stop_time=now,
            is_queued=True,
        )  # fmt: skip
        self._track(mig)
        return self.config.migration_stop_ms / 1000.0

    def _track(self, mig: Migration) -> None:
        self.in_flight[mig.req.request_id] = mig
        self.num_out[mig.src.instance_id] = self.num_out.get(mig.src.instance_id, 0) + 1
        self.num_in[mig.dst.instance_id] = self.num_in.get(mig.dst.instance_id, 0) + 1

    def stage_done(self, mig: Migration, now: float) -> float | None:
        """A copy stage ended: copy more, stop the request, or abort."""
        if mig.req.state != RUNNING or mig.req.instance is not mig.src:
            self._finish(mig, "request-gone")
            return None
        full = mig.src.kv_tokens(mig.req) // self._bs
        delta = full - mig.copied_blocks
        if not mig.dst.reserve(delta):
            self._finish(mig, "no-room")
            return None
        mig.staged_blocks += delta
        mig.copied_blocks = full
        mig.num_stages += 1
        if delta > self.config.migration_delta_blocks and (
            mig.num_stages < self.config.max_migration_stages
        ):
            return delta * self.block_s
        mig.held_blocks = mig.src.stop(mig.req)
        mig.is_stopped = True
        mig.stop_time = now
        return delta * self.block_s + self.config.migration_stop_ms / 1000.0

    def commit(self, mig: Migration, now: float) -> None:
        """The last copy landed: the destination resumes the request (or queues a queued
        one, which then prefills there)."""
        if mig.is_queued:
            mig.dst.unreserve(mig.staged_blocks)
            mig.dst.add(mig.req)
            self.stats.num_queued += 1
        else:
            mig.src.release(mig.held_blocks)
            mig.dst.resume(mig.req, mig.staged_blocks)
            self.stats.total_downtime_s += now - mig.stop_time
        self._finish(mig, "committed")

    def _finish(self, mig: Migration, outcome: str) -> None:
        mig.outcome = outcome
        if outcome != "committed":
            mig.dst.unreserve(mig.staged_blocks)
            self._count_abort(outcome)
        else:
            self.stats.num_committed += 1
        del self.in_flight[mig.req.request_id]
        self.num_out[mig.src.instance_id] -= 1
        self.num_in[mig.dst.instance_id] -= 1

    def _count_abort(self, reason: str) -> None:
        self.stats.num_aborted += 1
        self.stats.aborts[reason] = self.stats.aborts.get(reason, 0) + 1

    def is_busy(self, inst: SimInstance) -> bool:
        """True while the instance takes part in a migration."""
        iid = inst.instance_id
        return self.num_out.get(iid, 0) > 0 or self.num_in.get(iid, 0) > 0
