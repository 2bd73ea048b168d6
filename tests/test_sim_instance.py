"""The simulated instance: paged blocks, continuous batching, vLLM-like preemption."""

from __future__ import annotations

from llumctl.sim import LatencyProfile, SimInstance, SimRequest
from llumctl.sim.instance import FINISHED, QUEUED, RUNNING

SMALL = LatencyProfile(num_total_blocks=20, watermark_blocks=0, max_num_batched_tokens=64)


def run_until_idle(inst: SimInstance, max_steps: int = 10_000) -> list[SimRequest]:
    finished: list[SimRequest] = []
    for _ in range(max_steps):
        result = inst.step()
        if result is None:
            break
        finished.extend(result.finished)
        held = sum(inst.blocks_of(r) for r in inst.running())
        assert inst.num_used_blocks == held  # block accounting never drifts
    return finished


def test_request_runs_to_completion_and_frees_its_blocks() -> None:
    inst = SimInstance("i", SMALL)
    req = SimRequest("r", prompt_tokens=20, output_tokens=5)
    inst.add(req)
    first = inst.step()
    assert first is not None and first.started == (req,)
    assert inst.generated(req) == 1 and inst.blocks_of(req) == 2
    finished = run_until_idle(inst)
    assert finished == [req] and req.state == FINISHED
    assert inst.num_used_blocks == 0 and inst.step() is None


def test_step_duration_follows_the_profile() -> None:
    inst = SimInstance("i", LatencyProfile())
    inst.add(SimRequest("r", prompt_tokens=1000, output_tokens=10))
    prefill = inst.step()
    assert prefill is not None
    assert abs(prefill.duration_s - LatencyProfile().prefill_ms(1000) / 1000) < 1e-12
    decode = inst.step()
    assert decode is not None
    assert abs(decode.duration_s - LatencyProfile().decode_ms(1, 1000) / 1000) < 1e-12


def test_a_new_block_is_allocated_every_block_size_tokens() -> None:
    inst = SimInstance("i", SMALL)
    req = SimRequest("r", prompt_tokens=16, output_tokens=40)
    inst.add(req)
    inst.step()
    assert inst.num_used_blocks == 1
    inst.step()  # stores token 17 -> second block
    assert inst.num_used_blocks == 2
    for _ in range(15):
        inst.step()
    assert inst.num_used_blocks == 2
    inst.step()
    assert inst.num_used_blocks == 3


def _step_until_preemption(inst: SimInstance, max_steps: int = 60) -> list[SimRequest]:
    """Step until a step preempts something; the requests it preempted."""
    for _ in range(max_steps):
        result = inst.step()
        assert result is not None
        if result.preempted:
            return list(result.preempted)
    return []


def test_newest_request_is_preempted_and_recomputed_when_blocks_run_out() -> None:
    inst = SimInstance("i", SMALL)
    old = SimRequest("old", prompt_tokens=100, output_tokens=150)
    new = SimRequest("new", prompt_tokens=100, output_tokens=150)
    inst.add(old)
    inst.step()
    inst.add(new)
    inst.step()
    assert old.state == RUNNING and new.state == RUNNING
    preempted = _step_until_preemption(inst)
    assert preempted == [new] and new.state == QUEUED and new.num_preemptions == 1
    assert inst.queued() == [new] and inst.load(0.0).num_preempted == 1
    # Once the old one is done the preempted one is recomputed with its output so far.
    done = run_until_idle(inst)
    assert [r.request_id for r in done] == ["old", "new"]


def test_the_latest_arrival_is_preempted_not_the_latest_admitted() -> None:
    # "early" arrived first but joined last (as after a recompute or a migration in); the
    # paper's engine orders its running list by arrival, so "late" is the victim.
    inst = SimInstance("i", SMALL)
    late = SimRequest("late", prompt_tokens=100, output_tokens=150, arrival_time=5.0)
    early = SimRequest("early", prompt_tokens=100, output_tokens=150, arrival_time=1.0)
    inst.add(late)
    inst.step()
    inst.add(early)
    inst.step()
    assert early.admitted_seq > late.admitted_seq
    preempted = _step_until_preemption(inst)
    assert preempted == [late] and early.state == RUNNING


def test_head_of_line_blocks_the_queue_fcfs() -> None:
    inst = SimInstance("i", SMALL)
    inst.add(SimRequest("big", prompt_tokens=300, output_tokens=50))
    inst.step()
    inst.add(SimRequest("huge", prompt_tokens=200, output_tokens=5))  # does not fit yet
    inst.add(SimRequest("tiny", prompt_tokens=5, output_tokens=5))  # would fit
    result = inst.step()
    assert result is not None and result.started == ()
    assert [r.request_id for r in inst.queued()] == ["huge", "tiny"]
    load = inst.load(1.0)
    assert load.queued[0].num_blocks == 13 and len(load.queued) == 2


def test_token_budget_limits_prefill_per_step() -> None:
    inst = SimInstance("i", SMALL)
    for k in range(3):
        inst.add(SimRequest(f"r{k}", prompt_tokens=30, output_tokens=3))
    first = inst.step()
    assert first is not None and len(first.started) == 2  # 60 of 64 tokens
    second = inst.step()
    assert second is not None and len(second.started) == 1


def test_high_priority_is_admitted_first_and_preempted_last() -> None:
    inst = SimInstance("i", SMALL)
    inst.add(SimRequest("normal", prompt_tokens=10, output_tokens=5))
    inst.add(SimRequest("high", prompt_tokens=10, output_tokens=5, priority=1))
    assert [r.request_id for r in inst.queued()] == ["high", "normal"]


def test_migration_primitives_move_a_request_between_instances() -> None:
    src, dst = SimInstance("a", SMALL), SimInstance("b", SMALL)
    req = SimRequest("r", prompt_tokens=40, output_tokens=30)
    src.add(req)
    src.step()
    src.step()
    assert dst.reserve(3)
    held = src.stop(req)
    assert held == 3 and src.num_free_blocks == 17 and src.num_running == 0
    src.release(held)
    dst.resume(req, 3)
    assert src.num_free_blocks == 20 and dst.num_used_blocks == 3
    assert dst.generated(req) == 2
    assert run_until_idle(dst) == [req] and dst.num_free_blocks == 20
    assert not SimInstance("c", SMALL).reserve(21)


def test_a_resumed_request_decodes_in_its_first_step() -> None:
    """Its KV arrives whole, partial last block included (as agent/llumlet.py copies it):
    the destination's first step for it is a decode step, with no prefill."""
    profile = LatencyProfile()
    src, dst = SimInstance("a", profile), SimInstance("b", profile)
    req = SimRequest("r", prompt_tokens=1000, output_tokens=30)
    src.add(req)
    src.step()
    src.step()  # 1002 tokens, the KV of 1001 computed (not a multiple of the block size)
    num_blocks = src.blocks_of(req)
    assert dst.reserve(num_blocks)
    src.release(src.stop(req))
    dst.resume(req, num_blocks)
    first = dst.step()
    assert first is not None and first.num_prefill_tokens == 0
    assert abs(first.duration_s - profile.decode_ms(1, 1001) / 1000) < 1e-12
    assert dst.generated(req) == 3


def test_a_request_resumed_with_every_seat_taken_waits_with_its_kv_then_decodes() -> None:
    """vLLM queues a resumed request like any other when max_num_seqs are running; its
    staged KV stays held, and it joins without a prefill once a seat is free."""
    one_seat = LatencyProfile(
        num_total_blocks=20, watermark_blocks=0, max_num_batched_tokens=64, max_num_seqs=1
    )
    src, dst = SimInstance("a", one_seat), SimInstance("b", one_seat)
    seat = SimRequest("seat", prompt_tokens=10, output_tokens=3)
    dst.add(seat)
    dst.step()
    req = SimRequest("r", prompt_tokens=40, output_tokens=30)
    src.add(req)
    src.step()
    src.step()
    num_blocks = src.blocks_of(req)
    assert dst.reserve(num_blocks)
    src.release(src.stop(req))
    dst.resume(req, num_blocks)
    assert req.state == QUEUED and dst.num_queued == 1 and dst.num_staged_blocks == num_blocks
    while seat.state != FINISHED:
        result = dst.step()
        assert result is not None and req not in result.decoded
    joined = dst.step()
    assert joined is not None and joined.num_prefill_tokens == 0 and req in joined.decoded
    assert dst.num_staged_blocks == 0 and dst.generated(req) == 3
    assert run_until_idle(dst) == [req] and dst.num_free_blocks == 20


def test_a_queued_resumed_request_that_leaves_frees_its_staged_kv() -> None:
    one_seat = LatencyProfile(num_total_blocks=20, watermark_blocks=0, max_num_seqs=1)
    inst = SimInstance("b", one_seat)
    inst.add(SimRequest("seat", prompt_tokens=10, output_tokens=50))
    inst.step()
    req = SimRequest("r", prompt_tokens=40, output_tokens=30)
    req.num_generated = 2
    assert inst.reserve(3)
    inst.resume(req, 3)
    assert inst.num_free_blocks == 20 - 1 - 3
    inst.remove_queued(req)
    assert inst.num_staged_blocks == 0 and inst.num_free_blocks == 19


def test_the_load_reports_the_prefill_of_the_step_in_progress() -> None:
    """Step-aware dispatch reads it: between `step()` and the next one (the step the
    caller is running), the view shows that step's prompt tokens, and 0 once it decodes."""
    inst = SimInstance("i", LatencyProfile())
    inst.add(SimRequest("long", prompt_tokens=3000, output_tokens=5))
    assert inst.load(0.0).num_prefill_tokens == 0
    first = inst.step()
    assert first is not None and first.num_prefill_tokens == 3000
    assert inst.load(0.0).num_prefill_tokens == 3000
    inst.add(SimRequest("short", prompt_tokens=40, output_tokens=5))
    second = inst.step()  # decodes "long", prefills "short"
    assert second is not None and inst.load(0.0).num_prefill_tokens == 40
    assert inst.step() is not None and inst.load(0.0).num_prefill_tokens == 0
    run_until_idle(inst)
    assert inst.load(0.0).num_prefill_tokens == 0
