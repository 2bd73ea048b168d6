"""Auto-scaling on pooled freeness, cool-down, pool bounds; dispatch memo per policy."""

from __future__ import annotations

from llumctl.policy import (
    ClusterView,
    InstanceLoad,
    NewRequest,
    PolicyParams,
    RequestLoad,
    ScaleDown,
    ScaleUp,
    get_policy,
)

SCALING = PolicyParams(is_scaling_enabled=True, min_instances=1, max_instances=4)


def busy(iid: str, used: int, num: int = 10) -> InstanceLoad:
    running = tuple(RequestLoad(f"{iid}-{k}", used // num, admitted_seq=k) for k in range(num))
    return InstanceLoad(iid, 850, used, running=running)


def test_an_empty_new_instance_does_not_trigger_a_scale_down() -> None:
    # Mean of per-instance freeness would be (0 + 850) / 2 = 425 > 60; pooled: 850 / 20.
    view = ClusterView((busy("a", 850, 20), InstanceLoad("b", 850, 0)), now=100.0)
    assert get_policy("llumnix", SCALING).tick(view) == []


def test_scale_up_below_the_band_and_down_above_it() -> None:
    loaded = ClusterView((busy("a", 800), busy("b", 820)), now=100.0)
    assert get_policy("llumnix", SCALING).tick(loaded) == [ScaleUp("default", 1)]
    idle = ClusterView((busy("a", 40, 2), busy("b", 20, 1)), now=100.0)
    assert get_policy("infaas++", SCALING).tick(idle) == [ScaleDown("b")]


def test_cool_down_pool_bounds_and_booting_instances() -> None:
    loaded = (busy("a", 800), busy("b", 820))
    policy = get_policy("llumnix", SCALING)
    assert policy.tick(ClusterView(loaded, now=100.0, last_scale_time={"default": 95.0})) == []
    assert policy.tick(ClusterView(loaded, now=100.0, num_starting={"default": 1})) == []
    full = tuple(busy(f"i{n}", 820) for n in range(4))
    assert policy.tick(ClusterView(full, now=100.0)) == []
    assert get_policy("llumnix", SCALING).tick(ClusterView((), now=0.0)) == []


def test_dispatch_memo_is_kept_apart_per_policy_parameters() -> None:
    # "a" has a long queue behind a small head; "all" queued demand makes "b" the choice.
    queued = tuple(RequestLoad(f"q{k}", 100, is_decoding=False) for k in range(5))
    a = InstanceLoad("a", 850, 300, running=(RequestLoad("r", 300),), queued=queued)
    # Freeness: a = 450 / 2 (head) or 50 / 6 (all: every queued request's demand and
    # count, the default); b = 350 / 2.
    b = InstanceLoad("b", 850, 500, running=(RequestLoad("s", 250), RequestLoad("t", 250)))
    view = ClusterView((a, b))
    req = [NewRequest("new", 10)]
    head = get_policy("llumnix", PolicyParams(dispatch_queued_demand="head"))
    every = get_policy("llumnix")
    for _ in range(2):  # the second round reads the memo
        assert head.dispatch(view, req)[0].instance_id == "a"
        assert every.dispatch(view, req)[0].instance_id == "b"
