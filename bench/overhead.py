"""Controller overhead: latency llumctl adds over sending to an engine directly, next to the
latency vllm-router adds, at low load and at saturation; relayed tokens/s at saturation.

Low load: requests one at a time (idle engines), alternating between the stack and its own
engine addressed directly (llumctl: an instance's API; vllm-router: one of its vLLM
servers), so each pair sees the same machine: measured minutes apart, as the suite first
did, the direct engine came out slower than either stack by more than a hop. Each request
has its own prompt, so no path finds another's in a prefix cache. Both probes time every
chunk or event that carries a token, text or not (`is_token_chunk`).
Saturation: `saturated_bursts` bursts of `burst_per_instance` requests per instance at
once, each metric the median over the bursts; the 3-instance stacks get N times the burst
of the single directly-addressed vLLM server (phase B), so each engine sees the same load.
Runs inside the suite (bench/run_all.sh), sharing its engines.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from llumctl.bench.loadgen import LoadGenerator, prompt_token_ids
from llumctl.bench.records import BenchRequest
from llumctl.bench.stats import summarize


@dataclass(frozen=True)
class OverheadConfig:
    # Rounds of the low-load pair: the median of 16 moved by 1-1.5 ms between runs of
    # one cluster (2026-11-28), as much as the hop being measured.
    low_requests: int = 32
    low_spacing_s: float = 0.6
    prompt_tokens: int = 64
    output_tokens: int = 32
    burst_per_instance: int = 16
    # Bursts per stack, reported by their medians: one burst's TPOT median moved 7-28 ms
    # between identical bursts on one llumctl cluster (2026-11-28), more than the
    # difference between the stacks.
    saturated_bursts: int = 3


def low_load(cfg: OverheadConfig) -> list[BenchRequest]:
    return [
        BenchRequest(i * cfg.low_spacing_s, cfg.prompt_tokens, cfg.output_tokens)
        for i in range(cfg.low_requests)
    ]


def burst(cfg: OverheadConfig, instances: int) -> list[BenchRequest]:
    n = cfg.burst_per_instance * instances
    return [BenchRequest(0.0, cfg.prompt_tokens, cfg.output_tokens) for _ in range(n)]


# One streamed request on an idle path: (TTFT, TPOT) in seconds.
Probe = Callable[[httpx.AsyncClient, list[int], int], Awaitable[tuple[float, float]]]


def openai_probe(url: str, model: str = "tiny") -> Probe:
    """A completion streamed from an OpenAI-compatible endpoint (base URL, no /v1)."""

    async def probe(client: httpx.AsyncClient, prompt: list[int], out: int) -> tuple[float, float]:
        body = {"model": model, "prompt": prompt, "max_tokens": out, "temperature": 0}
        body.update(stream=True, ignore_eos=True)
        times = []
        t0 = time.perf_counter()
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if line.startswith("data: {") and is_token_chunk(line[6:]):
                    times.append(time.perf_counter())
        return ttft_tpot(t0, times, out)

    return probe


def is_token_chunk(data: str) -> bool:
    """Whether a completion chunk carries output, *including an empty text*: a token that
    ends inside a multi-byte character (a quarter of the random-weight model's tokens) has
    none, and counting only chunks with text put the first token late and stretched the
    gaps between tokens on the OpenAI path alone (the llumctl instance probe counts every
    token), which once showed as 2.4 ms of added per-token latency that was not there."""
    choices = json.loads(data).get("choices") or []
    return bool(choices) and choices[0].get("text") is not None


def instance_probe(url: str, secret: str) -> Probe:
    """A request streamed from a llumctl instance's own API (`POST {url}/generate`)."""
    headers = {"Authorization": f"Bearer {secret}"}

    async def probe(client: httpx.AsyncClient, prompt: list[int], out: int) -> tuple[float, float]:
        body = {
            "request_id": uuid.uuid4().hex,
            "prompt_token_ids": prompt,
            "sampling": {"max_tokens": out, "temperature": 0, "ignore_eos": True},
        }
        times = []
        t0 = time.perf_counter()
        async with client.stream("POST", f"{url}/generate", json=body, headers=headers) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                # The `finished` event too: the controller relays it as the closing chunk,
                # which the OpenAI probe counts like vLLM's own last chunk.
                if line.strip() and json.loads(line)["type"] in ("token", "finished"):
                    times.append(time.perf_counter())
        return ttft_tpot(t0, times, out)

    return probe


def ttft_tpot(t0: float, times: list[float], num_tokens: int) -> tuple[float, float]:
    """First-token time, and the time per token after it, from a stream's arrival times:
    the span from the first to the last arrival over the `num_tokens - 1` tokens after
    the first (the count asked for, with `ignore_eos`), so a path that sends a closing
    chunk after its last token (llumctl) and one that closes on its last token (vLLM)
    give the same per-token time."""
    if len(times) < 2 or num_tokens < 2:
        raise RuntimeError(f"a probe got {len(times)} arrivals for {num_tokens} tokens")
    return times[0] - t0, (times[-1] - times[0]) / (num_tokens - 1)


async def low_load_pair(
    stack: Probe, direct: Probe, cfg: OverheadConfig, seed: int
) -> dict[str, dict[str, float]]:
    """Median TTFT/TPOT through the stack and to the engine directly, one request at a
    time, alternating, with the order swapped every round (`pair_order`).

    Every request has a prompt of its own (same length): with one prompt sent to both in
    turn, the second found it in the engine's prefix cache whenever both went to the
    same engine and skipped its prefill, ~3 ms here. llumctl's idle cluster sent the
    stack's request to the very instance probed directly, a round-robin router to it one
    time in three, so the cache made llumctl's hop look ~2.5 ms dearer than it was."""
    rng = random.Random(seed)
    probes = {"stack": stack, "direct": direct}
    got: dict[str, list[tuple[float, float]]] = {"stack": [], "direct": []}
    async with httpx.AsyncClient(timeout=120) as client:
        for round_index in range(cfg.low_requests):
            for name in pair_order(round_index):
                prompt = prompt_token_ids(cfg.prompt_tokens, rng)
                got[name].append(await probes[name](client, prompt, cfg.output_tokens))
                await asyncio.sleep(cfg.low_spacing_s / 2)
    return {
        name: {
            "ttft_median": statistics.median(t for t, _ in pairs),
            "tpot_median": statistics.median(p for _, p in pairs),
        }
        for name, pairs in got.items()
    }


def pair_order(round_index: int) -> tuple[str, str]:
    """Which path goes first in a low-load round: each in turn, so whatever the first
    request after a pause pays falls on both alike."""
    return ("stack", "direct") if round_index % 2 == 0 else ("direct", "stack")


def measure(
    url: str, cfg: OverheadConfig, instances: int, seed: int = 11, direct: Probe | None = None
) -> dict[str, Any]:
    """Median TTFT/TPOT at low load; TTFT/TPOT and tokens/s of the bursts (seconds). With
    `direct`, the low-load medians come from alternating with the engine addressed
    directly, whose own medians are `low_direct`."""
    out: dict[str, Any] = {}
    if direct is not None:
        pair = asyncio.run(low_load_pair(openai_probe(url), direct, cfg, seed))
        out["low"], out["low_direct"] = pair["stack"], pair["direct"]
    else:
        out["low"] = _phase(url, low_load(cfg), seed)
    bursts = [_phase(url, burst(cfg, instances), seed + k) for k in range(cfg.saturated_bursts)]
    out["saturated"] = {**_medians(bursts), "bursts": bursts}
    return out


def _phase(url: str, workload: list[BenchRequest], seed: int) -> dict[str, Any]:
    gen = LoadGenerator(f"{url}/v1", "tiny", timeout_s=600.0, seed=seed)
    records, duration = asyncio.run(gen.run(workload))
    ok = [r for r in records if r.is_ok]
    summary = summarize(records, duration)
    return {
        "ttft_median": statistics.median(r.ttft_s for r in ok) if ok else None,
        "tpot_median": statistics.median(r.tpot_s for r in ok) if ok else None,
        "ttft_p99": summary["ttft_p99"],
        "output_tokens_per_s": summary["output_tokens_per_s"],
        "errors": summary["errors"],
    }


def _medians(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's median over the bursts (errors summed)."""
    out: dict[str, Any] = {"errors": sum(p["errors"] for p in phases)}
    for key in ("ttft_median", "tpot_median", "ttft_p99", "output_tokens_per_s"):
        values = [p[key] for p in phases if p[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def added(stack: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """Per phase: the stack's median TTFT/TPOT minus the direct engine's; at low load the
    engine alternated with, when measured (see the module's docstring)."""
    result = {}
    for phase in ("low", "saturated"):
        s, d = stack[phase], direct[phase]
        if phase == "low" and "low_direct" in stack:
            d = stack["low_direct"]
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
