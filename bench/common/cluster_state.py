"""Sampling a llumctl cluster's state during a run: did queues form, how full did KV get.

Rescheduling helps when requests queue behind an instance whose KV memory is full while
others have room. Whether any queue formed during a side-by-side run is what a reader needs
to judge a miss, so a thread asks the controller for its status every `interval_s` (one
GET, answered from the controller's memory) while the load runs.

`bench/side_by_side.py --sample-state` (the suite ran it until 2026-11-29). The thread
shares the load generator's process and the controller answers it, a cost the vllm-router
runs do not pay, and a visible one: llumctl's P50 TTFT was 79-121 ms in the suite's runs
with it against 47-86 ms in runs without it on the same machine that evening.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import httpx

# One sample: (running, queued, KV blocks used) per instance.
Sample = list[tuple[int, int, int]]


def summarize_samples(samples: Sequence[Sample]) -> dict[str, int]:
    """How many samples showed a queued request anywhere, the longest queue on one
    instance, and the most KV blocks one instance held."""
    return {
        "state_samples": len(samples),
        "queued_samples": sum(1 for s in samples if any(q > 0 for _, q, _ in s)),
        "max_queued": max((q for s in samples for _, q, _ in s), default=0),
        "kv_peak_blocks": max((kv for s in samples for _, _, kv in s), default=0),
    }


class ClusterSampler:
    """A daemon thread sampling `status()` (the controller's /api/status) until exit."""

    def __init__(self, status: Callable[[], dict[str, Any]], interval_s: float = 0.2) -> None:
        self.samples: list[Sample] = []
        self._status = status
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cluster-state", daemon=True)

    def __enter__(self) -> ClusterSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, int]:
        return summarize_samples(self.samples)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                instances = self._status()["instances"]
            except httpx.HTTPError:
                continue  # a slow answer under load is a missing sample, not a failed run
            if not self._stop.is_set():  # an answer that outlived the run is not counted
                self.samples.append(
                    [(i["running"], i["queued"], i["kv_used_blocks"]) for i in instances]
                )
