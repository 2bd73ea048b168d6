"""Prometheus metrics of the controller (one registry per controller, so tests can run
several in one process) and the rolling latency window `llumctl top` shows."""

from __future__ import annotations

import math
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llumctl.controller.state import ClusterState

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DOWNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ["instance", "model", "engine"]
        self.freeness = Gauge(
            "llumctl_instance_freeness", "Freeness (blocks/request)", labels, registry=r
        )
        self.kv_used = Gauge(
            "llumctl_instance_kv_used_blocks", "KV blocks in use", labels, registry=r
        )
        self.kv_total = Gauge("llumctl_instance_kv_total_blocks", "KV blocks", labels, registry=r)
        self.running = Gauge("llumctl_instance_running", "Running requests", labels, registry=r)
        self.queued = Gauge("llumctl_instance_queued", "Queued requests", labels, registry=r)
        self.preempted = Gauge(
            "llumctl_instance_preempted", "Preempted requests", labels, registry=r
        )
        self.preemptions = Gauge(
            "llumctl_instance_preemptions_observed",
            "Preemptions seen in load reports since the instance joined",
            labels,
            registry=r,
        )
        self.dispatches = Counter(
            "llumctl_dispatch", "Requests dispatched", ["instance"], registry=r
        )
        self.requests = Counter(
            "llumctl_requests", "Requests finished", ["model", "status"], registry=r
        )
        self.migrations = Counter(
            "llumctl_migrations", "Migrations", ["status", "reason"], registry=r
        )
        self.downtime = Histogram(
            "llumctl_migration_downtime_seconds",
            "Migration downtime",
            buckets=_DOWNTIME_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llumctl_ttft_seconds",
            "Time to first token",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "llumctl_tpot_seconds",
            "Time per output token",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.scaling = Counter("llumctl_scaling_actions", "Scaling actions", ["action"], registry=r)
        # Recent samples (seconds) for percentiles in /api/status.
        self.recent_ttft: deque[float] = deque(maxlen=1000)
        self.recent_tpot: deque[float] = deque(maxlen=1000)

    def observe_request(self, priority: str, ttft_s: float | None, tpot_s: float | None) -> None:
        if ttft_s is not None:
            self.ttft.labels(priority).observe(ttft_s)
            self.recent_ttft.append(ttft_s)
        if tpot_s is not None:
            self.tpot.labels(priority).observe(tpot_s)
            self.recent_tpot.append(tpot_s)

    def render(self, state: ClusterState, score) -> bytes:  # type: ignore[no-untyped-def]
        """Refresh the per-instance gauges from the latest reports, then export."""
        for gauge in (
            self.freeness,
            self.kv_used,
            self.kv_total,
            self.running,
            self.queued,
            self.preempted,
            self.preemptions,
        ):
            gauge.clear()
        for entry in state.live():
            load = entry.load
            assert load is not None
            key = (entry.id, entry.info.model, entry.info.engine)
            f = score(entry)
            self.freeness.labels(*key).set(f if math.isfinite(f) else -1e9)
            self.kv_used.labels(*key).set(load.num_used_blocks)
            self.kv_total.labels(*key).set(load.num_total_blocks)
            self.running.labels(*key).set(len(load.running))
            self.queued.labels(*key).set(len(load.queued))
            self.preempted.labels(*key).set(load.num_preempted)
            self.preemptions.labels(*key).set(entry.num_preemptions_observed)
        return generate_latest(self.registry)


def percentiles(samples: deque[float] | list[float]) -> dict[str, float | None]:
    """p50/p90/p99 in milliseconds (None when there is no sample yet)."""
    ordered = sorted(samples)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        if not ordered:
            out[name] = None
            continue
        pos = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        out[name] = round(ordered[pos] * 1000, 3)
    return out
