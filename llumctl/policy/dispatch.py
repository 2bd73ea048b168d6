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
    view: ClusterView,
    requests: Sequence[NewRequest],
    score: Scorer,
    base_score: Callable[[InstanceLoad], float] | None = None,
) -> list[Dispatch]:
    """Send each request to the best-scoring live instance of its model.

    Each decision is added to the pending set before the next one is scored, so a batch
    spreads over the cluster instead of landing on one instance. A request with no live
    instance of its model gets no decision (the caller keeps it queued). `base_score`,
    when given, must equal `score(inst, ())` (it may be memoised per report); ties go to
    the larger instance id.
    """
    pending = {iid: tuple(p) for iid, p in view.pending.items() if p}
    groups = _score_groups(view, pending, score, base_score)
    decisions: list[Dispatch] = []
    for req in dispatch_order(requests):
        group = groups.get(req.model)
        if group is None:
            continue
        insts, ids, scores = group
        _, best_id = max(zip(scores, ids, strict=True))
        index = ids.index(best_id)
        new = PendingDispatch(req.request_id, req.num_blocks, req.priority)
        pending[best_id] = pending.get(best_id, ()) + (new,)
        scores[index] = score(insts[index], pending[best_id])
        decisions.append(Dispatch(req.request_id, best_id))
    return decisions


def _score_groups(
    view: ClusterView,
    pending: dict[str, tuple[PendingDispatch, ...]],
    score: Scorer,
    base_score: Callable[[InstanceLoad], float] | None,
) -> dict[str, tuple[list[InstanceLoad], list[str], list[float]]]:
    """Per model: live instances, their ids and scores (comprehensions: this is the hot
    loop of a dispatch over a large cluster)."""
    live = [inst for inst in view.instances if not inst.is_draining]
    models = {inst.model for inst in live}
    if len(models) == 1:
        parts = {models.pop(): live}
    else:
        parts = {}
        for inst in live:
            parts.setdefault(inst.model, []).append(inst)
    groups = {}
    for model, insts in parts.items():
        ids = [inst.instance_id for inst in insts]
        if base_score is None:
            scores = [score(inst, pending.get(inst.instance_id, ())) for inst in insts]
        else:
            scores = list(map(base_score, insts))
            for index, iid in enumerate(ids) if pending else ():
                if iid in pending:
                    scores[index] = score(insts[index], pending[iid])
        groups[model] = (insts, ids, scores)
    return groups


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
