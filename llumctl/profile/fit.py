"""Least-squares fits of measured points to the simulator's latency model (pure).

Time to first token of an n-token prompt: `c + a*n + b*n^2`, where `c` is the fixed cost
of a request outside engine steps (the profile's `request_overhead_ms`) and `a*n + b*n^2`
the prefill step. Decode step: `base + per_seq*B + per_token*S`. A request's second token
comes `second_token_extra_ms` later than the step alone explains (the stream's start on
the path measured), once per request. A host idle for a while runs its next steps
`cold_step_extra_ms` slower, and its next first token `cold_first_token_ms` later,
recovering with `warm_up_ms` of work and cooling again with `cool_down_ms` of idleness
(llumctl/sim/hosts.py).
Coefficients are non-negative because the profile format rejects negative values; a term
whose unconstrained fit is negative is dropped and the rest refitted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np


def nonneg_lstsq(rows: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """Least squares with every coefficient >= 0 (active set: drop negatives, refit)."""
    x = np.asarray(rows, dtype=float)
    y = np.asarray(ys, dtype=float)
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[:] = 0.0
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return [float(c) for c in coef]


def fit_prefill(points: Sequence[tuple[int, float]]) -> tuple[float, float, float]:
    """(overhead_ms, per_token_ms, quadratic_ms) from (prompt tokens, TTFT ms) points."""
    rows = [(1.0, n, n * n) for n, _ in points]
    overhead, per_token, quadratic = nonneg_lstsq(rows, [ms for _, ms in points])
    return overhead, per_token, quadratic


def fit_decode(points: Sequence[tuple[int, int, float]]) -> tuple[float, float, float]:
    """(base_ms, per_seq_ms, per_token_ms) from (batch, resident tokens, step ms) points."""
    rows = [(1.0, b, s) for b, s, _ in points]
    base, per_seq, per_token = nonneg_lstsq(rows, [ms for _, _, ms in points])
    return base, per_seq, per_token


def fit_second_token_extra(
    short_ms: Sequence[float], long_ms: Sequence[float], long_tokens: int
) -> float:
    """Extra ms before a request's second token, from the TPOTs of lone 2-token requests
    (their one interval: step + extra) and of lone `long_tokens`-token ones (step + extra
    / (long_tokens - 1)), each set's median; never below 0."""
    if not short_ms or not long_ms or long_tokens < 3:
        return 0.0
    intervals = long_tokens - 1
    rise = statistics.median(short_ms) - statistics.median(long_ms)
    return max(0.0, rise * intervals / (intervals - 1))


def fit_co_located(points: Sequence[tuple[int, float]]) -> float:
    """Slowdown per extra busy instance from (k busy instances, ms per token) points:
    the least-squares s in t_k / t_1 = 1 + s * (k - 1), never below 0."""
    base = next((ms for k, ms in points if k == 1), 0.0)
    rows = [(k - 1, ms / base - 1) for k, ms in points if k > 1] if base > 0 else []
    denominator = sum(x * x for x, _ in rows)
    if not denominator:
        return 0.0
    return max(0.0, sum(x * y for x, y in rows) / denominator)


def fit_first_token_extra(points: Sequence[tuple[int, float]]) -> tuple[float, ...]:
    """Extra ms to first token per number of busy instances, k = 1..N, from (k, mean TTFT
    ms) points: each mean minus the k = 1 mean, never below 0 (so entry 0 is 0)."""
    base = next((ms for k, ms in points if k == 1), None)
    if base is None:
        return ()
    return tuple(max(0.0, ms - base) for _, ms in sorted(points))


def relative_error(predicted: float, measured: float) -> float:
    """|predicted - measured| / measured (inf when nothing was measured)."""
    if measured == 0:
        return float("inf") if predicted else 0.0
    return abs(predicted - measured) / abs(measured)


# Time constants the warm-up fit tries (ms): 5 ms to 2 s, 5% apart.
_WARM_UP_GRID_MS = tuple(5.0 * 1.05**k for k in range(124))
# A cold step's extra under this share of the warm step is noise, not the host's clock.
_MIN_COLD_SHARE = 0.03


def interval_excess(chunk_ms: Sequence[float], step_ms: float) -> list[tuple[float, float]]:
    """(ms since sending at an interval's middle, interval - step in ms) for each interval
    between consecutive streamed tokens of one request."""
    return [((a + b) / 2, b - a - step_ms) for a, b in zip(chunk_ms, chunk_ms[1:], strict=False)]


def fit_warm_up(cold_chunk_ms: Sequence[Sequence[float]], step_ms: float) -> tuple[float, float]:
    """(cold_step_extra_ms, warm_up_ms) from lone requests sent to a cold host: each
    token's chunk time (ms after sending), and the same request's step on a warm host.

    Interval k's excess over the warm step, median over the requests, is fitted to
    `extra * exp(-t / warm_up)`, t its time since sending (the host is busy from the
    request on): least squares, the extra in closed form for each time constant of a
    grid. An extra under 3% of the step is noise: (0, 0) then."""
    series = [interval_excess(c, step_ms) for c in cold_chunk_ms if len(c) > 2]
    num_points = min((len(s) for s in series), default=0)
    if step_ms <= 0 or num_points < 2:
        return 0.0, 0.0
    points = [
        (
            statistics.median(s[k][0] for s in series),
            statistics.median(s[k][1] for s in series),
        )
        for k in range(num_points)
    ]
    best = (math.inf, 0.0, 0.0)
    for tau in _WARM_UP_GRID_MS:
        decay = [math.exp(-t / tau) for t, _ in points]
        extra = max(0.0, sum(x * e for (_, x), e in zip(points, decay, strict=True)))
        extra /= sum(e * e for e in decay) or 1.0
        sse = sum((x - extra * e) ** 2 for (_, x), e in zip(points, decay, strict=True))
        if sse < best[0]:
            best = (sse, extra, tau)
    _, extra, tau = best
    return (extra, tau) if extra >= _MIN_COLD_SHARE * step_ms else (0.0, 0.0)


def fit_cold_first_token(
    warm_ttft_ms: Sequence[float], cold_ttft_ms: Sequence[float], cold_step_extra_ms: float
) -> float:
    """cold_first_token_ms: how much later a cold host's first token comes than a warm
    one's (medians), beyond the cold step extra its prefill step already pays; never
    below 0, and 0 under 3% of the warm first token (noise)."""
    if not warm_ttft_ms or not cold_ttft_ms:
        return 0.0
    warm = statistics.median(warm_ttft_ms)
    rise = statistics.median(cold_ttft_ms) - warm - cold_step_extra_ms
    return rise if rise >= _MIN_COLD_SHARE * warm else 0.0


def fit_cool_down(
    short_gap_excess: float, long_gap_excess: float, short_gap_ms: float, long_gap_ms: float
) -> float:
    """cool_down_ms from how much slower lone requests run after idle gaps of two lengths,
    each after a warm host (excess = mean interval - warm step, same request shape):
    warmth decays as exp(-gap / cool_down), so the ratio of the excesses is
    (1 - exp(-short / c)) / (1 - exp(-long / c)). 0 when the long gap showed nothing.

    At most a third of the long gap: `cold_step_extra_ms` is what the long gap's probes
    measured, taken for a fully cold host, which a longer cool-down would contradict (at
    c = long / 3 the long gap cools 95%). Unbounded, a short gap that showed next to
    nothing (suite run of 2026-11-30 09:30) gave c = 165 s: the simulator then never
    cooled, and the measured extra never applied."""
    if long_gap_excess <= 0 or short_gap_ms <= 0 or long_gap_ms <= short_gap_ms:
        return 0.0
    ratio = min(max(short_gap_excess / long_gap_excess, 0.0), 1.0)
    longest = long_gap_ms / 3
    grid = [c for c in (10.0 * 1.05**k for k in range(200)) if c < longest] + [longest]

    def miss(c: float) -> float:
        model = (1 - math.exp(-short_gap_ms / c)) / (1 - math.exp(-long_gap_ms / c))
        return abs(model - ratio)

    return min(grid, key=miss)
