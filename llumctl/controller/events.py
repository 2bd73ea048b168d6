"""The controller's recent-events log: dispatches, migrations, scaling, failures.

An in-memory ring with a monotonically increasing sequence number, so `llumctl top` can
poll `GET /api/events?since=SEQ` and get only what is new. It is not persisted: after a
restart the log starts empty (nothing in it is needed to rebuild the cluster).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

# Event kinds (the `kind` field).
DISPATCH = "dispatch"
MIGRATION = "migration"
SCALE_UP = "scale-up"
SCALE_DOWN = "scale-down"
INSTANCE_UP = "instance-up"
INSTANCE_STOPPED = "instance-stopped"
FAILURE = "failure"
POLICY = "policy"


class EventLog:
    def __init__(self, max_events: int = 2000) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._seq = 0

    def add(self, kind: str, **details: Any) -> dict[str, Any]:
        self._seq += 1
        event = {"seq": self._seq, "time": time.time(), "kind": kind, **details}
        self._events.append(event)
        return event

    def since(self, seq: int = 0, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._events if e["seq"] > seq and (kind is None or e["kind"] == kind)]

    def recent(self, kinds: tuple[str, ...], limit: int = 20) -> list[dict[str, Any]]:
        found = [e for e in self._events if e["kind"] in kinds]
        return found[-limit:]

    @property
    def last_seq(self) -> int:
        return self._seq
