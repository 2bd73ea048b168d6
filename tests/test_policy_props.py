"""Property-based tests pinning the policy formulas (freeness, dispatch, migration)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from llumctl.policy import (
    ClusterView,
    InstanceLoad,
    Migrate,
    NewRequest,
    PendingDispatch,
    PolicyParams,
    Priority,
    RequestLoad,
    freeness,
    get_policy,
    infaas_load,
    without_departed,
)
from llumctl.policy.dispatch import physical_room
from llumctl.policy.migration import select_candidates

requests = st.lists(
    st.builds(
        RequestLoad,
        request_id=st.uuids().map(str),
        num_blocks=st.integers(1, 200),
        priority=st.sampled_from(list(Priority)),
        admitted_seq=st.integers(0, 1000),
    ),
    max_size=12,
)


@st.composite
def instances(draw: st.DrawFn, iid: str = "i0") -> InstanceLoad:
    running = tuple(draw(requests))
    queued = tuple(
        RequestLoad(r.request_id + "q", r.num_blocks, r.priority, is_decoding=False)
        for r in draw(requests)
    )
    used = sum(r.num_blocks for r in running)
    total = draw(st.integers(max(1, used // 2), used + 2000))
    return InstanceLoad(iid, total, used, running=running, queued=queued)


@settings(max_examples=200, deadline=None)
@given(instances(), st.integers(1, 300), st.sampled_from(list(Priority)), st.booleans())
def test_adding_a_running_request_never_raises_freeness(
    inst: InstanceLoad, blocks: int, priority: Priority, uses_priority: bool
) -> None:
    extra = RequestLoad("new", blocks, priority)
    bigger = InstanceLoad(
        inst.instance_id,
        inst.num_total_blocks,
        inst.num_used_blocks + blocks,
        running=inst.running + (extra,),
        queued=inst.queued,
    )
    before = freeness(inst, uses_priority=uses_priority)
    after = freeness(bigger, uses_priority=uses_priority)
    assert after <= before


@settings(max_examples=200, deadline=None)
@given(instances(), st.integers(1, 300))
def test_a_pending_dispatch_never_raises_freeness(inst: InstanceLoad, blocks: int) -> None:
    assert freeness(inst, (PendingDispatch("p", blocks),)) <= freeness(inst)


@settings(max_examples=200, deadline=None)
@given(instances(), st.data())
def test_departed_requests_leave_the_view_and_free_their_blocks(
    inst: InstanceLoad, data: st.DataObject
) -> None:
    listed = [r.request_id for r in inst.running + inst.queued]
    gone = set(data.draw(st.lists(st.sampled_from(listed), unique=True))) if listed else set()
    after = without_departed(inst, gone)
    assert not {r.request_id for r in after.running + after.queued} & gone
    freed = sum(r.num_blocks for r in inst.running if r.request_id in gone)
    assert after.num_used_blocks == inst.num_used_blocks - freed
    assert after.queued == tuple(r for r in inst.queued if r.request_id not in gone)
    # Finished running requests only free room (a queued one leaving can promote a larger
    # one to the head of the line, so that case has no such rule).
    finished = {r for r in gone if r in {q.request_id for q in inst.running}}
    assert freeness(without_departed(inst, finished)) >= freeness(inst)
    assert without_departed(inst, {"not-listed"}) is inst


@settings(max_examples=200, deadline=None)
@given(instances(), requests)
def test_head_of_line_rule_only_the_first_queued_request_counts(
    inst: InstanceLoad, more: list[RequestLoad]
) -> None:
    if not inst.queued:
        return
    longer = InstanceLoad(
        inst.instance_id,
        inst.num_total_blocks,
        inst.num_used_blocks,
        running=inst.running,
        queued=inst.queued + tuple(more),
    )
    assert freeness(longer) == freeness(inst)
    head = inst.queued[0]
    grown = RequestLoad(head.request_id, head.num_blocks + 50, head.priority, is_decoding=False)
    changed = InstanceLoad(
        inst.instance_id,
        inst.num_total_blocks,
        inst.num_used_blocks,
        running=inst.running,
        queued=(grown,) + inst.queued[1:],
    )
    assert freeness(changed) < freeness(inst)


@settings(max_examples=200, deadline=None)
@given(instances(), st.integers(1, 300), st.booleans())
def test_dispatch_load_counts_every_queued_request(
    inst: InstanceLoad, blocks: int, uses_priority: bool
) -> None:
    # The published Llumnix's dispatch load: (free - all queued demand) / (running +
    # queued); a queued request counts like a pending one, so one more never helps.
    extra = RequestLoad("late", blocks, is_decoding=False)
    longer = InstanceLoad(
        inst.instance_id,
        inst.num_total_blocks,
        inst.num_used_blocks,
        running=inst.running,
        queued=inst.queued + (extra,),
    )
    kw = {"uses_priority": uses_priority, "counts_all_queued": True}
    assert freeness(longer, **kw) <= freeness(inst, **kw)
    as_pending = PendingDispatch("late", blocks)
    assert freeness(longer, **kw) == freeness(inst, (as_pending,), **kw)
    if not uses_priority:
        assert freeness(inst, **kw) == infaas_load(inst)


@settings(max_examples=100, deadline=None)
@given(st.lists(instances(), min_size=2, max_size=6), st.integers(1, 50))
def test_a_draining_instance_is_never_a_dispatch_target(
    insts: list[InstanceLoad], blocks: int
) -> None:
    insts = [
        InstanceLoad(f"i{n}", i.num_total_blocks, i.num_used_blocks, i.running, i.queued)
        for n, i in enumerate(insts)
    ]
    drained = InstanceLoad(
        "drain", 10_000, 0, running=(), queued=(), is_draining=True
    )  # the emptiest instance of all, but draining
    view = ClusterView(tuple(insts) + (drained,))
    new = [NewRequest(f"r{k}", blocks) for k in range(5)]
    for name in ("llumnix", "llumnix-base", "infaas++", "round-robin"):
        targets = {d.instance_id for d in get_policy(name).dispatch(view, new)}
        assert "drain" not in targets
    assert freeness(drained) == -math.inf


@settings(max_examples=100, deadline=None)
@given(requests.filter(lambda rs: len(rs) > 0))
def test_a_draining_instance_is_always_a_migration_source(running: list[RequestLoad]) -> None:
    used = sum(r.num_blocks for r in running)
    drained = InstanceLoad("a", used + 10, used, running=tuple(running), is_draining=True)
    empty = InstanceLoad("b", 5000, 0)
    decisions = get_policy("llumnix").tick(ClusterView((drained, empty)))
    drains = [d for d in decisions if isinstance(d, Migrate) and d.reason == "drain"]
    assert [(d.src, d.dst, d.max_num_blocks) for d in drains] == [("a", "b", 5000)]


@settings(max_examples=150, deadline=None)
@given(st.lists(instances(), min_size=2, max_size=6), st.data(), st.integers(1, 300))
def test_step_aware_dispatch_takes_the_freest_instance_clear_of_a_long_prefill_with_room(
    insts: list[InstanceLoad], data: st.DataObject, blocks: int
) -> None:
    """A request goes to the best-scoring instance that is not in a long prefill step
    and has physical room for it; only when there is none, to the best score."""
    avoid = get_policy("llumnix").params.dispatch_avoid_prefill_tokens
    prefills = data.draw(
        st.lists(
            st.sampled_from([0, avoid - 1, avoid, 5 * avoid]),
            min_size=len(insts),
            max_size=len(insts),
        )
    )
    insts = [
        replace(i, instance_id=f"i{n}", num_prefill_tokens=p)
        for n, (i, p) in enumerate(zip(insts, prefills, strict=True))
    ]
    new = [NewRequest("r", blocks)]
    for name in ("llumnix", "llumnix-base"):
        policy = get_policy(name)
        off = policy.with_params(replace(policy.params, dispatch_avoid_prefill_tokens=0))
        clear = [i for i in insts if i.num_prefill_tokens < avoid and physical_room(i) >= blocks]
        expected = off.dispatch(ClusterView(tuple(clear or insts)), new)[0].instance_id
        assert policy.dispatch(ClusterView(tuple(insts)), new)[0].instance_id == expected


def test_step_aware_dispatch_is_freeness_policies_only_and_can_be_turned_off() -> None:
    # The freest instance is prefilling a long prompt: one request, few blocks held.
    prefilling = InstanceLoad(
        "long", 800, 350, running=(RequestLoad("p", 350),), num_prefill_tokens=5000
    )
    loaded = InstanceLoad(
        "busy", 800, 400, running=tuple(RequestLoad(f"d{k}", 40) for k in range(10))
    )
    view = ClusterView((prefilling, loaded))
    new = [NewRequest("r", 10)]
    assert get_policy("llumnix").dispatch(view, new)[0].instance_id == "busy"
    # INFaaS++ is the paper's baseline as defined: freeness only.
    assert get_policy("infaas++").dispatch(view, new)[0].instance_id == "long"
    off = get_policy("llumnix", PolicyParams(dispatch_avoid_prefill_tokens=0))
    assert off.dispatch(view, new)[0].instance_id == "long"
    # An instance without room for the request is worse than waiting for a step: queued
    # there, it would wait until memory frees.
    full = InstanceLoad(
        "full",
        800,
        800,
        running=tuple(RequestLoad(f"f{k}", 80) for k in range(10)),
        queued=(RequestLoad("q", 40, is_decoding=False),),
    )
    view = ClusterView((prefilling, full))
    assert get_policy("llumnix").dispatch(view, new)[0].instance_id == "long"
    # Migration and scaling read plain freeness: the prefill does not make it a source.
    assert get_policy("llumnix").score(prefilling) > 0


def test_a_burst_spreads_over_identical_instances() -> None:
    view = ClusterView(tuple(InstanceLoad(f"i{n}", 800, 0) for n in range(8)))
    burst = [NewRequest(f"r{k}", 40, arrival_time=k) for k in range(8)]
    for name in ("llumnix", "infaas++", "round-robin"):
        targets = [d.instance_id for d in get_policy(name).dispatch(view, burst)]
        assert sorted(targets) == [f"i{n}" for n in range(8)], name


def test_high_priority_dispatched_first() -> None:
    view = ClusterView((InstanceLoad("busy", 800, 700), InstanceLoad("free", 800, 0)))
    reqs = [NewRequest("normal", 10, arrival_time=0.0), NewRequest("high", 10, Priority.HIGH, 1.0)]
    decisions = get_policy("llumnix").dispatch(view, reqs)
    assert decisions[0].request_id == "high" and decisions[0].instance_id == "free"


def test_several_pairs_per_tick_lowest_with_highest() -> None:
    def loaded(iid: str, used: int, queued: int) -> InstanceLoad:
        running = tuple(RequestLoad(f"{iid}-{k}", used // 4, admitted_seq=k) for k in range(4))
        head = (RequestLoad(f"{iid}-q", queued, is_decoding=False),)
        return InstanceLoad(iid, 800, used, running=running, queued=head)

    view = ClusterView(
        (
            loaded("hot1", 780, 300),
            loaded("hot2", 760, 100),
            InstanceLoad("cold1", 800, 0),
            InstanceLoad("cold2", 800, 100),
        )
    )
    migrations = [d for d in get_policy("llumnix").tick(view) if isinstance(d, Migrate)]
    assert [(m.src, m.dst) for m in migrations] == [("hot1", "cold1"), ("hot2", "cold2")]
    assert get_policy("infaas++").tick(view) == []


def _queue_blocked(iid: str = "hot") -> InstanceLoad:
    """Two decoding requests fill the instance; a HIGH one and two normal ones queue (the
    head-of-line one does not fit)."""
    running = (RequestLoad("r-old", 40, admitted_seq=1), RequestLoad("r-new", 30, admitted_seq=2))
    queued = (
        RequestLoad("q-high", 20, Priority.HIGH, is_decoding=False),
        RequestLoad("q-head", 20, is_decoding=False),
        RequestLoad("q-unmovable", 5, is_decoding=False, is_migratable=False),
        RequestLoad("q-next", 5, is_decoding=False),
    )
    return InstanceLoad(iid, 80, 70, running=running, queued=queued)


def test_queued_requests_are_candidates_first_head_of_line_first() -> None:
    inst = _queue_blocked()
    assert select_candidates(inst, 4) == ["q-head", "q-next", "r-new", "r-old"]
    assert select_candidates(inst, 1, "longest") == ["q-head"]
    # The paper's rule alone: running requests only.
    assert select_candidates(inst, 4, queued_first=False) == ["r-new", "r-old"]
    # A draining instance moves every priority.
    assert select_candidates(replace(inst, is_draining=True), 2) == ["q-high", "q-head"]
    # Only what fits the destination (its blocks and one of growth).
    assert select_candidates(inst, 4, max_num_blocks=31) == ["q-head", "q-next", "r-new"]
    assert select_candidates(inst, 4, max_num_blocks=6) == ["q-next"]


def test_an_instance_with_only_queued_requests_to_move_is_a_migration_source() -> None:
    # Its running requests are still prefilling (not movable); its queue is blocked.
    inst = _queue_blocked()
    inst = replace(inst, running=tuple(replace(r, is_decoding=False) for r in inst.running))
    view = ClusterView((inst, InstanceLoad("cold", 80, 0)))
    (decision,) = [d for d in get_policy("llumnix").tick(view) if isinstance(d, Migrate)]
    assert (decision.src, decision.dst, decision.queued_first) == ("hot", "cold", True)
    # What keeps the (empty) destination a destination: 80 free - 3 (threshold) x 1.
    assert decision.max_num_blocks == 77
    paper = get_policy("llumnix", PolicyParams(migrate_queued=False))
    assert [d for d in paper.tick(view) if isinstance(d, Migrate)] == []


@settings(max_examples=200, deadline=None)
@given(st.lists(instances(), min_size=2, max_size=5), st.sampled_from(["llumnix", "llumnix-base"]))
def test_a_move_within_its_limit_keeps_the_destination_a_destination(
    insts: list[InstanceLoad], name: str
) -> None:
    insts = [replace(inst, instance_id=f"i{n}") for n, inst in enumerate(insts)]
    policy = get_policy(name)
    by_id = {inst.instance_id: inst for inst in insts}
    for decision in policy.tick(ClusterView(tuple(insts))):
        assert isinstance(decision, Migrate) and decision.max_num_blocks is not None
        src, dst = by_id[decision.src], by_id[decision.dst]
        # The largest request the source may send: one block under the limit.
        moved = RequestLoad("moved", decision.max_num_blocks - 1)
        assert select_candidates(src, 1, max_num_blocks=decision.max_num_blocks)
        after = replace(
            dst,
            num_used_blocks=dst.num_used_blocks + moved.num_blocks,
            running=(*dst.running, moved),
        )
        assert policy.score(after) > policy.params.migrate_in_threshold


def test_a_source_pairs_with_a_less_free_destination_when_only_that_one_has_room() -> None:
    # "big" is the freer (13 blocks per request) but has room for 7 blocks while staying a
    # destination; "small" (12 per request, shared by 4) has room for 33.
    hot = InstanceLoad(
        "hot", 100, 100, running=(RequestLoad("r", 30, admitted_seq=1),), num_preempted=1
    )
    big = InstanceLoad("big", 100, 87, running=(RequestLoad("b", 87),))
    small = InstanceLoad(
        "small", 200, 152, running=tuple(RequestLoad(f"s{k}", 38) for k in range(4))
    )
    view = ClusterView((hot, big, small))
    policy = get_policy("llumnix")
    assert policy.score(big) > policy.score(small) > policy.params.migrate_in_threshold
    (decision,) = [d for d in policy.tick(view) if isinstance(d, Migrate)]
    assert (decision.src, decision.dst) == ("hot", "small")
    # Without a destination that can take it, the source is not paired at all.
    assert [d for d in policy.tick(ClusterView((hot, big))) if isinstance(d, Migrate)] == []
