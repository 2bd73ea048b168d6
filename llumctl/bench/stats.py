"""Summaries of benchmark records: percentiles, throughput, error counts."""

from __future__ import annotations

import math
from collections.abc import Sequence

from llumctl.bench.records import RequestRecord


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(records: Sequence[RequestRecord], duration_s: float) -> dict[str, float | int]:
    """Latency percentiles (seconds) over successful requests, throughput and errors."""
    ok = [r for r in records if r.is_ok]
    ttft = [r.ttft_s for r in ok]
    tpot = [r.tpot_s for r in ok if r.tpot_s >= 0]
    e2e = [r.e2e_s for r in ok]
    tokens = sum(r.num_received_tokens for r in ok)
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "duration_s": duration_s,
        "throughput_rps": len(ok) / duration_s if duration_s > 0 else math.nan,
        "output_tokens_per_s": tokens / duration_s if duration_s > 0 else math.nan,
        "ttft_mean": mean(ttft),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "tpot_mean": mean(tpot),
        "tpot_p50": percentile(tpot, 50),
        "tpot_p99": percentile(tpot, 99),
        "e2e_mean": mean(e2e),
        "e2e_p50": percentile(e2e, 50),
        "e2e_p99": percentile(e2e, 99),
    }
