"""Controller overhead: latency llumctl adds over sending to its engines directly, next to
the latency vllm-router adds over its own, at low load and at saturation; relayed tokens/s
at saturation.

Each stack is measured against its own engines addressed directly (llumctl: the instances'
API; vllm-router: its vLLM servers), alternating between the two paths with the order
swapped every round (`pair_order`), so both see the same machine in the same minutes:
measured apart, as the suite first did, the direct engine came out slower than either stack
by more than a hop. Every request has its own prompt, so no path finds another's in a
prefix cache. Both probes time every chunk or event that carries a token, text or not
(`is_token_chunk`).
Low load: one request at a time; the direct path is the stack's first engine.
Saturation: `saturated_bursts` rounds of a burst of `burst_per_instance` requests per
instance at once, through the stack and spread evenly over the engines directly (request i
to engine i mod N), each metric the median over the bursts.
Runs inside the suite (bench/run_all.sh), sharing its engines.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from llumctl.bench.lines import iter_lines
from llumctl.bench.loadgen import prompt_token_ids
from llumctl.bench.stats import percentile


@dataclass(frozen=True)
class OverheadConfig:
    # Rounds of the low-load pair: the median of 16 moved by 1-1.5 ms between runs of
    # one cluster (2026-11-28), as much as the hop being measured.
    low_requests: int = 32
    low_spacing_s: float = 0.6
    prompt_tokens: int = 64
    output_tokens: int = 32
    # A burst that fits the engines' KV memory (12 x 3 blocks of 40), so that it
    # measures the path and not which requests make an engine's first wave: with 16 per
    # engine (48 blocks), whoever arrived after the first admissions waited for a whole
    # wave to finish, and llumnix migrated during the burst (2026-11-28).
    burst_per_instance: int = 12
    # Bursts per path, reported by their medians: one burst's TTFT median moved 3-4x
    # between identical bursts on one cluster, through either stack and to the engines
    # directly alike (2026-11-28), more than the difference between the paths.
    saturated_bursts: int = 7
    burst_pause_s: float = 0.5


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
            async for line in iter_lines(resp.aiter_bytes()):
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
            async for line in iter_lines(resp.aiter_bytes()):
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
    """Which path goes first in a round (one request each at low load, one burst each at
    saturation): each in turn, so whatever the first after a pause pays falls on both
    alike."""
    return ("stack", "direct") if round_index % 2 == 0 else ("direct", "stack")


def measure(
    url: str, cfg: OverheadConfig, directs: Sequence[Probe], seed: int = 11
) -> dict[str, Any]:
    """A stack (OpenAI base URL) against its engines addressed directly (`directs`, one
    probe per engine): median TTFT/TPOT at low load (`low`, `low_direct`, the first
    engine), and per-burst figures with their medians at saturation (`saturated`,
    `saturated_direct`), in seconds."""
    stack = openai_probe(url)
    low = asyncio.run(low_load_pair(stack, directs[0], cfg, seed))
    saturated = asyncio.run(saturated_pair(stack, directs, cfg, seed + 1))
    return {
        "low": low["stack"],
        "low_direct": low["direct"],
        "saturated": saturated["stack"],
        "saturated_direct": saturated["direct"],
    }


async def saturated_pair(
    stack: Probe, directs: Sequence[Probe], cfg: OverheadConfig, seed: int
) -> dict[str, dict[str, Any]]:
    """Bursts of `burst_per_instance` requests per engine at once, through the stack and
    spread evenly over the engines directly, in turn with the order swapped every round;
    each path's bursts and their medians (`_medians`)."""
    rng = random.Random(seed)
    n = cfg.burst_per_instance * len(directs)
    paths = {"stack": [stack] * n, "direct": [directs[i % len(directs)] for i in range(n)]}
    got: dict[str, list[dict[str, Any]]] = {"stack": [], "direct": []}
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for round_index in range(cfg.saturated_bursts):
            for name in pair_order(round_index):
                got[name].append(await _burst(client, paths[name], cfg, rng))
                await asyncio.sleep(cfg.burst_pause_s)
    return {name: {**_medians(bursts), "bursts": bursts} for name, bursts in got.items()}


async def _burst(
    client: httpx.AsyncClient, probes: list[Probe], cfg: OverheadConfig, rng: random.Random
) -> dict[str, Any]:
    """One burst: every probe at once, each with a prompt of its own."""
    prompts = [prompt_token_ids(cfg.prompt_tokens, rng) for _ in probes]
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(
            probe(client, prompt, cfg.output_tokens)
            for probe, prompt in zip(probes, prompts, strict=True)
        ),
        return_exceptions=True,
    )
    duration = time.perf_counter() - t0
    ok = [r for r in results if not isinstance(r, BaseException)]
    ttfts = [ttft for ttft, _ in ok]
    return {
        "ttft_median": statistics.median(ttfts) if ok else None,
        "tpot_median": statistics.median(tpot for _, tpot in ok) if ok else None,
        "ttft_p99": percentile(ttfts, 99) if ok else None,
        "output_tokens_per_s": len(ok) * cfg.output_tokens / duration,
        "errors": len(results) - len(ok),
    }


def _medians(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's median over the bursts (errors summed)."""
    out: dict[str, Any] = {"errors": sum(p["errors"] for p in phases)}
    for key in ("ttft_median", "tpot_median", "ttft_p99", "output_tokens_per_s"):
        values = [p[key] for p in phases if p[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def added(stack: dict[str, Any]) -> dict[str, Any]:
    """Per phase: the stack's median TTFT/TPOT minus its engines' addressed directly."""
    result = {}
    for phase in ("low", "saturated"):
        s, d = stack[phase], stack[f"{phase}_direct"]
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


def report(ours: dict[str, Any], router: dict[str, Any]) -> dict[str, Any]:
    """Raw measurements of both stacks and their engines, added latencies and the verdict."""
    added_ours, added_router = added(ours), added(router)
    return {
        "llumctl": ours,
        "vllm_router": router,
        "added_llumctl": added_ours,
        "added_vllm_router": added_router,
        "relayed_tokens_per_s_saturated": ours["saturated"]["output_tokens_per_s"],
        "verdict": verdict(added_ours, added_router),
    }
