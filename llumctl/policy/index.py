"""DispatchIndex: incremental dispatch for large clusters (same choices as Policy.dispatch).

`Policy.dispatch(view, requests)` looks at every instance on every call. The index keeps
each live instance's dispatch score, keyed by instance id, in a sorted list per model, and
recomputes a score only when that instance's report or pending set changes. A decision
is then a read of the list's last element (O(log N) to re-file the winner), and a new
report costs O(requests of that instance). Pure: no clock, no I/O.

Usage (controller or simulator):

    index = DispatchIndex(policy)
    index.update(report)                 # on every load report (clears its pending set)
    decisions = index.dispatch(requests) # adds each decision to the pending set
    index.remove(instance_id)            # when an instance leaves

`sync(view)` brings the index in line with a whole `ClusterView` (cheap when the view
reuses unchanged `InstanceLoad` objects), for callers that build views anyway.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass

from llumctl.policy.decisions import Dispatch
from llumctl.policy.dispatch import dispatch_order, step_room
from llumctl.policy.registry import Policy
from llumctl.policy.views import ClusterView, InstanceLoad, NewRequest, PendingDispatch, Priority


@dataclass(frozen=True)
class _Entry:
    inst: InstanceLoad
    pending: tuple[PendingDispatch, ...]
    score: float
    # Step-aware dispatch: `step_room` (computed once per report or pending change).
    step_room: int


class DispatchIndex:
    """Per-model sorted (score, instance id) lists; the last element wins, as in
    `Policy.dispatch` (max score, ties to the larger id)."""

    def __init__(self, policy: Policy) -> None:
        if policy.metric == "round-robin":
            # Round-robin scores by a dispatch counter, not by reports; its plain
            # dispatch is already a single pass with nothing to cache.
            raise ValueError("DispatchIndex needs a scoring policy, not round-robin")
        self.policy = policy
        self._entries: dict[str, _Entry] = {}
        self._sorted: dict[str, list[tuple[float, str]]] = {}
        # Per model: instances holding a high-priority request (the few the HIGH
        # placement rule looks at).
        self._high: dict[str, set[str]] = {}
        self._prefer = policy.dispatch_preference()
        self._avoid_prefill_tokens = policy.avoid_prefill_tokens

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, inst: InstanceLoad, pending: tuple[PendingDispatch, ...] = ()) -> None:
        """A new report for `inst` (with the dispatches made since it, usually none)."""
        self._drop(inst.instance_id)
        if inst.is_draining:
            return
        score = self.policy.dispatch_score(inst, pending)
        avoid = self._avoid_prefill_tokens
        room = step_room(inst, pending, avoid) if avoid > 0 else 0
        self._entries[inst.instance_id] = _Entry(inst, pending, score, room)
        insort(self._sorted.setdefault(inst.model, []), (score, inst.instance_id))
        if self._prefer is not None and (
            any(r.priority > Priority.NORMAL for r in inst.running)
            or any(p.priority > Priority.NORMAL for p in pending)
        ):
            self._high.setdefault(inst.model, set()).add(inst.instance_id)

    def remove(self, instance_id: str) -> None:
        """Forget an instance (gone, or draining: never a dispatch target)."""
        self._drop(instance_id)

    def sync(self, view: ClusterView) -> None:
        """Match the index to `view`: re-score only reports or pending sets that changed."""
        seen = set()
        for inst in view.instances:
            iid = inst.instance_id
            seen.add(iid)
            pending = tuple(view.pending.get(iid, ()))
            entry = self._entries.get(iid)
            if entry is not None and entry.inst is inst and entry.pending == pending:
                continue
            self.update(inst, pending)
        for iid in [i for i in self._entries if i not in seen]:
            self._drop(iid)

    def choose(self, req: NewRequest) -> str | None:
        """The instance `Policy.dispatch` would pick for `req` alone; None if no live one."""
        ranked = self._sorted.get(req.model)
        if not ranked:
            return None
        if self._prefer is not None and req.priority > Priority.NORMAL:
            liked = [
                (self._entries[iid].score, iid)
                for iid in self._high.get(req.model, ())
                if self._prefer(self._entries[iid].inst, self._entries[iid].pending, req)
            ]
            if liked:
                return max(liked)[1]
        if self._avoid_prefill_tokens > 0:
            # Step-aware: the best-scoring instance whose step room fits; usually the
            # first one looked at, else a walk down the ranking.
            need = max(1, req.num_blocks)
            entries = self._entries
            for _, iid in reversed(ranked):
                if entries[iid].step_room >= need:
                    return iid
        return ranked[-1][1]

    def dispatch(self, requests: Sequence[NewRequest]) -> list[Dispatch]:
        """Decide every request (high priority first) and record each as pending."""
        decisions = []
        for req in dispatch_order(requests):
            iid = self.choose(req)
            if iid is None:
                continue
            entry = self._entries[iid]
            new = PendingDispatch(req.request_id, req.num_blocks, req.priority)
            self.update(entry.inst, entry.pending + (new,))
            decisions.append(Dispatch(req.request_id, iid))
        return decisions

    def _drop(self, instance_id: str) -> None:
        entry = self._entries.pop(instance_id, None)
        if entry is None:
            return
        model = entry.inst.model
        ranked = self._sorted[model]
        key = (entry.score, instance_id)
        at = bisect_left(ranked, key)
        assert ranked[at] == key, "index out of step with its entries"
        del ranked[at]
        self._high.get(model, set()).discard(instance_id)
