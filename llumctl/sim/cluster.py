"""The discrete-event simulator: a cluster of `SimInstance`s driven by a `Policy`.

Events are ordered by (time, sequence number), so a run is a pure function of its inputs.
Kinds: an instance step ends (and the next begins), a request arrives (dispatch), the
policy ticks (migrations and scaling), a migration stage or stop ends, an instance
finishes booting. The policy sees `InstanceLoad` reports no older than
`report_interval_s` plus the dispatches made since each report (`pending`) and without
the requests finished since (`without_departed`), exactly as the controller feeds it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

from llumctl.policy import (
    ClusterView,
    Dispatch,
    DispatchIndex,
    InstanceLoad,
    Migrate,
    NewRequest,
    PendingDispatch,
    Policy,
    Priority,
    ScaleDown,
    ScaleUp,
    select_candidates,
    without_departed,
)
from llumctl.sim.config import SimConfig
from llumctl.sim.hosts import HostSharing, Warming
from llumctl.sim.instance import SimInstance, SimRequest, StepResult
from llumctl.sim.migration import Migration, MigrationModel
from llumctl.sim.profile import LatencyProfile
from llumctl.sim.workload import RequestSpec

STEP, ARRIVAL, MIGRATION, READY, TICK = range(5)
Progress = Callable[[int, int], None]


class Simulation:
    """One run of one policy over one workload."""

    def __init__(
        self,
        requests: Sequence[RequestSpec],
        policy: Policy,
        config: SimConfig,
        profile: LatencyProfile,
    ) -> None:
        self.policy = policy
        # Incremental dispatch (same choices as policy.dispatch); round-robin has none.
        self._index = None if policy.metric == "round-robin" else DispatchIndex(policy)
        self.config = config
        self.profile = profile
        self.requests = [
            SimRequest(r.request_id, r.prompt_tokens, r.output_tokens, r.priority, r.arrival_time)
            for r in requests
        ]
        self.migrations = MigrationModel(config, profile)
        self.instances: dict[str, SimInstance] = {}
        self._busy: set[str] = set()
        warming = Warming(
            cold_step_extra_s=profile.cold_step_extra_ms / 1000.0,
            cold_first_token_s=profile.cold_first_token_ms / 1000.0,
            warm_up_s=profile.warm_up_ms / 1000.0,
            cool_down_s=profile.cool_down_ms / 1000.0,
        )
        self.hosts = HostSharing(config.instances_per_host, profile.co_located_slowdown, warming)
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._num_created = 0
        self._num_starting = 0
        self._last_scale: dict[str, float] = {}
        self._reports: dict[str, InstanceLoad] = {}
        self._pending: dict[str, list[PendingDispatch]] = {}
        self._num_dispatched: dict[str, int] = {}
        self._waiting: list[SimRequest] = []
        self._num_finished = 0
        self._alive_area = 0.0
        self._alive_since = 0.0
        self._num_alive = 0
        self._frag_sum = 0.0
        self._frag_samples = 0
        self.end_time = 0.0

    # ---- event plumbing ---------------------------------------------------------------
    def _push(self, time: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (time, self._seq, kind, payload))

    def _set_alive(self, now: float, delta: int) -> None:
        self._alive_area += self._num_alive * (now - self._alive_since)
        self._alive_since = now
        self._num_alive += delta

    def _new_instance(self, now: float) -> SimInstance:
        iid = f"i{self._num_created}"
        self._num_created += 1
        inst = SimInstance(iid, self.profile)
        self.instances[iid] = inst
        self.hosts.place(iid, self._num_created - 1)
        return inst

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        """Simulate until every request finished; return the raw results."""
        for _ in range(self.config.num_instances):
            self._new_instance(0.0)
        self._set_alive(0.0, self.config.num_instances)
        for req in self.requests:
            self._push(req.arrival_time, ARRIVAL, req)
        self._push(self.config.tick_interval_s, TICK, None)
        total = len(self.requests)
        handlers: dict[int, Callable[[float, Any], None]] = {
            STEP: self._on_step,
            ARRIVAL: self._on_arrival,
            MIGRATION: self._on_migration,
            READY: self._on_ready,
            TICK: self._on_tick,
        }
        events = self._events
        report_every = max(1, total // 100)
        while events and self._num_finished < total:
            now, _, kind, payload = heapq.heappop(events)
            before = self._num_finished
            handlers[kind](now, payload)
            if progress and self._num_finished // report_every != before // report_every:
                progress(self._num_finished, total)
        self._set_alive(self.end_time, 0)
        if progress:
            progress(self._num_finished, total)
        return self._results()

    # ---- instance steps -------------------------------------------------------------
    def _kick(self, inst: SimInstance, now: float) -> None:
        if inst.instance_id not in self._busy:
            self._busy.add(inst.instance_id)
            self.hosts.set_busy(inst.instance_id, True, now)
            self._push(now, STEP, inst)

    def _on_step(self, now: float, inst: SimInstance) -> None:
        result = inst.step()
        if result is None:
            self._busy.discard(inst.instance_id)
            self.hosts.set_busy(inst.instance_id, False, now)
            self._maybe_retire(inst, now)
            return
        end = now + self.hosts.step_duration(inst.instance_id, now, result.duration_s)
        self._record(inst.instance_id, result, now, end)
        self._seq += 1
        heapq.heappush(self._events, (end, self._seq, STEP, inst))

    def _record(self, iid: str, result: StepResult, now: float, end: float) -> None:
        if not result.preempted and not result.started and not result.finished:
            return
        for req in result.preempted:
            req.preempted_at = now
        for req in result.started:
            if req.first_token_time is None:
                req.first_token_time = end
            if req.preempted_at is not None:
                recompute_ms = self.profile.prefill_ms(req.context_tokens - 1)
                req.preemption_loss_s += now - req.preempted_at + recompute_ms / 1000.0
                req.preempted_at = None
        for req in result.finished:
            req.finish_time = end
            self._num_finished += 1
            if end > self.end_time:
                self.end_time = end
        if result.finished:
            self._departed(iid, {r.request_id for r in result.finished})

    def _departed(self, iid: str, request_ids: set[str]) -> None:
        """Requests that finished on `iid`: the controller sees their streams end before
        the next report, and stops counting them there (`without_departed`), pending or
        reported."""
        report = self._reports.get(iid)
        if report is not None:
            self._reports[iid] = without_departed(report, request_ids)
        pending = self._pending.get(iid)
        if pending:
            self._pending[iid] = [p for p in pending if p.request_id not in request_ids]

    # ---- dispatch -------------------------------------------------------------------
    def _view(self, now: float) -> ClusterView:
        """Reports no older than the report interval, plus dispatches since each one."""
        interval = self.config.report_interval_s
        loads = []
        for iid, inst in self.instances.items():
            report = self._reports.get(iid)
            if report is None or now - report.timestamp >= interval:
                report = inst.load(
                    now,
                    num_migrating_out=self.migrations.num_out.get(iid, 0),
                    num_migrating_in=self.migrations.num_in.get(iid, 0),
                )
                self._reports[iid] = report
                self._pending.pop(iid, None)
            loads.append(report)
        pending = {iid: tuple(p) for iid, p in self._pending.items() if p}
        return ClusterView(
            tuple(loads),
            now=now,
            pending=pending,
            num_dispatched=self._num_dispatched,
            num_starting={"default": self._num_starting} if self._num_starting else {},
            last_scale_time=self._last_scale,
        )

    def _on_arrival(self, now: float, req: SimRequest) -> None:
        self._dispatch(now, [req])

    def _dispatch(self, now: float, reqs: list[SimRequest]) -> None:
        if not self.instances:
            self._waiting.extend(reqs)
            return
        by_id = {r.request_id: r for r in reqs}
        bs = self.profile.block_size_tokens
        new = [
            NewRequest(
                r.request_id, -(-r.context_tokens // bs), Priority(r.priority), r.arrival_time
            )
            for r in reqs
        ]
        view = self._view(now)
        if self._index is None:
            decisions = self.policy.dispatch(view, new)
        else:
            # The fast path: only reports refreshed since the last dispatch are re-scored.
            self._index.sync(view)
            decisions = self._index.dispatch(new)
        for decision in decisions:
            self._apply_dispatch(now, decision, by_id.pop(decision.request_id))
        self._waiting.extend(by_id.values())

    def _apply_dispatch(self, now: float, decision: Dispatch, req: SimRequest) -> None:
        inst = self.instances[decision.instance_id]
        inst.add(req)
        iid = inst.instance_id
        self._num_dispatched[iid] = self._num_dispatched.get(iid, 0) + 1
        bs = self.profile.block_size_tokens
        pending = PendingDispatch(
            req.request_id, -(-req.context_tokens // bs), Priority(req.priority)
        )
        self._pending.setdefault(iid, []).append(pending)
        # The instance's warmth before this request makes it busy.
        cold_s = self.hosts.cold_first_token_s(iid, now)
        self._kick(inst, now)
        if req.first_token_time is None:
            busy = self.hosts.num_busy(iid)
            req.first_token_delay_s = self.profile.first_token_extra_ms(busy) / 1000.0 + cold_s

    # ---- policy loop --------------------------------------------------------------------
    def _on_tick(self, now: float, _: Any) -> None:
        view = self._view(now)
        self._sample_fragmentation(view)
        for decision in self.policy.tick(view):
            if isinstance(decision, Migrate):
                self._start_migrations(now, decision)
            elif isinstance(decision, ScaleUp):
                self._scale_up(now, decision.num_instances)
            elif isinstance(decision, ScaleDown):
                self._scale_down(now, decision.instance_id)
        if self._num_finished < len(self.requests):
            self._push(now + self.config.tick_interval_s, TICK, None)

    def _sample_fragmentation(self, view: ClusterView) -> None:
        total = sum(i.num_total_blocks for i in view.instances)
        free = sum(max(0, i.num_free_blocks) for i in view.instances)
        stuck = 0
        for inst in view.instances:
            if inst.queued and inst.queued[0].num_blocks > inst.num_free_blocks:
                if inst.queued[0].num_blocks <= free:
                    stuck += max(0, inst.num_free_blocks)
        self._frag_sum += stuck / total if total else 0.0
        self._frag_samples += 1

    def _start_migrations(self, now: float, decision: Migrate) -> None:
        """The source moves its candidates in selector order, skipping any that would not
        fit the destination's free blocks (the reserve handshake would refuse them)."""
        src = self.instances.get(decision.src)
        dst = self.instances.get(decision.dst)
        if src is None or dst is None:
            return
        wanted = decision.request_ids or tuple(
            select_candidates(
                src.load(now),
                src.num_running + src.num_queued,
                queued_first=decision.queued_first,
                max_num_blocks=decision.max_num_blocks,
            )
        )
        by_id = {r.request_id: r for r in src.running()}
        queued = {r.request_id: r for r in src.queued()}
        started = 0
        for rid in wanted:
            req = by_id.get(rid) or queued.get(rid)
            if started >= decision.num_requests:
                break
            if req is None or rid in self.migrations.in_flight:
                continue
            if src.blocks_of(req) + 1 > dst.num_free_blocks:
                continue
            if rid in queued:
                delay = self.migrations.start_queued(src, dst, req, decision.reason, now)
            else:
                delay = self.migrations.start(src, dst, req, decision.reason)
            if delay is None:
                continue
            self._push(now + delay, MIGRATION, self.migrations.in_flight[rid])
            started += 1

    def _on_migration(self, now: float, mig: Migration) -> None:
        if mig.is_stopped:
            self.migrations.commit(mig, now)
            delay = None
        else:
            delay = self.migrations.stage_done(mig, now)
        if delay is not None:
            self._push(now + delay, MIGRATION, mig)
            return
        # Blocks were freed or a request resumed on either side: let both run.
        for inst in (mig.src, mig.dst):
            self._kick(inst, now)
            self._maybe_retire(inst, now)

    # ---- scaling ----------------------------------------------------------------------
    def _scale_up(self, now: float, count: int) -> None:
        for _ in range(count):
            self._num_starting += 1
            self._set_alive(now, 1)
            self._push(now + self.config.startup_delay_s, READY, None)
        self._last_scale["default"] = now

    def _on_ready(self, now: float, _: Any) -> None:
        self._num_starting -= 1
        self._new_instance(now)
        waiting, self._waiting = self._waiting, []
        if waiting:
            self._dispatch(now, waiting)

    def _scale_down(self, now: float, instance_id: str) -> None:
        inst = self.instances.get(instance_id)
        if inst is None or inst.is_draining:
            return
        inst.is_draining = True
        self._last_scale["default"] = now
        self._reports.pop(instance_id, None)
        requeue = inst.take_queued()
        if requeue:
            self._dispatch(now, requeue)
        self._maybe_retire(inst, now)

    def _maybe_retire(self, inst: SimInstance, now: float) -> None:
        """Stop a draining instance once it holds nothing."""
        if not inst.is_draining or not inst.is_idle or inst.num_staged_blocks:
            return
        if self.migrations.is_busy(inst) or inst.instance_id in self._busy:
            return
        del self.instances[inst.instance_id]
        self._reports.pop(inst.instance_id, None)
        self._pending.pop(inst.instance_id, None)
        self._set_alive(now, -1)

    # ---- results -----------------------------------------------------------------------
    def _results(self) -> dict[str, Any]:
        duration = self.end_time if self.end_time > 0 else 1.0
        stats = self.migrations.stats
        return {
            "avg_instances": self._alive_area / duration,
            "fragmentation": self._frag_sum / self._frag_samples if self._frag_samples else 0.0,
            "migrations": stats.num_committed,
            # Of those, queued requests moved without KV (no downtime: nothing was running).
            "queued_migrations": stats.num_queued,
            "migration_aborts": stats.num_aborted,
            "mean_downtime_s": (
                stats.total_downtime_s / (stats.num_committed - stats.num_queued)
                if stats.num_committed > stats.num_queued
                else 0.0
            ),
            "preemptions": sum(r.num_preemptions for r in self.requests),
            "makespan_s": self.end_time,
            "unfinished": len(self.requests) - self._num_finished,
        }
