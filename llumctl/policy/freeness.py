"""Virtual usage and freeness (Llumnix, OSDI'24 §4.4), plus the INFaaS++ load metric.

One sign convention in the whole code base: **freeness, higher = freer, in blocks per
request**. For an instance with KV capacity M blocks, requests with virtual usages V_i and
batch size B (running requests, plus one if any request is queued):

    F = (M - ΣV) / B            when M - ΣV >= 0
    F = (M - ΣV)                when M - ΣV < 0   (not divided; see below)

Virtual usage of a request:
- running: its physical blocks, plus headroom[p] / count[p] for its priority p; headroom is
  0 for normal priority and (M - budget) blocks for high priority, so an instance holding
  high-priority requests looks loaded and normal requests migrate away from it;
- the head-of-line queued request: its full demand (fragmentation shows up as load);
  other queued requests: 0;
- a request dispatched after the last report (pending): its demand, and it counts in B,
  so a burst does not pile onto the instance that looked freest a moment ago;
- for dispatch (`counts_all_queued`, the default `dispatch_queued_demand = "all"`): every
  queued request counts its demand and +1 in B, like a pending one. This is the published
  Llumnix's dispatch load ((free - all waiting blocks) / (running + waiting)); the
  head-of-line rule above is its migration (de-fragmentation) load. Without it a queued
  request stops counting once a report shows it, and arrivals pile onto an instance that
  looks free while it runs a long prefill;
- any request on a draining instance: infinite, so F = -inf.

Why negative free capacity is not divided by B: with M - ΣV < 0 the paper's quotient
*rises* towards zero as requests are added (-10/1 < -10/2), so a more loaded instance
would look freer. Keeping the raw deficit makes freeness monotone: adding a request never
raises it. Thresholds below zero therefore read as "blocks short" rather than per request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from llumctl.policy.views import InstanceLoad, PendingDispatch, Priority

INFINITE_USAGE = math.inf


def blocks_for_tokens(num_tokens: int, block_size_tokens: int) -> int:
    """KV blocks needed to hold `num_tokens` tokens."""
    return -(-max(num_tokens, 0) // block_size_tokens)


def priority_headroom_blocks(inst: InstanceLoad, priority: Priority, budget_tokens: int) -> float:
    """Blocks reserved (in total, shared by its requests) for requests of `priority`."""
    if priority <= Priority.NORMAL:
        return 0.0
    budget_blocks = blocks_for_tokens(budget_tokens, inst.block_size_tokens)
    return float(max(0, inst.num_total_blocks - budget_blocks))


def virtual_usage(
    inst: InstanceLoad,
    pending: Iterable[PendingDispatch] = (),
    *,
    uses_priority: bool = True,
    budget_tokens: int = 1600,
    counts_all_queued: bool = False,
) -> float:
    """ΣV of an instance in blocks (infinite when draining).

    `counts_all_queued` replaces the head-of-line rule by the demand of every queued
    request (dispatch with `dispatch_queued_demand = "all"`, the default).
    """
    if inst.is_draining:
        return INFINITE_USAGE
    pending = tuple(pending)
    # Physical usage also covers blocks staged for incoming migrations.
    physical = max(inst.num_used_blocks, sum(r.num_blocks for r in inst.running))
    usage = float(physical)
    if counts_all_queued:
        usage += sum(r.num_blocks for r in inst.queued)
    elif inst.queued:
        usage += inst.queued[0].num_blocks
    usage += sum(p.num_blocks for p in pending)
    if uses_priority:
        priorities = {r.priority for r in inst.running} | {p.priority for p in pending}
        for priority in priorities:
            # headroom[p]/count[p] per request, summed over its count[p] requests.
            usage += priority_headroom_blocks(inst, priority, budget_tokens)
    return usage


def batch_size(inst: InstanceLoad, num_pending: int = 0, *, counts_all_queued: bool = False) -> int:
    """B: running requests plus one if any is queued (every queued one when
    `counts_all_queued`), plus pending dispatches."""
    num_queued = len(inst.queued) if counts_all_queued else min(1, len(inst.queued))
    return len(inst.running) + num_queued + num_pending


def freeness(
    inst: InstanceLoad,
    pending: Iterable[PendingDispatch] = (),
    *,
    uses_priority: bool = True,
    budget_tokens: int = 1600,
    counts_all_queued: bool = False,
) -> float:
    """F in blocks per request; higher = freer; -inf for a draining instance."""
    pending = tuple(pending)
    usage = virtual_usage(
        inst,
        pending,
        uses_priority=uses_priority,
        budget_tokens=budget_tokens,
        counts_all_queued=counts_all_queued,
    )
    if math.isinf(usage):
        return -math.inf
    spare = inst.num_total_blocks - usage
    if spare < 0:
        return spare
    return spare / max(1, batch_size(inst, len(pending), counts_all_queued=counts_all_queued))


def infaas_load(inst: InstanceLoad, pending: Iterable[PendingDispatch] = ()) -> float:
    """INFaaS++ freeness: (free blocks - all queued demand) / (running + queued).

    Higher = freer, like `freeness`. No priorities, no head-of-line rule.
    """
    if inst.is_draining:
        return -math.inf
    pending = tuple(pending)
    spare = inst.num_free_blocks - sum(r.num_blocks for r in inst.queued)
    spare -= sum(p.num_blocks for p in pending)
    count = len(inst.running) + len(inst.queued) + len(pending)
    if spare < 0:
        return float(spare)
    return spare / max(1, count)


def pooled_freeness(
    insts: Iterable[InstanceLoad],
    *,
    metric: str = "freeness",
    uses_priority: bool = True,
    budget_tokens: int = 1600,
) -> float:
    """Freeness of a group as one pooled instance: Σ spare / Σ batch (blocks per request).

    Used for auto-scaling instead of the mean of per-instance freeness, which an empty
    instance (freeness M / 1) dominates: right after a scale-up the mean jumps above the
    scale-down bound and the new instance would be drained at once. Draining instances
    are left out by the caller.
    """
    spare = 0.0
    batch = 0
    for inst in insts:
        if metric == "infaas":
            spare += inst.num_free_blocks - sum(r.num_blocks for r in inst.queued)
            batch += len(inst.running) + len(inst.queued)
        else:
            usage = virtual_usage(inst, uses_priority=uses_priority, budget_tokens=budget_tokens)
            spare += inst.num_total_blocks - usage
            batch += batch_size(inst)
    return spare / max(1, batch)
