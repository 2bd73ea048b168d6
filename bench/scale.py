"""Scale: 64 sim-engine instances through the real controller, and the pure policy at 1,000.

Through the controller (started by `llumctl up`, sim engine: simulated instances, real
controller, agent and HTTP relay): controller CPU during a steady load, and dispatch
latency, measured as the TTFT of 1-token requests at low load (a 1-token prefill is ~0.2 ms
in the sim engine's profile, so the rest is dispatch + relay). The controller exports no
tick timings, so policy-tick and dispatch-decision durations are measured in-process on
views of the same size (64 and 1,000 instances, realistic per-instance request lists).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import llumctl_stack
from bench.common.engines import EngineShape
from bench.common.machine import process_cpu_seconds
from llumctl.bench.loadgen import LoadGenerator
from llumctl.bench.records import BenchRequest
from llumctl.bench.stats import percentile, summarize
from llumctl.bench.workload import generated
from llumctl.policy import get_policy
from llumctl.policy.views import ClusterView, InstanceLoad, NewRequest, RequestLoad
from llumctl.sim.workload import WorkloadSpec

SIM_INSTANCES = 64


def through_controller(work: Path, rate: float = 10.0, requests: int = 150) -> dict[str, Any]:
    toml = llumctl_stack.cluster_toml(SIM_INSTANCES, "sim", EngineShape(), "llumnix")
    cluster = llumctl_stack.up(work / "scale-home", toml, timeout_s=600)
    try:
        gen = LoadGenerator(f"{cluster.url}/v1", "sim", timeout_s=300.0)
        probes = [BenchRequest(i * 0.05, 1, 1) for i in range(100)]
        probe_records, _ = asyncio.run(gen.run(probes))
        dispatch = [r.ttft_s for r in probe_records if r.is_ok]
        spec = WorkloadSpec(requests, rate, "poisson", 1.0, "S", "32", 0.0, 3)
        cpu0, t0 = process_cpu_seconds(cluster.controller_pid), time.perf_counter()
        records, duration = asyncio.run(gen.run(generated(spec)))
        cpu = process_cpu_seconds(cluster.controller_pid) - cpu0
        wall = time.perf_counter() - t0
        summary = summarize(records, duration)
        instances = _instances(cluster)
    finally:
        llumctl_stack.down(cluster)
    return {
        "instances": instances,
        "dispatch_latency_p50_s": percentile(dispatch, 50),
        "dispatch_latency_p99_s": percentile(dispatch, 99),
        "dispatch_probe_errors": len(probes) - len(dispatch),
        "load_rate_rps": rate,
        "load_requests": requests,
        "load_errors": summary["errors"],
        "load_throughput_rps": summary["throughput_rps"],
        "relayed_tokens_per_s": summary["output_tokens_per_s"],
        "controller_cpu_percent": 100.0 * cpu / wall,
    }


def _instances(cluster: llumctl_stack.LlumctlCluster) -> int:
    """Instances the controller lists (-1 if it does not answer: an overloaded controller
    is a result here, not a reason to lose the phase)."""
    try:
        return len(cluster.status().get("instances", []))
    except Exception:
        return -1


def synthetic_view(num_instances: int, rng: random.Random) -> ClusterView:
    """A busy cluster: 0-20 running requests per instance, some queues, uneven memory."""
    instances = []
    for i in range(num_instances):
        running = tuple(
            RequestLoad(f"i{i}r{j}", rng.randint(2, 40), admitted_seq=j)
            for j in range(rng.randint(0, 20))
        )
        queued = tuple(
            RequestLoad(f"i{i}q{j}", rng.randint(4, 40)) for j in range(rng.randint(0, 2))
        )
        used = min(850, sum(r.num_blocks for r in running))
        instances.append(
            InstanceLoad(f"inst{i}", 850, used, running, queued, model="m", timestamp=0.0)
        )
    return ClusterView(tuple(instances), now=1.0)


def pure_policy(num_instances: int, repeats: int = 50) -> dict[str, Any]:
    rng = random.Random(num_instances)
    policy = get_policy("llumnix")
    view = synthetic_view(num_instances, rng)
    tick, dispatch = [], []
    for k in range(repeats):
        t = time.perf_counter()
        policy.tick(view)
        tick.append(time.perf_counter() - t)
        request = NewRequest(f"new{k}", rng.randint(2, 40), model="m")
        t = time.perf_counter()
        policy.dispatch(view, [request])
        dispatch.append(time.perf_counter() - t)
    return {
        "instances": num_instances,
        "tick_median_s": statistics.median(tick),
        "tick_p99_s": percentile(tick, 99),
        "dispatch_median_s": statistics.median(dispatch),
        "dispatch_p99_s": percentile(dispatch, 99),
    }


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    rate, requests = (10.0, 30) if quick else (10.0, 150)
    return {
        "controller_64_sim": through_controller(work, rate, requests),
        "policy_64": pure_policy(SIM_INSTANCES),
        "policy_1000": pure_policy(1000),
    }


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llumctl-scale-") as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
