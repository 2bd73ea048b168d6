"""Named scheduling policies: the paper's Llumnix and its baselines.

| name          | dispatch                         | migration | priorities |
|---------------|----------------------------------|-----------|------------|
| round-robin   | fewest requests dispatched so far | no        | no         |
| infaas++      | INFaaS++ load metric              | no        | no         |
| llumnix-base  | freeness (virtual usage)          | yes       | no         |
| llumnix       | freeness (virtual usage)          | yes       | yes        |

Freeness dispatch is also step-aware (`params.dispatch_avoid_prefill_tokens`, llumctl's
addition, see `dispatch.step_room`).

Every policy may auto-scale (when `params.is_scaling_enabled`), each on its own metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from llumctl.policy.decisions import Dispatch, Migrate, ScaleDown, ScaleUp
from llumctl.policy.dispatch import (
    Preference,
    dispatch_by_score,
    dispatch_round_robin,
    reserves_headroom_for,
)
from llumctl.policy.freeness import freeness, infaas_load, pooled_freeness
from llumctl.policy.migration import pair_migrations
from llumctl.policy.params import PolicyParams
from llumctl.policy.scaling import decide_scaling
from llumctl.policy.views import ClusterView, InstanceLoad, NewRequest, PendingDispatch

POLICY_NAMES = ("round-robin", "infaas++", "llumnix-base", "llumnix")


@dataclass(frozen=True)
class Policy:
    """A named policy: pure functions of a `ClusterView` and its parameters."""

    name: str
    # "freeness" (virtual usage), "infaas" or "round-robin".
    metric: str
    is_migrating: bool
    uses_priority: bool
    params: PolicyParams = field(default_factory=PolicyParams)

    def with_params(self, params: PolicyParams) -> Policy:
        return replace(self, params=params)

    def score(self, inst: InstanceLoad, pending: tuple[PendingDispatch, ...] = ()) -> float:
        """This policy's freeness of an instance (higher = freer)."""
        if self.metric == "infaas":
            return infaas_load(inst, pending)
        return freeness(
            inst,
            pending,
            uses_priority=self.uses_priority,
            budget_tokens=self.params.high_priority_kv_budget_tokens,
        )

    def dispatch_score(
        self, inst: InstanceLoad, pending: tuple[PendingDispatch, ...] = ()
    ) -> float:
        """The score dispatch maximises: `score`, with every queued request counted
        (demand and batch size) when `params.dispatch_queued_demand == "all"` (default)."""
        if self.metric == "infaas" or self.params.dispatch_queued_demand != "all":
            return self.score(inst, pending)
        return freeness(
            inst,
            pending,
            uses_priority=self.uses_priority,
            budget_tokens=self.params.high_priority_kv_budget_tokens,
            counts_all_queued=True,
        )

    def dispatch(self, view: ClusterView, requests: Sequence[NewRequest]) -> list[Dispatch]:
        if self.metric == "round-robin":
            return dispatch_round_robin(view, requests)
        return dispatch_by_score(
            view,
            requests,
            self.dispatch_score,
            self._memoised(),
            self.dispatch_preference(),
            self.avoid_prefill_tokens,
        )

    @property
    def avoid_prefill_tokens(self) -> int:
        """Step-aware dispatch's threshold (0 = off): freeness policies only; INFaaS++ is
        the paper's baseline as defined."""
        return self.params.dispatch_avoid_prefill_tokens if self.metric == "freeness" else 0

    def dispatch_preference(self) -> Preference | None:
        """The high-priority placement rule, for policies that reserve headroom."""
        return reserves_headroom_for if self.uses_priority else None

    def _memoised(self) -> Callable[[InstanceLoad], float]:
        """`dispatch_score(inst)` memoised on the (immutable) report itself, so a report
        is scored once however many decisions read it."""
        p = self.params
        key = (
            f"_dispatch_score:{self.metric}:{self.uses_priority}:"
            f"{p.high_priority_kv_budget_tokens}:{p.dispatch_queued_demand}"
        )
        compute = self.dispatch_score

        def memo(inst: InstanceLoad) -> float:
            try:
                return inst.__dict__[key]  # type: ignore[no-any-return]
            except KeyError:
                value = inst.__dict__[key] = compute(inst)
                return value

        return memo

    def migrations(self, view: ClusterView) -> list[Migrate]:
        if not self.is_migrating:
            return []
        return pair_migrations(view, self.params, self._scored(view))

    def scaling(self, view: ClusterView) -> list[ScaleUp | ScaleDown]:
        return decide_scaling(view, self.params, self._scored(view), self.group_freeness)

    def group_freeness(self, insts: list[InstanceLoad]) -> float:
        """Pooled freeness of a group (the auto-scaling signal)."""
        return pooled_freeness(
            insts,
            metric="infaas" if self.metric == "infaas" else "freeness",
            uses_priority=self.uses_priority,
            budget_tokens=self.params.high_priority_kv_budget_tokens,
        )

    def tick(self, view: ClusterView) -> list[Migrate | ScaleUp | ScaleDown]:
        """The periodic decisions: migrations, then scaling."""
        decisions: list[Migrate | ScaleUp | ScaleDown] = []
        decisions.extend(self.migrations(view))
        decisions.extend(self.scaling(view))
        return decisions

    def _scored(self, view: ClusterView):  # type: ignore[no-untyped-def]
        def score(inst: InstanceLoad) -> float:
            return self.score(inst, tuple(view.pending.get(inst.instance_id, ())))

        return score


def get_policy(name: str, params: PolicyParams | None = None) -> Policy:
    """The policy called `name`; ValueError names the choices for an unknown one."""
    params = params or PolicyParams()
    if name == "round-robin":
        return Policy(name, "round-robin", is_migrating=False, uses_priority=False, params=params)
    if name == "infaas++":
        return Policy(name, "infaas", is_migrating=False, uses_priority=False, params=params)
    if name == "llumnix-base":
        return Policy(name, "freeness", is_migrating=True, uses_priority=False, params=params)
    if name == "llumnix":
        return Policy(name, "freeness", is_migrating=True, uses_priority=True, params=params)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
