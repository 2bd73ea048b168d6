"""Pure parts of the controller: request parsing and the cluster state's views."""

from __future__ import annotations

import pytest

from llumctl.controller.openai_api import ParamError, parse_request
from llumctl.controller.state import AgentEntry, ClusterState, group_key
from llumctl.policy import (
    InstanceLoad,
    NewRequest,
    PendingDispatch,
    Priority,
    RequestLoad,
    get_policy,
)
from llumctl.protocol import InstanceInfo


def _info(iid: str, model: str = "m", fingerprint: str = "fp", **kw) -> InstanceInfo:
    return InstanceInfo(
        iid, f"http://x/instances/{iid}", "sim", model, fingerprint=fingerprint, **kw
    )


def _load(iid: str, used: int = 0, running: int = 0, preempted: int = 0) -> InstanceLoad:
    reqs = tuple(RequestLoad(f"{iid}-r{i}", 2) for i in range(running))
    return InstanceLoad(iid, 100, used, running=reqs, num_preempted=preempted)


def test_priority_from_body_or_header_and_body_wins():
    body = {"model": "m", "prompt": "x"}
    assert parse_request("completion", body, None, 16).priority == Priority.NORMAL
    assert parse_request("completion", body, "high", 16).priority == Priority.HIGH
    assert parse_request("completion", body, "1", 16).priority == Priority.HIGH
    with_body = {**body, "priority": "normal"}
    assert parse_request("completion", with_body, "high", 16).priority == Priority.NORMAL
    with pytest.raises(ParamError):
        parse_request("completion", body, "urgent", 16)


def test_prompt_estimate_is_exact_for_token_ids_and_generous_for_text():
    ids = parse_request("completion", {"model": "m", "prompt": [1, 2, 3]}, None, 16)
    assert ids.estimated_prompt_tokens() == 3
    text = parse_request("completion", {"model": "m", "prompt": "a" * 30}, None, 16)
    assert text.estimated_prompt_tokens() == 10
    chat = parse_request(
        "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, None, 16
    )
    assert chat.estimated_prompt_tokens() == 1 + 8


def test_migration_groups_split_models_and_engine_configurations():
    state = ClusterState()
    state.apply_load(_info("a1", "a"), _load("a1"), 0.0)
    state.apply_load(_info("a2", "a", fingerprint="other"), _load("a2"), 0.0)
    state.apply_load(_info("b1", "b"), _load("b1"), 0.0)
    grouped = {i.instance_id: i.model for i in state.view(by_group=True).instances}
    assert len(set(grouped.values())) == 3
    plain = {i.instance_id: i.model for i in state.view(by_group=False).instances}
    assert plain == {"a1": "a", "a2": "a", "b1": "b"}
    assert group_key(_info("x", "a")) == grouped["a1"]


def test_pending_dispatch_counts_until_the_instance_reports_it():
    state = ClusterState()
    state.apply_load(_info("i"), _load("i"), 0.0)
    state.add_pending("i", PendingDispatch("r1", 5))
    assert [p.request_id for p in state.view().pending["i"]] == ["r1"]
    reported = InstanceLoad("i", 100, 5, running=(RequestLoad("r1", 5),))
    state.apply_load(_info("i"), reported, 0.0)
    assert state.view().pending["i"] == ()


def test_a_request_seen_to_finish_stops_counting_before_the_report_says_so():
    state = ClusterState()
    running = (RequestLoad("r1", 6), RequestLoad("r2", 4))
    state.apply_load(_info("i"), InstanceLoad("i", 100, 10, running=running), 0.0)
    state.note_departed("i", "r1")
    (load,) = state.view().instances
    assert [r.request_id for r in load.running] == ["r2"] and load.num_used_blocks == 4
    # A report made before the finish still lists r1: it stays left out.
    state.apply_load(_info("i"), InstanceLoad("i", 100, 10, running=running), 0.0)
    assert state.view().instances[0].num_used_blocks == 4
    # Once a report no longer lists it, nothing is left to subtract.
    state.apply_load(_info("i"), InstanceLoad("i", 100, 4, running=running[1:]), 0.0)
    assert state.departed["i"] == {}
    assert state.view().instances[0].num_used_blocks == 4


def test_dispatch_spreads_a_burst_through_pending_demand():
    state = ClusterState()
    for iid in ("i1", "i2"):
        state.apply_load(_info(iid), _load(iid), 0.0)
    policy = get_policy("llumnix")
    chosen = []
    for n in range(4):
        decision = policy.dispatch(state.view(by_group=False), [NewRequest(f"r{n}", 10, model="m")])
        state.add_pending(decision[0].instance_id, PendingDispatch(f"r{n}", 10))
        chosen.append(decision[0].instance_id)
    assert sorted(chosen) == ["i1", "i1", "i2", "i2"]


def test_agent_names_the_model_and_the_instance_report_keeps_it():
    state = ClusterState()
    agent = AgentEntry("ag", "http://ag", "h")
    state.register_agent(agent, [_info("v0", "served-name", fingerprint="", agent_id="ag")])
    state.apply_load(_info("v0", "/models/path"), _load("v0"), 0.0)
    entry = state.instances["v0"]
    assert entry.info.model == "served-name" and entry.info.agent_id == "ag"
    assert entry.load is not None and entry.load.model == "served-name"
    assert entry.info.fingerprint == "fp"


def test_preemptions_observed_add_up_rises_only():
    state = ClusterState()
    for preempted in (0, 2, 1, 3, 0):
        state.apply_load(_info("i"), _load("i", preempted=preempted), 0.0)
    assert state.instances["i"].num_preemptions_observed == 4


def test_preemptions_follow_the_engine_counter_from_the_first_report():
    state = ClusterState()
    # 5 preemptions before this controller heard of the instance are not its to count; a
    # short preemption (never visible in a report's queue) still moves the counter; a
    # lower counter means the engine restarted and becomes the new baseline.
    for total in (5, 5, 7, 8, 2, 4):
        state.apply_load(_info("i"), _load("i", preempted=0), 0.0, num_preemptions_total=total)
    assert state.instances["i"].num_preemptions_observed == 3 + 2


def test_a_stopped_instance_does_not_come_back_from_late_reports():
    state = ClusterState()
    agent = AgentEntry("ag", "http://ag", "h")
    state.register_agent(agent, [_info("i1", agent_id="ag"), _info("i2", agent_id="ag")])
    state.apply_load(_info("i1"), _load("i1"), 0.0)
    state.tombstone("i1")
    state.apply_load(_info("i1"), _load("i1"), 0.0)  # in flight when it was stopped
    state.register_agent(agent, [_info("i1", agent_id="ag"), _info("i2", agent_id="ag")])
    assert "i1" not in state.instances
    # The agent's own list is authoritative: what it no longer hosts is gone.
    state.register_agent(agent, [])
    assert state.instances == {}


def test_a_drain_survives_the_instance_being_dropped_and_readded():
    state = ClusterState()
    state.apply_load(_info("i"), _load("i"), 0.0)
    state.drain_intent["i"] = True
    state.remove_instance("i")  # e.g. reports were late
    state.apply_load(_info("i"), _load("i"), 0.0)
    entry = state.instances["i"]
    assert entry.is_draining and entry.is_stop_when_empty
    assert state.view().instances[0].is_draining


async def test_a_controller_stall_is_not_counted_as_the_instances_silence():
    """The policy loop's own late wake-up (the event loop blocked, as a starved VM blocks
    it) is excused: reports sent meanwhile are still queued. Real controller objects, in
    process; the block is a synchronous sleep on the event loop."""
    import asyncio
    import time

    from llumctl.controller.app import Controller
    from llumctl.controller.config import config_from_dict

    ctrl = Controller(config_from_dict({"secret": "s", "report_timeout_s": 1.0}))
    ctrl.state.apply_load(_info("a"), _load("a"), 0.0)
    loop_task = asyncio.create_task(ctrl.loop.run())
    try:
        await asyncio.sleep(0.3)  # a tick or two
        time.sleep(1.5)  # the whole process stalls for longer than the report timeout
        await asyncio.sleep(0.3)  # the loop wakes late, then ticks
        assert "a" in ctrl.state.instances
        # Real silence still counts: no report for the timeout, with the loop running.
        await asyncio.sleep(1.2)
        assert "a" not in ctrl.state.instances
    finally:
        loop_task.cancel()
        await ctrl.instance_client.close()
        await ctrl.agent_client.close()


def test_failed_instances_mirror_each_agents_latest_list():
    state = ClusterState()
    agent, other = AgentEntry("ag", "http://ag", "h"), AgentEntry("bg", "http://bg", "h")
    bad = _info("i1", agent_id="ag", state="failed", failure="engine exited: too long")
    state.register_agent(agent, [bad, _info("i2", agent_id="ag")])
    state.register_agent(other, [_info("j1", agent_id="bg", state="failed")])
    assert state.failed == {"i1": ("ag", "engine exited: too long"), "j1": ("bg", "failed")}
    assert sorted(state.instances) == ["i2"]  # a failed instance takes no requests
    # Started again under the same id: no longer failed. The other agent's is untouched.
    state.register_agent(agent, [_info("i1", agent_id="ag", state="starting")])
    assert state.failed == {"j1": ("bg", "failed")}
