"""Auto-scaling: keep each model group's average freeness inside a band."""

from __future__ import annotations

from collections.abc import Callable

from llumctl.policy.decisions import ScaleDown, ScaleUp
from llumctl.policy.params import PolicyParams
from llumctl.policy.views import ClusterView, InstanceLoad

Freeness = Callable[[InstanceLoad], float]
GroupFreeness = Callable[[list[InstanceLoad]], float]


def decide_scaling(
    view: ClusterView,
    params: PolicyParams,
    score: Freeness,
    group_score: GroupFreeness | None = None,
) -> list[ScaleUp | ScaleDown]:
    """Scale up below `scale_up_below`, drain the emptiest instance above `scale_down_above`.

    The group's freeness is `group_score(active)` when given (the policies pass the
    pooled freeness), else the mean of `score` over the active instances.

    One action per model per cool-down; instances still booting count toward the pool and
    block further scale-ups (their capacity is not in the average yet); a scale-down waits
    until no instance of the group is draining.
    """
    if not params.is_scaling_enabled:
        return []
    decisions: list[ScaleUp | ScaleDown] = []
    for model in view.models():
        group = view.of_model(model)
        active = [i for i in group if not i.is_draining]
        starting = view.num_starting.get(model, 0)
        total = len(active) + starting
        if total < params.min_instances:
            decisions.append(ScaleUp(model, params.min_instances - total))
            continue
        last = view.last_scale_time.get(model)
        if last is not None and view.now - last < params.scale_cooldown_s:
            continue
        if not active:
            continue
        if group_score is not None:
            average = group_score(active)
        else:
            average = sum(score(i) for i in active) / len(active)
        if average < params.scale_up_below and total < params.max_instances and starting == 0:
            decisions.append(ScaleUp(model, 1))
        elif (
            average > params.scale_down_above
            and len(active) > params.min_instances
            and len(active) == len(group)
        ):
            victim = min(active, key=lambda i: (i.num_requests, -score(i), i.instance_id))
            decisions.append(ScaleDown(victim.instance_id))
    return decisions
