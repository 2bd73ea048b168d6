"""Speed benchmarks (not tests): one dispatch decision over 1,000 instances, and a
10,000-request x 16-instance simulation. Writes bench/results/policy_speed.md.

Run: python bench/policy_speed.py
"""

from __future__ import annotations

import platform
import random
import statistics
import sys
import time
from pathlib import Path

from llumctl.policy import ClusterView, InstanceLoad, NewRequest, RequestLoad, get_policy
from llumctl.sim import Experiment, WorkloadSpec, run_experiment

OUT = Path(__file__).parent / "results" / "policy_speed.md"


def random_load(rng: random.Random, iid: str) -> InstanceLoad:
    running = tuple(
        RequestLoad(f"{iid}-{k}", rng.randint(1, 60), admitted_seq=k)
        for k in range(rng.randint(0, 20))
    )
    queued = tuple(
        RequestLoad(f"{iid}-q{k}", rng.randint(1, 300), is_decoding=False)
        for k in range(rng.randint(0, 3))
    )
    used = sum(r.num_blocks for r in running)
    return InstanceLoad(iid, 850, used, running=running, queued=queued)


def dispatch_us(name: str, num_instances: int, rounds: int) -> dict[str, float]:
    """Microseconds per decision: a fresh view per decision in which one instance's
    report changed since the previous decision (the controller's steady state)."""
    rng = random.Random(0)
    loads = [random_load(rng, f"i{n}") for n in range(num_instances)]
    policy = get_policy(name)
    policy.dispatch(ClusterView(tuple(loads)), [NewRequest("warm", 10)])
    samples = []
    cpu_total = 0.0
    for k in range(rounds):
        loads[k % num_instances] = random_load(rng, f"i{k % num_instances}")
        view = ClusterView(tuple(loads), now=float(k))
        new = [NewRequest(f"r{k}", rng.randint(1, 300))]
        start, cpu = time.perf_counter(), time.process_time()
        policy.dispatch(view, new)
        samples.append((time.perf_counter() - start) * 1e6)
        cpu_total += time.process_time() - cpu
    cold_start = time.perf_counter()
    fresh = [random_load(rng, f"c{n}") for n in range(num_instances)]
    build = time.perf_counter() - cold_start
    start = time.perf_counter()
    policy.dispatch(ClusterView(tuple(fresh)), [NewRequest("cold", 10)])
    cold = (time.perf_counter() - start) * 1e6
    return {
        "median": statistics.median(samples),
        "cpu": cpu_total / rounds * 1e6,
        "p99": sorted(samples)[int(len(samples) * 0.99)],
        "cold": cold,
        "build_ms": build * 1000,
    }


def sim_wall_s() -> tuple[float, float]:
    exp = Experiment(
        workload=WorkloadSpec(num_requests=10_000, rate=3.0, input="L", output="L"),
        policies=("llumnix",),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    run_experiment(exp)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    lines = [
        "# Policy and simulator speed",
        "",
        f"Command: `python bench/policy_speed.py` on {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}, load average at start {load} (shared machine).",
        "",
        "## One dispatch decision over 1,000 instances (`Policy.dispatch`, one request)",
        "",
        "Steady state: each decision gets a new `ClusterView` in which one instance's report",
        "changed; cold: a view of 1,000 never-scored reports. Target: <= 100 us.",
        "",
        "Wall times include time the process spent descheduled on the shared machine; CPU",
        "time (process_time, averaged over all decisions) does not.",
        "",
        "| policy | median wall us | p99 wall us | mean CPU us | cold wall us |",
        "|---|---|---|---|---|",
    ]
    for name in ("llumnix", "llumnix-base", "infaas++", "round-robin"):
        r = dispatch_us(name, 1000, 2000)
        lines.append(
            f"| {name} | {r['median']:.1f} | {r['p99']:.1f} | {r['cpu']:.1f} | {r['cold']:.0f} |"
        )
        print(lines[-1], flush=True)
    wall, cpu = sim_wall_s()
    lines += [
        "",
        "## Simulation: 10,000 requests (L-L, 3.0 req/s) x 16 instances, policy llumnix",
        "",
        f"Wall {wall:.1f} s, CPU {cpu:.1f} s (target: <= 30 s wall).",
        "",
    ]
    print(lines[-2], flush=True)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    sys.exit(main())
