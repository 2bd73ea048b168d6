"""DispatchIndex makes the same choices as Policy.dispatch, and the HIGH placement rule."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llumctl.policy import (
    ClusterView,
    DispatchIndex,
    InstanceLoad,
    NewRequest,
    PendingDispatch,
    Priority,
    RequestLoad,
    get_policy,
)

SCORING = ("llumnix", "llumnix-base", "infaas++")

loads = st.lists(st.tuples(st.integers(1, 120), st.sampled_from(list(Priority))), max_size=8)


@st.composite
def views(draw: st.DrawFn) -> ClusterView:
    insts = []
    pending = {}
    for n in range(draw(st.integers(1, 12))):
        iid = f"i{n:02d}"
        running = tuple(
            RequestLoad(f"{iid}-{k}", b, p, admitted_seq=k) for k, (b, p) in enumerate(draw(loads))
        )
        queued = tuple(
            RequestLoad(f"{iid}-q{k}", b, p, is_decoding=False)
            for k, (b, p) in enumerate(draw(loads)[:2])
        )
        used = sum(r.num_blocks for r in running)
        insts.append(
            InstanceLoad(
                iid,
                draw(st.integers(max(1, used), used + 900)),
                used,
                running=running,
                queued=queued,
                is_draining=draw(st.integers(0, 9)) == 0,
                model=draw(st.sampled_from(["a", "a", "b"])),
                num_prefill_tokens=draw(st.sampled_from([0, 0, 512, 1024, 4096])),
            )
        )
        extra = draw(loads)[:3]
        if extra:
            pending[iid] = tuple(
                PendingDispatch(f"{iid}-p{k}", b, p) for k, (b, p) in enumerate(extra)
            )
    return ClusterView(tuple(insts), pending=pending)


new_requests = st.lists(
    st.builds(
        NewRequest,
        request_id=st.uuids().map(str),
        num_blocks=st.integers(1, 300),
        priority=st.sampled_from(list(Priority)),
        arrival_time=st.floats(0, 100),
        model=st.sampled_from(["a", "b", "c"]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(views(), new_requests, st.sampled_from(SCORING))
def test_index_chooses_what_plain_dispatch_chooses(
    view: ClusterView, reqs: list[NewRequest], name: str
) -> None:
    policy = get_policy(name)
    index = DispatchIndex(policy)
    index.sync(view)
    assert index.dispatch(reqs) == policy.dispatch(view, reqs)


@settings(max_examples=100, deadline=None)
@given(views(), views(), new_requests)
def test_index_follows_changed_reports(
    first: ClusterView, second: ClusterView, reqs: list[NewRequest]
) -> None:
    """After a sync to another view (some instances gone, others changed), the index
    answers for the new view only."""
    policy = get_policy("llumnix")
    index = DispatchIndex(policy)
    index.sync(first)
    index.sync(second)
    assert len(index) == sum(not i.is_draining for i in second.instances)
    assert index.dispatch(reqs) == policy.dispatch(second, reqs)


def test_updating_one_report_moves_the_choice() -> None:
    index = DispatchIndex(get_policy("llumnix"))
    for n in range(5):
        index.update(InstanceLoad(f"i{n}", 800, 100))
    index.update(InstanceLoad("i2", 800, 0))
    assert index.choose(NewRequest("r", 10)) == "i2"
    index.update(InstanceLoad("i2", 800, 700))
    assert index.choose(NewRequest("r", 10)) == "i4"
    index.remove("i4")
    assert index.choose(NewRequest("r", 10)) == "i3"


def test_round_robin_has_no_index() -> None:
    try:
        DispatchIndex(get_policy("round-robin"))
    except ValueError as exc:
        assert "round-robin" in str(exc)
    else:
        raise AssertionError("round-robin index accepted")


def _high(iid: str, blocks: int) -> RequestLoad:
    return RequestLoad(iid + "-h", blocks, Priority.HIGH)


def test_high_request_joins_an_instance_already_paying_headroom() -> None:
    """The reserving instance looks far less free than an empty one, but a second HIGH
    request there costs only its own blocks, so it goes there; a normal one does not."""
    reserving = InstanceLoad("a", 800, 50, running=(_high("a", 50),))
    view = ClusterView((reserving, InstanceLoad("b", 800, 0), InstanceLoad("c", 800, 10)))
    policy = get_policy("llumnix")
    assert policy.score(reserving) < policy.score(view.instances[1])
    high = NewRequest("h", 20, Priority.HIGH)
    normal = NewRequest("n", 20)
    assert policy.dispatch(view, [high])[0].instance_id == "a"
    assert policy.dispatch(view, [normal])[0].instance_id == "b"
    # llumnix-base has no headroom, hence no rule: the freest instance wins.
    assert get_policy("llumnix-base").dispatch(view, [high])[0].instance_id == "b"


def test_high_request_skips_a_reserving_instance_without_physical_room() -> None:
    full = InstanceLoad("a", 800, 790, running=(_high("a", 790),))
    view = ClusterView((full, InstanceLoad("b", 800, 0)))
    high = NewRequest("h", 20, Priority.HIGH)
    assert get_policy("llumnix").dispatch(view, [high])[0].instance_id == "b"


def test_high_request_skips_a_reserving_instance_where_high_requests_wait() -> None:
    """A HIGH request would queue behind the waiting HIGH one (and its prefill); a
    waiting normal request does not hold it back (HIGH is admitted first)."""
    waiting_high = (RequestLoad("a-q", 5, Priority.HIGH, is_decoding=False),)
    busy = InstanceLoad("a", 800, 50, running=(_high("a", 50),), queued=waiting_high)
    view = ClusterView((busy, InstanceLoad("b", 800, 0)))
    high = NewRequest("h", 20, Priority.HIGH)
    policy = get_policy("llumnix")
    assert policy.dispatch(view, [high])[0].instance_id == "b"
    index = DispatchIndex(policy)
    index.sync(view)
    assert index.choose(high) == "b"
    waiting_normal = (RequestLoad("a-q", 5, is_decoding=False),)
    calm = InstanceLoad("a", 800, 50, running=(_high("a", 50),), queued=waiting_normal)
    assert policy.dispatch(ClusterView((calm, view.instances[1])), [high])[0].instance_id == "a"


def test_a_burst_of_high_requests_stays_on_one_instance_while_it_fits() -> None:
    view = ClusterView(tuple(InstanceLoad(f"i{n}", 800, 0) for n in range(4)))
    burst = [NewRequest(f"h{k}", 100, Priority.HIGH, arrival_time=k) for k in range(10)]
    targets = [d.instance_id for d in get_policy("llumnix").dispatch(view, burst)]
    # 800 blocks hold 8 requests of 100; the 9th needs a second instance.
    assert len(set(targets[:8])) == 1
    assert targets[8] != targets[0]
