"""Carrying out decisions: migrate, drain, scale up/down, stop, and instance failures.

Both the policy loop and the operator's control API act through these methods, so every
action leaves the same events and metrics whoever asked for it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from llumctl.controller import events as ev
from llumctl.controller.clients import AgentClient, InstanceClient
from llumctl.controller.config import ControllerConfig
from llumctl.controller.events import EventLog
from llumctl.controller.metrics import Metrics
from llumctl.controller.state import AgentEntry, ClusterState, InstanceEntry, group_key
from llumctl.errors import LlumctlError, MigrationError, NotFoundError


class Actuator:
    def __init__(
        self,
        state: ClusterState,
        instances: InstanceClient,
        agents: AgentClient,
        events: EventLog,
        metrics: Metrics,
        config: ControllerConfig,
    ) -> None:
        self._state = state
        self._instances = instances
        self._agents = agents
        self._events = events
        self._metrics = metrics
        self._config = config
        # Migrations asked for and not answered yet: {"src", "dst", "request_id", "since"}.
        self.inflight: dict[int, dict[str, Any]] = {}
        self._num_asked = 0

    def entry(self, instance_id: str) -> InstanceEntry:
        entry = self._state.instances.get(instance_id)
        if entry is None or entry.load is None:
            raise NotFoundError(f"unknown instance {instance_id!r}")
        return entry

    # ---- migration -------------------------------------------------------------------
    async def migrate(
        self,
        src_id: str,
        dst_id: str,
        *,
        request_ids: tuple[str, ...] = (),
        count: int = 1,
        trigger: str = "operator",
        queued_first: bool = True,
        max_num_blocks: int | None = None,
    ) -> list[dict[str, Any]]:
        """Ask the source llumlet to move requests to `dst`; log each result.

        Without `request_ids` the llumlet picks `count` (queued ones first when
        `queued_first`, none larger than `max_num_blocks`; see
        `llumctl.policy.migration.select_candidates`)."""
        src, dst = self.entry(src_id), self.entry(dst_id)
        if src_id == dst_id:
            raise MigrationError("source and destination are the same instance", "same-instance")
        if group_key(src.info) != group_key(dst.info):
            raise MigrationError(
                f"{src_id} and {dst_id} run different models or engine configurations",
                "incompatible",
            )
        body = {
            "dst_url": dst.info.url,
            "dst_instance_id": dst_id,
            "request_ids": list(request_ids),
            "num_requests": count,
            "queued_first": queued_first,
            "mode": "live",
        }
        if max_num_blocks is not None:
            body["max_num_blocks"] = max_num_blocks
        src.num_inflight_out += 1
        dst.num_inflight_in += 1
        self._num_asked += 1
        key = self._num_asked
        rid = request_ids[0] if len(request_ids) == 1 else None
        self.inflight[key] = {"src": src_id, "dst": dst_id, "request_id": rid, "since": time.time()}
        try:
            results = await self._instances.migrate(src.info.url, body)
        except LlumctlError as exc:
            reason = getattr(exc, "reason", type(exc).__name__)
            self._log_migration({"src": src_id, "dst": dst_id, "status": "failed"}, trigger, reason)
            raise
        finally:
            src.num_inflight_out -= 1
            dst.num_inflight_in -= 1
            self.inflight.pop(key, None)
        for result in results:
            self._log_migration(result, trigger, result.get("reason", ""))
        return results

    def _log_migration(self, result: dict[str, Any], trigger: str, reason: str) -> None:
        status = str(result.get("status", "failed"))
        downtime_ms = float(result.get("downtime_ms", 0.0) or 0.0)
        self._metrics.migrations.labels(status, trigger).inc()
        if status == "committed":
            self._metrics.downtime.observe(downtime_ms / 1000)
        self._events.add(
            ev.MIGRATION,
            request=result.get("request_id"),
            src=result.get("src"),
            dst=result.get("dst"),
            status=status,
            reason=reason,
            trigger=trigger,
            mode=result.get("mode", "live"),
            downtime_ms=downtime_ms,
            at=result.get("at"),
            num_blocks=result.get("num_blocks"),
        )

    # ---- drain, stop, failures -----------------------------------------------------------
    async def drain(self, instance_id: str, *, stop_when_empty: bool = False) -> None:
        entry = self.entry(instance_id)
        # The intent first: if the call times out after the instance drained, the
        # controller still treats it as draining (it alone dispatches there).
        entry.is_draining = True
        entry.is_stop_when_empty = entry.is_stop_when_empty or stop_when_empty
        self._state.drain_intent[instance_id] = entry.is_stop_when_empty
        await self._instances.drain(entry.info.url, True)
        self._events.add(ev.POLICY, action="drain", instance=instance_id, stop=stop_when_empty)

    async def reap_drained(self) -> None:
        """Stop instances drained for scale-down once nothing runs on them."""
        for entry in list(self._state.instances.values()):
            if not entry.is_stop_when_empty or entry.load is None:
                continue
            busy = entry.load.num_requests or entry.num_inflight_in or entry.num_inflight_out
            relayed = any(
                r.instance == entry.id and r.state in ("queued", "running")
                for r in self._state.requests.values()
            )
            if busy or relayed:
                continue
            await self.stop_instance(entry.id, kind=ev.SCALE_DOWN)

    async def stop_instance(self, instance_id: str, *, kind: str = ev.INSTANCE_STOPPED) -> None:
        entry = self._state.instances.get(instance_id)
        if entry is None:
            raise NotFoundError(f"unknown instance {instance_id!r}")
        agent = self._state.agents.get(entry.info.agent_id)
        if agent is None:
            raise NotFoundError(f"agent of instance {instance_id!r} is not registered")
        await self._agents.stop_instance(agent.url, instance_id)
        self._state.tombstone(instance_id)
        self._state.drain_intent.pop(instance_id, None)
        self._metrics.scaling.labels("stop").inc()
        self._events.add(kind, instance=instance_id, model=entry.info.model, phase="stopped")

    def check_liveness(self) -> None:
        """Drop instances whose reports stopped; their relayed requests fail on their own."""
        for entry in self._state.stale_instances():
            self._state.remove_instance(entry.id)
            self._events.add(
                ev.FAILURE,
                instance=entry.id,
                reason=f"no load report for {self._config.report_timeout_s}s",
            )

    def instance_failed(self, instance_id: str, reason: str) -> None:
        if self._state.remove_instance(instance_id) is not None:
            self._events.add(ev.FAILURE, instance=instance_id, reason=reason)

    # ---- scaling -----------------------------------------------------------------------
    async def scale_up(self, model: str, count: int = 1, *, trigger: str = "policy") -> list[str]:
        """Start `count` instances of `model` on agents with room; their ids."""
        template = self._config.template(model)
        if template is None:
            raise NotFoundError(f"no instance template for model {model!r} in the config")
        started: list[str] = []
        for _ in range(count):
            agent = self._agent_with_room()
            if agent is None:
                self._events.add(ev.FAILURE, action="scale-up", model=model, reason="pool full")
                break
            placeholder = f"starting-{uuid.uuid4().hex[:8]}"
            starting = self._state.starting.setdefault(model, set())
            starting.add(placeholder)
            body = {"engine": template.engine, "model": model, "engine_args": template.engine_args}
            try:
                info = await self._agents.start_instance(agent.url, body)
            except LlumctlError as exc:
                self._events.add(ev.FAILURE, action="scale-up", model=model, reason=str(exc))
                raise
            finally:
                starting.discard(placeholder)
            self._state.upsert_info(info, from_agent=True)
            if info.state == "starting":
                starting.add(info.instance_id)
            started.append(info.instance_id)
            self._metrics.scaling.labels("up").inc()
            self._events.add(
                ev.SCALE_UP, instance=info.instance_id, model=model, agent=agent.agent_id,
                engine=info.engine, trigger=trigger,
            )  # fmt: skip
        return started

    async def scale_down(self, instance_id: str, *, trigger: str = "policy") -> None:
        model = self.entry(instance_id).info.model
        await self.drain(instance_id, stop_when_empty=True)
        self._metrics.scaling.labels("down").inc()
        self._events.add(
            ev.SCALE_DOWN, instance=instance_id, model=model, phase="draining",
            trigger=trigger,
        )  # fmt: skip

    async def scale_to(self, model: str, target: int) -> dict[str, Any]:
        """Operator scaling: start or drain-and-stop instances until `target` remain."""
        active = [e for e in self._state.live(model) if not e.is_draining]
        num_starting = len(self._state.starting.get(model, set()))
        current = len(active) + num_starting
        if target > current:
            started = await self.scale_up(model, target - current, trigger="operator")
            return {"started": started, "draining": []}
        victims = sorted(active, key=lambda e: (e.load.num_requests if e.load else 0, e.id))
        draining = [e.id for e in victims[: max(0, current - target)]]
        for instance_id in draining:
            await self.scale_down(instance_id, trigger="operator")
        return {"started": [], "draining": draining}

    def _agent_with_room(self) -> AgentEntry | None:
        counts: dict[str, int] = {}
        for entry in self._state.instances.values():
            counts[entry.info.agent_id] = counts.get(entry.info.agent_id, 0) + 1
        room = [
            a for a in self._state.agents.values() if counts.get(a.agent_id, 0) < a.max_instances
        ]
        return min(room, key=lambda a: (counts.get(a.agent_id, 0), a.agent_id), default=None)
