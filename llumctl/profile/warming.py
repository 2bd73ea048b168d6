"""How much slower an instance runs after it has been idle (llumctl/sim/hosts.py, "warmth").

On this project's CPU VM a lone request sent after 1-3 s of idleness decoded its first
tokens 1.5-2 ms a step slower than the same request sent right after another (2.3 ms
steps), recovering within some 100 ms of work. The profile's other points are taken back
to back, on a warm host, so a light workload (each request arriving at an idle machine)
ran slower than its simulation. Per round: a request that warms the host, a warm probe,
a pause, a probe, a longer pause, a probe; all the same shape as the speed probe, every
token's arrival recorded. The warm probes give the step; the probes after the long
pause, token by token, the extra time a step takes and how fast it fades
(`fit_warm_up`), and their first tokens against the warm probes', what a cold host adds
to a first token beyond that (`fit_cold_first_token`); the two pauses' probes against
each other, how fast a host cools (`fit_cool_down`). The simulator applies these per
instance: an instance idle beside a busy neighbour is as cold as one on an idle host.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass
from typing import Any

from llumctl.bench.loadgen import LoadGenerator
from llumctl.bench.records import BenchRequest, RequestRecord
from llumctl.errors import ConnectionFailed
from llumctl.profile.fit import fit_cold_first_token, fit_cool_down, fit_warm_up
from llumctl.sim.profile import LatencyProfile

# Prompt and output tokens of every request here (the speed probe's shape).
WARMING_SHAPE = (32, 64)


@dataclass(frozen=True)
class WarmingSettings:
    rounds: int
    # Idle pauses (s) before the two measured probes of a round.
    short_gap_s: float
    long_gap_s: float


@dataclass(frozen=True)
class WarmingPoints:
    """What `measure_warming` saw, every request in round order."""

    warm_tpot_ms: list[float]
    short_gap_tpot_ms: list[float]
    long_gap_tpot_ms: list[float]
    # Each long-pause probe's token arrivals, ms after sending (the first is its TTFT).
    long_gap_chunks_ms: list[list[float]]
    warm_ttft_ms: list[float]

    @property
    def long_gap_ttft_ms(self) -> list[float]:
        return [chunks[0] for chunks in self.long_gap_chunks_ms if chunks]


async def measure_warming(
    gen: LoadGenerator, settings: WarmingSettings, seed_base: int
) -> WarmingPoints:
    """Take the rounds (fresh prompt ids for every request)."""
    warm: list[float] = []
    short: list[float] = []
    long: list[float] = []
    chunks: list[list[float]] = []
    warm_ttft: list[float] = []
    gen.record_chunk_times = True
    try:
        for rep in range(settings.rounds):
            seed = seed_base + 10 * rep
            await _lone(gen, seed)  # warms the host after the last round's long pause
            record = await _lone(gen, seed + 1)
            warm.append(record.tpot_s * 1000)
            warm_ttft.append(record.ttft_s * 1000)
            await asyncio.sleep(settings.short_gap_s)
            short.append((await _lone(gen, seed + 2)).tpot_s * 1000)
            await asyncio.sleep(settings.long_gap_s)
            record = await _lone(gen, seed + 3)
            long.append(record.tpot_s * 1000)
            chunks.append([t * 1000 for t in record.chunk_times_s])
    finally:
        gen.record_chunk_times = False
    return WarmingPoints(warm, short, long, chunks, warm_ttft)


def fit_warming(points: WarmingPoints, settings: WarmingSettings) -> dict[str, float]:
    """The profile's four warming keys; a host that showed no slowdown gets both extras
    0 and the time constants' defaults."""
    step_ms = statistics.median(points.warm_tpot_ms)
    extra_ms, warm_up_ms = fit_warm_up(points.long_gap_chunks_ms, step_ms)
    first_token_ms = fit_cold_first_token(points.warm_ttft_ms, points.long_gap_ttft_ms, extra_ms)
    default = LatencyProfile()
    if extra_ms <= 0 and first_token_ms <= 0:
        return {
            "cold_step_extra_ms": 0.0,
            "cold_first_token_ms": 0.0,
            "warm_up_ms": default.warm_up_ms,
            "cool_down_ms": default.cool_down_ms,
        }
    cool_down_ms = fit_cool_down(
        _excess(points.short_gap_tpot_ms, step_ms),
        _excess(points.long_gap_tpot_ms, step_ms),
        settings.short_gap_s * 1000,
        settings.long_gap_s * 1000,
    )
    return {
        "cold_step_extra_ms": extra_ms,
        "cold_first_token_ms": first_token_ms,
        "warm_up_ms": warm_up_ms or default.warm_up_ms,
        "cool_down_ms": cool_down_ms or default.cool_down_ms,
    }


def warming_result(points: WarmingPoints, settings: WarmingSettings) -> dict[str, Any]:
    """The `--json` record of the measurement (the fit's inputs, in brief)."""
    return {
        "gaps_s": [settings.short_gap_s, settings.long_gap_s],
        "warm_tpot_ms": points.warm_tpot_ms,
        "short_gap_tpot_ms": points.short_gap_tpot_ms,
        "long_gap_tpot_ms": points.long_gap_tpot_ms,
        "warm_ttft_ms": points.warm_ttft_ms,
        "long_gap_ttft_ms": points.long_gap_ttft_ms,
    }


def _excess(tpot_ms: list[float], step_ms: float) -> float:
    return statistics.median(tpot_ms) - step_ms


async def _lone(gen: LoadGenerator, seed: int) -> RequestRecord:
    gen.seed = seed
    records, _ = await gen.run([BenchRequest(0.0, *WARMING_SHAPE)])
    record = records[0]
    if record.error:
        raise ConnectionFailed(f"profiling request failed: {record.error}")
    return record
