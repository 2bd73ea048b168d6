"""Dispatch: choose an instance for each new request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llumctl.policy.decisions import Dispatch
from llumctl.policy.views import ClusterView, InstanceLoad, NewRequest, PendingDispatch, Priority

# (instance, its pending dispatches) -> score; the highest score wins.
Scorer = Callable[[InstanceLoad, tuple[PendingDispatch, ...]], float]
# (instance, its pending dispatches, request) -> True when the instance is preferred for it.
Preference = Callable[[InstanceLoad, tuple[PendingDispatch, ...], NewRequest], bool]


def physical_room(inst: InstanceLoad, pending: tuple[PendingDispatch, ...] = ()) -> int:
    """Blocks left once running, all queued and pending requests hold their demand."""
    held = max(inst.num_used_blocks, sum(r.num_blocks for r in inst.running))
    held += sum(r.num_blocks for r in inst.queued) + sum(p.num_blocks for p in pending)
    return inst.num_total_blocks - held


def step_room(
    inst: InstanceLoad, pending: tuple[PendingDispatch, ...], avoid_prefill_tokens: int
) -> int:
    """Step-aware dispatch: `physical_room`, or -1 when the instance's engine step in
    progress prefills at least `avoid_prefill_tokens` prompt tokens (a request sent there
    waits for that whole step). A request takes the best-scoring instance whose step room
    fits it, if any (else the best score): an instance prefilling one long prompt holds
    few requests and looks freest, but one without room for the request would make it
    queue until memory frees, which is worse than waiting for a step."""
    if inst.num_prefill_tokens >= avoid_prefill_tokens:
        return -1
    return physical_room(inst, pending)


def pays_headroom(
    inst: InstanceLoad, pending: tuple[PendingDispatch, ...], priority: Priority
) -> bool:
    """True when the instance already reserves `priority`'s headroom (it holds such a
    request, running or pending), so one more costs only its own blocks."""
    return any(r.priority == priority for r in inst.running) or any(
        p.priority == priority for p in pending
    )


def reserves_headroom_for(
    inst: InstanceLoad, pending: tuple[PendingDispatch, ...], req: NewRequest
) -> bool:
    """The high-priority placement rule: a HIGH request prefers an instance that already
    pays the headroom, physically fits it and has no request of its priority (or higher)
    waiting in its last report. Headroom then stays on few instances: spread over many,
    it makes most of them look overloaded to normal requests, which pile onto the rest
    and trigger needless migrations. But a HIGH request must not queue behind other HIGH
    ones there (it would wait for their prefills): then it takes the best score. Pending
    dispatches do not count as waiting, so a burst decided together still shares one
    instance (and is admitted in one step)."""
    if req.priority <= Priority.NORMAL or inst.is_draining:
        return False
    if any(q.priority >= req.priority for q in inst.queued):
        return False
    return pays_headroom(inst, pending, req.priority) and physical_room(inst, pending) >= max(
        1, req.num_blocks
    )


def dispatch_order(requests: Sequence[NewRequest]) -> list[NewRequest]:
    """Higher priority first, FCFS within a priority (stable for equal arrivals)."""
    return sorted(requests, key=lambda r: (-int(r.priority), r.arrival_time))


def dispatch_by_score(
    view: ClusterView,
    requests: Sequence[NewRequest],
    score: Scorer,
    base_score: Callable[[InstanceLoad], float] | None = None,
    prefer: Preference | None = None,
    avoid_prefill_tokens: int = 0,
) -> list[Dispatch]:
    """Send each request to the best-scoring live instance of its model.

    Each decision is added to the pending set before the next one is scored, so a batch
    spreads over the cluster instead of landing on one instance. A request with no live
    instance of its model gets no decision (the caller keeps it queued). `base_score`,
    when given, must equal `score(inst, ())` (it may be memoised per report); ties go to
    the larger instance id. `prefer`, when given, restricts a request to the instances it
    accepts whenever there is at least one (see `reserves_headroom_for`).
    `avoid_prefill_tokens` > 0 turns on step-aware dispatch (see `step_room`).
    """
    pending = {iid: tuple(p) for iid, p in view.pending.items() if p}
    groups = _score_groups(view, pending, score, base_score)
    decisions: list[Dispatch] = []
    for req in dispatch_order(requests):
        group = groups.get(req.model)
        if group is None:
            continue
        insts, ids, scores = group
        index = _best(group, pending, req, prefer, avoid_prefill_tokens)
        best_id = ids[index]
        new = PendingDispatch(req.request_id, req.num_blocks, req.priority)
        pending[best_id] = pending.get(best_id, ()) + (new,)
        scores[index] = score(insts[index], pending[best_id])
        decisions.append(Dispatch(req.request_id, best_id))
    return decisions


def _best(
    group: tuple[list[InstanceLoad], list[str], list[float]],
    pending: dict[str, tuple[PendingDispatch, ...]],
    req: NewRequest,
    prefer: Preference | None,
    avoid_prefill_tokens: int,
) -> int:
    """Position of the winner in `group`: max (score, id), among preferred ones if any,
    then among those whose step room fits the request if any."""
    insts, ids, scores = group

    def best_where(ok: Callable[[int], bool]) -> int | None:
        kept = [(scores[k], ids[k], k) for k in range(len(insts)) if ok(k)]
        return max(kept)[2] if kept else None

    if prefer is not None and req.priority > Priority.NORMAL:
        liked = best_where(lambda k: prefer(insts[k], pending.get(ids[k], ()), req))
        if liked is not None:
            return liked
    _, best_id = max(zip(scores, ids, strict=True))
    best = ids.index(best_id)
    if avoid_prefill_tokens <= 0:
        return best
    need = max(1, req.num_blocks)

    def fits(k: int) -> bool:
        return step_room(insts[k], pending.get(ids[k], ()), avoid_prefill_tokens) >= need

    if fits(best):  # the common case: one check
        return best
    clear = best_where(fits)
    return best if clear is None else clear


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
