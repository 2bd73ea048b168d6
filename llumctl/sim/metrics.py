"""The paper's metrics from finished simulated requests (times in seconds).

- prefill: time to first token, queueing included (arrival at the cluster -> first token);
- decode: per request, mean time per output token after the first; P99 over requests;
- request: end-to-end latency;
- preemption_loss: extra queueing plus recompute time caused by preemptions, summed and
  divided by the number of requests;
- migrations: committed live migrations;
- avg_instances: time-weighted mean number of instances (booting and draining included)
  from the first arrival to the last finish;
- fragmentation: mean share of the cluster's KV blocks that is free but unusable: sampled
  at each policy tick, the free blocks of every instance whose head-of-line request does
  not fit in them, counted only when the cluster as a whole has room for that request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llumctl.sim.instance import SimRequest

METRIC_KEYS = (
    "prefill_mean",
    "prefill_p50",
    "prefill_p99",
    "decode_mean",
    "decode_p99",
    "request_mean",
    "request_p99",
    "preemption_loss",
)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def latency_metrics(
    requests: Sequence[SimRequest],
    request_overhead_s: float = 0.0,
    second_token_extra_s: float = 0.0,
) -> dict[str, Any]:
    """Latency metrics of finished requests; None values for an empty set.

    `request_overhead_s` (the profile's fixed cost outside engine steps) and each request's
    `first_token_delay_s` (busy neighbours, llumctl/sim/hosts.py) are added to its prefill
    latency and end-to-end time; they do not change time per token.
    `second_token_extra_s` (the profile's `second_token_extra_ms`) is added to the decode
    span and end-to-end time of every request with more than one output token.
    """
    out: dict[str, Any] = {"num_requests": len(requests)}
    if not requests:
        out.update({key: None for key in METRIC_KEYS})
        return out
    prefill, decode, total = [], [], []
    for req in requests:
        assert req.first_token_time is not None and req.finish_time is not None
        outside_s = request_overhead_s + req.first_token_delay_s
        stream_s = second_token_extra_s if req.output_tokens > 1 else 0.0
        prefill.append(req.first_token_time - req.arrival_time + outside_s)
        total.append(req.finish_time - req.arrival_time + outside_s + stream_s)
        if req.output_tokens > 1:
            span_s = req.finish_time - req.first_token_time + stream_s
            decode.append(span_s / (req.output_tokens - 1))
    out["prefill_mean"] = _mean(prefill)
    out["prefill_p50"] = percentile(prefill, 50)
    out["prefill_p99"] = percentile(prefill, 99)
    out["decode_mean"] = _mean(decode) if decode else 0.0
    out["decode_p99"] = percentile(decode, 99) if decode else 0.0
    out["request_mean"] = _mean(total)
    out["request_p99"] = percentile(total, 99)
    out["preemption_loss"] = math.fsum(r.preemption_loss_s for r in requests) / len(requests)
    return out


def rounded(obj: Any, digits: int = 6) -> Any:
    """Floats rounded for stable, readable JSON."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    return obj
