"""The periodic policy loop: liveness, migration pairing, auto-scaling, drain reaping.

Each tick hands the current `ClusterView` to the policy and carries out its decisions in
background tasks, so a slow migration never delays the next tick. In-flight migrations
count in the view (`num_migrating_*`), which keeps a pair from being formed twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from llumctl.controller.actuator import Actuator
from llumctl.controller.state import ClusterState, group_key, model_of_group
from llumctl.errors import LlumctlError
from llumctl.policy import Migrate, Policy, ScaleDown, ScaleUp

log = logging.getLogger("llumctl.controller")

# A policy tick this much later than due counts as a controller stall (see `run`).
STALL_EXCUSED_AFTER_S = 0.5


class PolicyLoop:
    def __init__(
        self,
        state: ClusterState,
        policy: Callable[[], Policy],
        actuator: Actuator,
        period_s: Callable[[], float],
    ) -> None:
        self._state = state
        self._policy = policy
        self._actuator = actuator
        self._period_s = period_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self.num_ticks = 0

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("policy tick failed")
            period = self._period_s()
            due = time.monotonic() + period
            await asyncio.sleep(period)
            # A late wake-up means this process did not run (a busy event loop, or the
            # machine starving it): reports sent meanwhile are still queued, so the
            # silence is the controller's, not the instances'.
            late_s = time.monotonic() - due
            if late_s > STALL_EXCUSED_AFTER_S:
                self._state.excuse_stall(late_s)

    async def tick(self) -> None:
        self.num_ticks += 1
        self._actuator.check_liveness()
        await self._actuator.reap_drained()
        view = self._state.view(by_group=True)
        for decision in self._policy().tick(view):
            if isinstance(decision, Migrate):
                self._spawn(
                    self._actuator.migrate(
                        decision.src,
                        decision.dst,
                        request_ids=decision.request_ids,
                        count=decision.num_requests,
                        trigger=decision.reason,
                        queued_first=decision.queued_first,
                        max_num_blocks=decision.max_num_blocks,
                    )
                )
            elif isinstance(decision, ScaleUp):
                self._state.last_scale_time[decision.model] = time.monotonic()
                model = model_of_group(decision.model)
                self._spawn(self._actuator.scale_up(model, decision.num_instances))
            elif isinstance(decision, ScaleDown):
                entry = self._state.instances[decision.instance_id]
                self._state.last_scale_time[group_key(entry.info)] = time.monotonic()
                self._spawn(self._actuator.scale_down(decision.instance_id))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(_quiet(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _quiet(coro: Coroutine[Any, Any, Any]) -> None:
    """Policy actions fail often and harmlessly (request finished, room gone): the
    actuator already logged an event; do not let the task's exception go unobserved."""
    try:
        await coro
    except LlumctlError as exc:
        log.info("policy action failed: %s", exc)
