"""What the controller knows about the cluster, rebuilt entirely from reports.

Agents register (and re-register every heartbeat), llumlets push load reports; nothing
here is persisted, so a restarted controller re-forms the same cluster within one report
period without touching a running instance. Requests are tracked only while the
controller relays their streams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from llumctl.policy import (
    ClusterView,
    InstanceLoad,
    PendingDispatch,
    Priority,
    without_departed,
)
from llumctl.protocol import InstanceInfo

# A dispatch not yet visible in the instance's reports stops counting after this long, and
# so does a request that left but is still listed (`departed`).
PENDING_EXPIRY_S = 10.0
# Reports from an instance this controller stopped are ignored for this long (a report
# or heartbeat already in flight must not bring it back).
TOMBSTONE_S = 10.0


@dataclass
class AgentEntry:
    agent_id: str
    url: str
    host: str
    devices: tuple[str, ...] = ()
    max_instances: int = 1
    last_seen: float = 0.0


@dataclass
class InstanceEntry:
    info: InstanceInfo
    load: InstanceLoad | None = None
    last_report: float = 0.0
    # Set when the controller drains the instance (operator drain or scale-down) ...
    is_draining: bool = False
    # ... and, for a scale-down, stops it once empty.
    is_stop_when_empty: bool = False
    # Migrations the controller has asked for and not yet heard back about.
    num_inflight_out: int = 0
    num_inflight_in: int = 0
    tokens_per_s: float = 0.0
    # Preemptions since this controller first heard from the instance: rises of the
    # engine's own counter; for engines without one, rises of `num_preempted` between
    # reports (then a preemption undone within one report period is not seen).
    num_preemptions_observed: int = 0
    # The engine's preemption counter at its last report (None before the first).
    preemptions_total_seen: int | None = None

    @property
    def id(self) -> str:
        return self.info.instance_id

    @property
    def is_serving(self) -> bool:
        """Running or draining: its requests are in flight, whether or not it reported."""
        return self.info.state in ("running", "draining")

    @property
    def is_live(self) -> bool:
        return self.load is not None and self.is_serving


@dataclass
class RequestRecord:
    """One client request the controller relays; `id` is the id the client sees."""

    id: str
    model: str
    priority: Priority
    num_blocks_estimate: int
    arrival: float = field(default_factory=time.monotonic)
    instance: str = ""
    # Every instance the request has run on: {"instance", "from_index", "time"}.
    history: list[dict[str, Any]] = field(default_factory=list)
    state: str = "queued"  # queued, running, finished, failed
    num_tokens: int = 0
    num_prompt_tokens: int = 0
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instance": self.instance,
            "state": self.state,
            "tokens": self.num_tokens,
            "model": self.model,
            "priority": "high" if self.priority == Priority.HIGH else "normal",
            "history": self.history,
            "finish_reason": self.finish_reason,
        }


class ClusterState:
    def __init__(self, report_timeout_s: float = 10.0) -> None:
        self.report_timeout_s = report_timeout_s
        self.agents: dict[str, AgentEntry] = {}
        self.instances: dict[str, InstanceEntry] = {}
        self.requests: dict[str, RequestRecord] = {}
        # Dispatched, not yet in a report: instance id -> request id -> (pending, time).
        self.pending: dict[str, dict[str, tuple[PendingDispatch, float]]] = {}
        self.num_dispatched: dict[str, int] = {}
        # Requests whose streams ended here but that the instance's last report still
        # lists: instance id -> request id -> time. The view leaves them out.
        self.departed: dict[str, dict[str, float]] = {}
        # Instances being started per model (ids known once the agent answers).
        self.starting: dict[str, set[str]] = {}
        self.last_scale_time: dict[str, float] = {}
        # Drains this controller ordered: instance id -> stop once empty. Kept apart from
        # the entries so an instance dropped for late reports and re-added keeps it.
        self.drain_intent: dict[str, bool] = {}
        # Instances stopped by this controller, by stop time (see `tombstone`).
        self.stopped: dict[str, float] = {}
        # Instances the agents list as failed, as of each agent's last registration:
        # instance id -> (agent id, why). Kept apart from `instances` (a failed one takes
        # no requests) so `llumctl up` and `status` can say why an instance never came up.
        self.failed: dict[str, tuple[str, str]] = {}

    # ---- reports ---------------------------------------------------------------------
    def register_agent(self, agent: AgentEntry, instances: list[InstanceInfo]) -> bool:
        """Upsert an agent and the instances it hosts (failed and stopped ones are noted,
        not hosted); True if the agent was new."""
        is_new = agent.agent_id not in self.agents
        agent.last_seen = time.monotonic()
        self.agents[agent.agent_id] = agent
        for iid in [i for i, (a, _) in self.failed.items() if a == agent.agent_id]:
            del self.failed[iid]
        for info in instances:
            if info.state == "failed":
                self.failed[info.instance_id] = (agent.agent_id, info.failure or "failed")
        alive = [i for i in instances if i.state not in ("failed", "stopped")]
        listed = {info.instance_id for info in alive}
        # The agent's list is authoritative for its own instances: one it no longer
        # hosts is gone, whatever a late report said.
        for entry in list(self.instances.values()):
            if entry.info.agent_id == agent.agent_id and entry.id not in listed:
                self.remove_instance(entry.id)
        for info in alive:
            if not self._is_tombstoned(info.instance_id):
                self.upsert_info(info, from_agent=True)
        return is_new

    def upsert_info(self, info: InstanceInfo, *, from_agent: bool = False) -> InstanceEntry:
        """Merge what an agent says (served model name, agent, device) with what the
        instance itself reports (URL, engine, fingerprint, running/draining)."""
        entry = self.instances.get(info.instance_id)
        if entry is None:
            entry = self.instances[info.instance_id] = InstanceEntry(info)
            if info.instance_id in self.drain_intent:
                entry.is_draining = True
                entry.is_stop_when_empty = self.drain_intent[info.instance_id]
        elif from_agent:
            state = entry.info.state
            if info.state in ("failed", "stopped") or state == "starting":
                state = info.state
            elif info.state == "starting" and entry.load is None:
                state = "starting"
            entry.info = replace(
                entry.info,
                model=info.model,
                agent_id=info.agent_id,
                device=info.device,
                host=info.host,
                state=state,
                fingerprint=entry.info.fingerprint or info.fingerprint,
            )
        else:
            known = entry.info
            entry.info = replace(
                info,
                model=known.model if known.agent_id else info.model,
                agent_id=known.agent_id or info.agent_id,
                device=known.device or info.device,
            )
        if entry.info.state != "starting":
            for ids in self.starting.values():
                ids.discard(info.instance_id)
        return entry

    def apply_load(
        self,
        info: InstanceInfo,
        load: InstanceLoad,
        tokens_per_s: float,
        num_preemptions_total: int = -1,
    ) -> bool:
        """Record a load report; True if the instance was not known before."""
        if self._is_tombstoned(info.instance_id):
            return False  # a late report from an instance we just stopped
        is_new = info.instance_id not in self.instances
        entry = self.upsert_info(info)
        if num_preemptions_total >= 0:
            # The engine's own counter: count its rises since this controller first heard
            # from the instance (a lower value means the engine restarted).
            last = entry.preemptions_total_seen
            if last is not None and num_preemptions_total >= last:
                entry.num_preemptions_observed += num_preemptions_total - last
            entry.preemptions_total_seen = num_preemptions_total
        else:
            before = entry.load.num_preempted if entry.load is not None else 0
            entry.num_preemptions_observed += max(0, load.num_preempted - before)
        entry.load = replace(load, model=entry.info.model, timestamp=time.monotonic())
        entry.last_report = time.monotonic()
        entry.tokens_per_s = tokens_per_s
        seen = {r.request_id for r in load.running} | {r.request_id for r in load.queued}
        pending = self.pending.get(info.instance_id, {})
        for rid in [rid for rid in pending if rid in seen]:
            del pending[rid]
        departed = self.departed.get(info.instance_id, {})
        for rid in [rid for rid in departed if rid not in seen]:
            del departed[rid]
        return is_new

    def tombstone(self, instance_id: str) -> None:
        """Forget a stopped instance and ignore reports still in flight from it."""
        self.remove_instance(instance_id)
        self.stopped[instance_id] = time.monotonic()

    def _is_tombstoned(self, instance_id: str) -> bool:
        stopped = self.stopped.get(instance_id)
        if stopped is not None and time.monotonic() - stopped > TOMBSTONE_S:
            del self.stopped[instance_id]
            return False
        return stopped is not None

    def remove_instance(self, instance_id: str) -> InstanceEntry | None:
        self.pending.pop(instance_id, None)
        self.departed.pop(instance_id, None)
        for ids in self.starting.values():
            ids.discard(instance_id)
        return self.instances.pop(instance_id, None)

    # ---- dispatch bookkeeping ----------------------------------------------------------
    def add_pending(self, instance_id: str, pending: PendingDispatch) -> None:
        self.pending.setdefault(instance_id, {})[pending.request_id] = (pending, time.monotonic())
        self.num_dispatched[instance_id] = self.num_dispatched.get(instance_id, 0) + 1

    def note_draining(self, instance_id: str) -> None:
        """The instance refused a request as draining before its load report said so (a
        drain that raced a dispatch): take it out of dispatch now; its next report agrees."""
        entry = self.instances.get(instance_id)
        if entry is not None and entry.load is not None:
            entry.load = replace(entry.load, is_draining=True)

    def drop_pending(self, request_id: str) -> None:
        for entries in self.pending.values():
            entries.pop(request_id, None)

    def note_departed(self, instance_id: str, request_id: str) -> None:
        """The request's stream from this instance ended (finished, failed or aborted):
        until a report stops listing it, the view does not count it there."""
        entry = self.instances.get(instance_id)
        if entry is not None and entry.load is not None:
            self.departed.setdefault(instance_id, {})[request_id] = time.monotonic()

    def excuse_stall(self, stall_s: float) -> None:
        """The controller itself did not run for `stall_s`: that time does not count
        towards any instance's silence (`stale_instances`). Never past now: a report
        handled since the wake-up is already fresh."""
        now = time.monotonic()
        for entry in self.instances.values():
            entry.last_report = min(now, entry.last_report + stall_s)

    # ---- views -----------------------------------------------------------------------
    def stale_instances(self) -> list[InstanceEntry]:
        """Live instances whose reports stopped arriving."""
        now = time.monotonic()
        return [
            e
            for e in self.instances.values()
            if e.load is not None and now - e.last_report > self.report_timeout_s
        ]

    def live(self, model: str | None = None) -> list[InstanceEntry]:
        return [
            e
            for e in self.instances.values()
            if e.is_live and (model is None or e.info.model == model)
        ]

    def models(self) -> set[str]:
        return {e.info.model for e in self.instances.values()}

    def max_model_len(self, model: str) -> int:
        """The longest context every serving instance of `model` takes (0: none says)."""
        lengths = [
            e.info.max_model_len
            for e in self.instances.values()
            if e.info.model == model and e.is_serving and e.info.max_model_len > 0
        ]
        return min(lengths, default=0)

    def view(self, *, by_group: bool = True) -> ClusterView:
        """The policy's input: live instances, their pending dispatches, scaling state.

        With `by_group`, `InstanceLoad.model` is the serving group (model + engine
        fingerprint) so migration pairs only identical engines; dispatch uses the plain
        model name, which is what a request asks for.
        """
        now = time.monotonic()
        loads = []
        pending: dict[str, tuple[PendingDispatch, ...]] = {}
        for entry in self.live():
            assert entry.load is not None
            loads.append(self._effective_load(entry, by_group))
            fresh = [
                p for p, t in self.pending.get(entry.id, {}).values() if now - t < PENDING_EXPIRY_S
            ]
            pending[entry.id] = tuple(fresh)
        return ClusterView(
            instances=tuple(loads),
            now=now,
            pending=pending,
            num_dispatched=dict(self.num_dispatched),
            num_starting={
                self._starting_group(m): len(ids) for m, ids in self.starting.items() if ids
            },
            last_scale_time=dict(self.last_scale_time),
        )

    def _starting_group(self, model: str) -> str:
        """The group a booting instance of `model` will join (that of its peers)."""
        peers = [group_key(e.info) for e in self.live(model)]
        return peers[0] if peers else model

    def _effective_load(self, entry: InstanceEntry, by_group: bool) -> InstanceLoad:
        assert entry.load is not None
        load = without_departed(entry.load, self._departed_ids(entry.id))
        return replace(
            load,
            model=group_key(entry.info) if by_group else entry.info.model,
            is_draining=load.is_draining or entry.is_draining or entry.info.state == "draining",
            num_migrating_out=max(load.num_migrating_out, entry.num_inflight_out),
            num_migrating_in=max(load.num_migrating_in, entry.num_inflight_in),
        )

    def _departed_ids(self, instance_id: str) -> set[str]:
        departed = self.departed.get(instance_id)
        if not departed:
            return set()
        now = time.monotonic()
        for rid in [rid for rid, t in departed.items() if now - t >= PENDING_EXPIRY_S]:
            del departed[rid]
        return set(departed)


def group_key(info: InstanceInfo) -> str:
    """Serving group: instances interact (migrate, scale together) only within one."""
    return f"{info.model}|{info.fingerprint}" if info.fingerprint else info.model


def model_of_group(group: str) -> str:
    return group.split("|", 1)[0]
