"""Reproduce the paper's headline comparisons in the simulator (not a test).

Runs the workload files in examples/ through `llumctl sim --json` and writes
bench/results/sim_paper_<NAME>.md: one table per experiment (policy x metric, with ratios vs
INFaaS++ and round-robin where those ran). Everything here is SIMULATED.

Run: python bench/sim_paper.py [--requests N] [NAME ...]   (NAME: ll, ll-saturated, mm, ss, sl, ls,
priority, scaling; default: ll priority scaling)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "bench" / "results"
METRICS = (
    "prefill_mean",
    "prefill_p99",
    "decode_p99",
    "request_mean",
    "preemption_loss",
    "migrations",
    "avg_instances",
    "fragmentation",
)


def load_average() -> str:
    path = Path("/proc/loadavg")
    return path.read_text().split()[0] if path.exists() else "?"


def run(name: str, requests: int | None) -> tuple[str, dict[str, object], str]:
    """Run one workload; returns the command, its JSON and a wall/CPU/load note (the
    machine may be shared, so wall time alone says little)."""
    cmd = ["llumctl", "sim", f"examples/workload-{name}.toml", "--json"]
    if requests:
        cmd += ["--requests", str(requests)]
    load = load_average()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    note = f"{wall:.0f} s wall, {used:.0f} s CPU, load average {load} at start, {load_average()} at end"
    return " ".join(cmd), json.loads(done.stdout), note


def fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def ratio(value: object, base: object) -> str:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or not value:
        return "-"
    return f"{base / value:.2f}x"


def table(results: dict[str, dict[str, object]], scope: str) -> list[str]:
    """Rows per policy; ratio columns say how many times better than the baseline."""
    baselines = [b for b in ("infaas++", "round-robin", "llumnix-base") if b in results]
    head = ["policy", *METRICS] + [f"{m} vs {b}" for b in baselines for m in METRICS[:5]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, metrics in results.items():
        own = metrics if scope == "all" else metrics["high"]
        assert isinstance(own, dict)
        cells = [fmt(own.get(m)) for m in METRICS]
        for b in baselines:
            base = results[b] if scope == "all" else results[b]["high"]
            assert isinstance(base, dict)
            cells += [ratio(own.get(m), base.get(m)) for m in METRICS[:5]]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("names", nargs="*", default=["ll", "priority", "scaling"])
    args = parser.parse_args()
    for name in args.names:
        cmd, result, note = run(name, args.requests)
        results = result["results"]
        assert isinstance(results, dict)
        lines = [
            f"# Paper reproduction, {name} (SIMULATED: LLaMA-7B/A10 profile)",
            "",
            "Ratios are baseline / policy (> 1 means the row's policy is better). Times in s.",
            "What the numbers mean and why (tail analysis, misses): docs/simulator.md,",
            '"Paper reproduction".',
            "",
            f"`{cmd}` ({note})",
            "",
            f"Workload: `{json.dumps(result['workload'], sort_keys=True)}`",
            "",
        ]
        lines += table(results, "all") + [""]
        if name == "priority":
            lines += ["High-priority requests only:", ""] + table(results, "high") + [""]
        out = OUT_DIR / f"sim_paper_{name}.md"
        out.write_text("\n".join(lines))
        print("\n".join(lines), flush=True)
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
