"""Controller overhead: latency llumctl adds over sending to an engine directly, next to the
latency vllm-router adds, at low load and at saturation; relayed tokens/s at saturation.

Low load: requests one at a time (idle engines), so TTFT/TPOT differences are the stack's
own cost. Saturation: a burst of `burst_per_instance` requests per instance at once; the
3-instance stacks get N times the burst of the single directly-addressed engine, so each
engine sees the same load. Runs inside the suite (bench/run_all.sh), sharing its engines.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass
from typing import Any

from llumctl.bench.loadgen import LoadGenerator
from llumctl.bench.records import BenchRequest
from llumctl.bench.stats import summarize


@dataclass(frozen=True)
class OverheadConfig:
    low_requests: int = 16
    low_spacing_s: float = 0.6
    prompt_tokens: int = 64
    output_tokens: int = 32
    burst_per_instance: int = 16


def low_load(cfg: OverheadConfig) -> list[BenchRequest]:
    return [
        BenchRequest(i * cfg.low_spacing_s, cfg.prompt_tokens, cfg.output_tokens)
        for i in range(cfg.low_requests)
    ]


def burst(cfg: OverheadConfig, instances: int) -> list[BenchRequest]:
    n = cfg.burst_per_instance * instances
    return [BenchRequest(0.0, cfg.prompt_tokens, cfg.output_tokens) for _ in range(n)]


def measure(url: str, cfg: OverheadConfig, instances: int, seed: int = 11) -> dict[str, Any]:
    """Median TTFT/TPOT at low load; TTFT/TPOT and tokens/s of the burst (seconds)."""
    out: dict[str, Any] = {}
    for phase, workload in (("low", low_load(cfg)), ("saturated", burst(cfg, instances))):
        gen = LoadGenerator(f"{url}/v1", "tiny", timeout_s=600.0, seed=seed)
        records, duration = asyncio.run(gen.run(workload))
        ok = [r for r in records if r.is_ok]
        summary = summarize(records, duration)
        out[phase] = {
            "ttft_median": statistics.median(r.ttft_s for r in ok) if ok else None,
            "tpot_median": statistics.median(r.tpot_s for r in ok) if ok else None,
            "ttft_p99": summary["ttft_p99"],
            "output_tokens_per_s": summary["output_tokens_per_s"],
            "errors": summary["errors"],
        }
    return out


def added(stack: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """Per phase: the stack's median TTFT/TPOT minus the direct engine's."""
    result = {}
    for phase in ("low", "saturated"):
        s, d = stack[phase], direct[phase]
        result[phase] = {
            "added_ttft_s": _minus(s["ttft_median"], d["ttft_median"]),
            "added_tpot_s": _minus(s["tpot_median"], d["tpot_median"]),
        }
    return result


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def verdict(ours: dict[str, Any], router: dict[str, Any]) -> dict[str, Any]:
    """Target: llumctl's added latency <= 2x vllm-router's (per phase, TTFT and TPOT).

    An added latency at or below zero (within noise) counts as met: the ratio of two
    numbers near zero says nothing."""
    checks: dict[str, bool | None] = {}
    for phase in ("low", "saturated"):
        for key in ("added_ttft_s", "added_tpot_s"):
            a, b = ours[phase][key], router[phase][key]
            if a is None or b is None:
                checks[f"{phase}.{key}"] = None
                continue
            checks[f"{phase}.{key}"] = a <= max(2 * b, 0.001)
    return {"checks": checks, "met": all(v for v in checks.values())}


def report(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Raw measurements of the three paths, added latencies and the verdict."""
    direct, router = peer["overhead_direct"], peer["overhead_router"]
    added_ours, added_router = added(ours, direct), added(router, direct)
    return {
        "direct": direct,
        "llumctl": ours,
        "vllm_router": router,
        "added_llumctl": added_ours,
        "added_vllm_router": added_router,
        "relayed_tokens_per_s_saturated": ours["saturated"]["output_tokens_per_s"],
        "verdict": verdict(added_ours, added_router),
    }
