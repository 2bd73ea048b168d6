"""Dispatch: pick an instance for a new request through `llumctl.policy`.

Decisions are made one at a time under a lock, each recorded as a pending dispatch before
the next is scored, so a burst spreads over the cluster instead of piling onto the
instance that looked freest at its last report. A request whose model has no live instance
yet waits (auto-scaling or a restarting agent may bring one) up to `dispatch_timeout_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from llumctl.controller import events as ev
from llumctl.controller.config import ControllerConfig
from llumctl.controller.events import EventLog
from llumctl.controller.metrics import Metrics
from llumctl.controller.state import ClusterState, InstanceEntry, RequestRecord
from llumctl.errors import EngineError, NotFoundError
from llumctl.policy import NewRequest, PendingDispatch, Policy, blocks_for_tokens

_RETRY_S = 0.05


class ModelNotFound(NotFoundError):
    """The request names a model no instance serves and none can be started."""


class Dispatcher:
    def __init__(
        self,
        state: ClusterState,
        policy: Callable[[], Policy],
        events: EventLog,
        metrics: Metrics,
        config: ControllerConfig,
    ) -> None:
        self._state = state
        self._policy = policy
        self._events = events
        self._metrics = metrics
        self._config = config
        self._lock = asyncio.Lock()

    def check_model(self, model: str) -> None:
        if model not in self._state.models() and self._config.template(model) is None:
            known = sorted(self._state.models() | {m.name for m in self._config.models})
            raise ModelNotFound(
                f"model {model!r} does not exist; available: {', '.join(known) or 'none'}"
            )

    def estimate_blocks(self, model: str, num_prompt_tokens: int) -> int:
        """Demand in blocks: the prompt plus its first output token."""
        sizes = [e.load.block_size_tokens for e in self._state.live(model) if e.load]
        return blocks_for_tokens(num_prompt_tokens + 1, sizes[0] if sizes else 16)

    async def choose(self, record: RequestRecord) -> InstanceEntry:
        """The instance `record` goes to (recorded as pending there)."""
        deadline = time.monotonic() + self._config.dispatch_timeout_s
        while True:
            self.check_model(record.model)
            entry = await self._try_once(record)
            if entry is not None:
                return entry
            if time.monotonic() > deadline:
                raise EngineError(f"no instance of model {record.model!r} became available")
            await asyncio.sleep(_RETRY_S)

    async def _try_once(self, record: RequestRecord) -> InstanceEntry | None:
        async with self._lock:
            view = self._state.view(by_group=False)
            new = NewRequest(
                record.id,
                record.num_blocks_estimate,
                record.priority,
                record.arrival,
                record.model,
            )
            decisions = self._policy().dispatch(view, [new])
            if not decisions:
                return None
            entry = self._state.instances[decisions[0].instance_id]
            pending = PendingDispatch(record.id, record.num_blocks_estimate, record.priority)
            self._state.add_pending(entry.id, pending)
        record.instance = entry.id
        record.history.append({"instance": entry.id, "from_index": 0, "time": time.time()})
        self._metrics.dispatches.labels(entry.id).inc()
        self._events.add(
            ev.DISPATCH,
            request=record.id,
            instance=entry.id,
            model=record.model,
            priority=int(record.priority),
            num_blocks=record.num_blocks_estimate,
        )
        return entry
