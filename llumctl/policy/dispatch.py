"""Dispatch: choose an instance for each new request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llumctl.policy.decisions import Dispatch
from llumctl.policy.views import ClusterView, InstanceLoad, NewRequest, PendingDispatch

# (instance, its pending dispatches) -> score; the highest score wins.
Scorer = Callable[[InstanceLoad, tuple[PendingDispatch, ...]], float]


def dispatch_order(requests: Sequence[NewRequest]) -> list[NewRequest]:
    """Higher priority first, FCFS within a priority (stable for equal arrivals)."""
    return sorted(requests, key=lambda r: (-int(r.priority), r.arrival_time))


def dispatch_by_score(
    view: ClusterView, requests: Sequence[NewRequest], score: Scorer
) -> list[Dispatch]:
    """Send each request to the best-scoring live instance of its model.

    Each decision is added to the pending set before the next one is scored, so a batch
    spreads over the cluster instead of landing on one instance. A request with no live
    instance of its model gets no decision (the caller keeps it queued).
    """
    pending = {iid: tuple(p) for iid, p in view.pending.items()}
    by_model: dict[str, list[InstanceLoad]] = {}
    for inst in view.instances:
        if not inst.is_draining:
            by_model.setdefault(inst.model, []).append(inst)
    decisions: list[Dispatch] = []
    for req in dispatch_order(requests):
        candidates = by_model.get(req.model)
        if not candidates:
            continue
        best = max(
            candidates,
            key=lambda inst: (score(inst, pending.get(inst.instance_id, ())), inst.instance_id),
        )
        new = PendingDispatch(req.request_id, req.num_blocks, req.priority)
        pending[best.instance_id] = pending.get(best.instance_id, ()) + (new,)
        decisions.append(Dispatch(req.request_id, best.instance_id))
    return decisions


def dispatch_round_robin(view: ClusterView, requests: Sequence[NewRequest]) -> list[Dispatch]:
    """The round-robin baseline: the instance with the fewest requests dispatched so far."""
    counts = dict(view.num_dispatched)
    decisions: list[Dispatch] = []
    for req in dispatch_order(requests):
        candidates = [i for i in view.instances if i.model == req.model and not i.is_draining]
        if not candidates:
            continue
        best = min(candidates, key=lambda i: (counts.get(i.instance_id, 0), i.instance_id))
        counts[best.instance_id] = counts.get(best.instance_id, 0) + 1
        decisions.append(Dispatch(req.request_id, best.instance_id))
    return decisions
