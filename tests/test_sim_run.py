"""Whole simulations: every request finishes, policies behave as named, runs repeat."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llumctl.sim import (
    Experiment,
    LatencyProfile,
    RequestSpec,
    SimConfig,
    WorkloadError,
    WorkloadSpec,
    experiment_from_dict,
    run_experiment,
    run_policy,
)
from llumctl.sim.profile import ProfileError

# Four instances at ~2.6x the paper's per-instance M-M load (queues, migrations).
PROFILE = LatencyProfile(num_total_blocks=800)
WORKLOAD = WorkloadSpec(num_requests=300, rate=5.0, input="M", output="M", seed=1)


def small(policies: tuple[str, ...], **params: object) -> Experiment:
    exp = Experiment(
        workload=WORKLOAD,
        config=SimConfig(num_instances=4),
        profile=PROFILE,
        policies=policies,
    )
    return replace(exp, params=exp.params.with_updates(dict(params)))


def test_every_request_finishes_and_metrics_are_sane() -> None:
    result = run_experiment(small(("llumnix", "infaas++", "round-robin", "llumnix-base")))
    assert result["simulated"] is True
    for name, metrics in result["results"].items():
        assert metrics["unfinished"] == 0 and metrics["num_requests"] == 300, name
        assert 0 < metrics["prefill_p50"] <= metrics["prefill_p99"]
        assert metrics["decode_mean"] >= LatencyProfile().decode_base_ms / 1000
        assert metrics["avg_instances"] == pytest.approx(4.0)
    assert result["results"]["infaas++"]["migrations"] == 0
    assert result["results"]["round-robin"]["migrations"] == 0


def test_llumnix_migrates_under_memory_pressure_and_the_baseline_does_not() -> None:
    # L-L on four instances: long requests outgrow their instances' KV (preemptions),
    # which is what migration relieves. (On the M-M workload above, step-aware dispatch
    # keeps the load even enough that llumnix has nothing to move.)
    exp = small(("llumnix", "infaas++"))
    exp = replace(exp, workload=replace(WORKLOAD, rate=0.8, input="L", output="L"))
    result = run_experiment(exp)["results"]
    assert result["infaas++"]["migrations"] == 0
    assert result["llumnix"]["migrations"] > 0
    assert result["llumnix"]["mean_downtime_s"] >= 0.02


def test_llumnix_moves_queued_requests_first_without_kv() -> None:
    workload = replace(WORKLOAD, rate=0.8, input="L", output="L")
    runs = {}
    for flag in (True, False):
        exp = replace(small(("llumnix",), migrate_queued=flag), workload=workload)
        runs[flag] = run_experiment(exp)["results"]["llumnix"]
    assert runs[True]["unfinished"] == 0 and runs[False]["unfinished"] == 0
    assert 0 < runs[True]["queued_migrations"] < runs[True]["migrations"]
    assert runs[False]["queued_migrations"] == 0 and runs[False]["migrations"] > 0
    # Downtime is the running requests' stops only: a queued request stops nothing.
    assert runs[True]["mean_downtime_s"] >= 0.02


def test_same_inputs_same_results() -> None:
    exp = small(("llumnix",))
    assert run_experiment(exp) == run_experiment(exp)
    other = replace(exp, workload=replace(WORKLOAD, seed=2))
    assert run_experiment(other) != run_experiment(exp)


def test_scaling_starts_and_stops_instances() -> None:
    exp = small(
        ("llumnix", "infaas++"),
        is_scaling_enabled=True,
        min_instances=1,
        max_instances=6,
        scale_cooldown_s=2.0,
    )
    exp = replace(exp, config=SimConfig(num_instances=1, startup_delay_s=5.0))
    result = run_experiment(exp)
    for metrics in result["results"].values():
        assert metrics["unfinished"] == 0
        assert 1.0 < metrics["avg_instances"] < 6.0


def test_a_request_larger_than_an_instance_is_refused() -> None:
    exp = replace(small(("llumnix",)), workload=replace(WORKLOAD, input="6000", output="3000"))
    exp = replace(exp, profile=replace(PROFILE, max_model_len=8000))
    with pytest.raises(WorkloadError, match="holds at most"):
        run_experiment(exp)


def test_high_priority_requests_are_reported_apart() -> None:
    exp = replace(small(("llumnix",)), workload=replace(WORKLOAD, priority_ratio=0.2))
    high = run_experiment(exp)["results"]["llumnix"]["high"]
    assert 30 < high["num_requests"] < 90 and high["prefill_p99"] > 0


def test_request_overhead_adds_to_first_token_and_end_to_end_only() -> None:
    # The fixed cost outside engine steps (HTTP, relay) shifts what clients see; the
    # engine is not busy during it, so scheduling and time per token do not change.
    exp = small(("round-robin",))
    base = run_experiment(exp)["results"]["round-robin"]
    slow = replace(exp, profile=replace(PROFILE, request_overhead_ms=40.0))
    shifted = run_experiment(slow)["results"]["round-robin"]
    for key in ("prefill_mean", "prefill_p99", "request_mean", "request_p99"):
        assert shifted[key] == pytest.approx(base[key] + 0.040), key
    assert shifted["decode_mean"] == base["decode_mean"]
    assert shifted["preemption_loss"] == base["preemption_loss"]


def test_second_token_extra_lengthens_each_decode_once_not_the_engines_steps() -> None:
    # Two lone requests, 2 and 101 tokens out: their one and hundred intervals share the
    # extra 10 ms, which delays what the client sees and keeps the engine free.
    requests = [RequestSpec("short", 0.0, 16, 2), RequestSpec("long", 10.0, 16, 101)]
    exp = Experiment(config=SimConfig(num_instances=1), profile=PROFILE)
    base = run_policy(requests, exp, "round-robin", None)
    extra = replace(exp, profile=replace(PROFILE, second_token_extra_ms=10.0))
    got = run_policy(requests, extra, "round-robin", None)
    step_s = PROFILE.decode_ms(1, 0) / 1000.0  # resident tokens: about 0.5% of the step
    assert base["decode_mean"] == pytest.approx(step_s, rel=0.01)
    # Mean over the two requests of 10 ms / 1 and 10 ms / 100.
    assert got["decode_mean"] - base["decode_mean"] == pytest.approx((0.010 + 0.0001) / 2)
    assert got["request_mean"] - base["request_mean"] == pytest.approx(0.010)
    assert got["prefill_mean"] == base["prefill_mean"]
    assert got["preemption_loss"] == base["preemption_loss"]


def _two_requests(at_s: tuple[float, float], instances_per_host: int) -> dict[str, float]:
    """Two 100-token decodes on two instances, with co-located instances slowing by 0.5."""
    requests = [RequestSpec(f"r{i}", t, 16, 100) for i, t in enumerate(at_s)]
    exp = Experiment(
        config=SimConfig(num_instances=2, instances_per_host=instances_per_host),
        profile=replace(PROFILE, co_located_slowdown=0.5),
    )
    return run_policy(requests, exp, "round-robin", None)


def test_busy_neighbours_on_one_host_slow_each_others_steps() -> None:
    # Together on one host: every step of both runs 1.5x as long as profiled.
    alone = _two_requests((0.0, 10.0), instances_per_host=2)
    together = _two_requests((0.0, 0.0), instances_per_host=2)
    assert together["decode_mean"] == pytest.approx(1.5 * alone["decode_mean"], rel=0.02)
    # On hosts of their own (GPUs), running at the same time changes nothing.
    apart = _two_requests((0.0, 0.0), instances_per_host=1)
    assert apart["decode_mean"] == pytest.approx(alone["decode_mean"], rel=1e-9)


def test_a_request_dispatched_next_to_busy_neighbours_gets_its_first_token_later() -> None:
    # r0 runs alone; r1 arrives while r0 decodes on the same host: 2 busy, +30 ms to its
    # first token (not to its time per token); on a host of its own, nothing is added.
    extra = (0.0, 30.0, 90.0)

    def first_tokens(instances_per_host: int, extra_ms: tuple[float, ...]) -> list[float]:
        from llumctl.policy import get_policy
        from llumctl.sim.cluster import Simulation

        requests = [RequestSpec("r0", 0.0, 16, 100), RequestSpec("r1", 0.05, 16, 100)]
        profile = replace(PROFILE, co_located_first_token_ms=extra_ms)
        config = SimConfig(num_instances=2, instances_per_host=instances_per_host)
        sim = Simulation(requests, get_policy("round-robin"), config, profile)
        sim.run()
        return [r.first_token_time - r.arrival_time + r.first_token_delay_s for r in sim.requests]

    base = first_tokens(2, ())
    shared = first_tokens(2, extra)
    assert shared[0] == pytest.approx(base[0])
    assert shared[1] == pytest.approx(base[1] + 0.030)
    assert first_tokens(1, extra) == pytest.approx(base)


def test_a_scaled_profile_is_a_slower_machine_with_the_same_capacity() -> None:
    profile = replace(
        PROFILE, request_overhead_ms=20.0, co_located_slowdown=0.3,
        co_located_first_token_ms=(0.0, 10.0),
    )  # fmt: skip
    slower = profile.scaled(1.5)
    assert slower.decode_ms(4, 1000) == pytest.approx(1.5 * profile.decode_ms(4, 1000))
    assert slower.prefill_ms(300) == pytest.approx(1.5 * profile.prefill_ms(300))
    assert slower.request_overhead_ms == pytest.approx(30.0)
    assert slower.first_token_extra_ms(2) == pytest.approx(15.0)
    # Capacity and the co-located slowdown (a ratio) do not depend on the machine's speed.
    assert (slower.num_total_blocks, slower.co_located_slowdown) == (800, 0.3)
    # In the simulator: a lone request's time per token and first token, 1.5x as long.
    lone = [RequestSpec("r0", 0.0, 300, 50)]
    base = run_policy(lone, Experiment(profile=profile), "round-robin", None)
    scaled = run_policy(lone, Experiment(profile=slower), "round-robin", None)
    for key in ("prefill_mean", "decode_mean", "request_mean"):
        assert scaled[key] == pytest.approx(1.5 * base[key]), key
    with pytest.raises(ProfileError, match="speed factor"):
        profile.scaled(0.0)


def test_profile_lists_take_numbers_only() -> None:
    profile = LatencyProfile.from_dict({"co_located_first_token_ms": [0, 12.5, 80]})
    assert profile.co_located_first_token_ms == (0.0, 12.5, 80.0)
    assert profile.first_token_extra_ms(2) == 12.5 and profile.first_token_extra_ms(5) == 80.0
    assert LatencyProfile().first_token_extra_ms(3) == 0.0
    for bad in (5.0, [1, "x"], [-1.0]):
        with pytest.raises(ProfileError, match="co_located_first_token_ms"):
            LatencyProfile.from_dict({"co_located_first_token_ms": bad})


def test_instances_per_host_must_be_positive() -> None:
    with pytest.raises(WorkloadError, match="instances_per_host"):
        experiment_from_dict({"cluster": {"instances_per_host": 0}}).config.validate()


def test_the_view_drops_requests_that_finished_since_the_last_report() -> None:
    # Reports never refresh after t=0. A (long) and B (large, short) start on the two
    # instances; C arrives after B finished. The controller saw B's stream end, so B's
    # instance is empty in its view and C goes there, not next to A.
    from llumctl.policy import get_policy
    from llumctl.sim.cluster import Simulation

    specs = [
        RequestSpec("a", 0.0, 32, 2000),
        RequestSpec("b", 0.01, 600, 2),
        RequestSpec("c", 3.0, 32, 2),
    ]
    config = SimConfig(num_instances=2, report_interval_s=100.0)
    sim = Simulation(specs, get_policy("llumnix"), config, PROFILE)
    sim.run()
    by_id = {r.request_id: r for r in sim.requests}
    assert by_id["a"].instance != by_id["b"].instance
    assert by_id["b"].finish_time is not None and by_id["b"].finish_time < 3.0
    assert by_id["c"].instance == by_id["b"].instance


def test_a_host_idle_long_runs_its_next_steps_slower_until_it_warms_up() -> None:
    # Steps of the paper's profile are ~33 ms; warm_up 100 ms: a cold host's extra 10 ms a
    # step has all but faded after the first few steps of a 100-token decode.
    cold = replace(
        PROFILE, cold_step_extra_ms=10.0, cold_first_token_ms=5.0, warm_up_ms=100.0,
        cool_down_ms=1000.0,
    )  # fmt: skip

    def first_tokens(arrivals: tuple[float, ...], profile: LatencyProfile) -> list[float]:
        from llumctl.policy import get_policy
        from llumctl.sim.cluster import Simulation

        requests = [RequestSpec(f"r{i}", t, 16, 100) for i, t in enumerate(arrivals)]
        config = SimConfig(num_instances=1)
        sim = Simulation(requests, get_policy("round-robin"), config, profile)
        sim.run()
        return [r.first_token_time - r.arrival_time + r.first_token_delay_s for r in sim.requests]

    warm = first_tokens((0.0, 3.4, 20.0), PROFILE)
    # Hosts start warm: the first request runs as profiled.
    got = first_tokens((0.0, 3.4, 20.0), cold)
    assert got[0] == pytest.approx(warm[0])
    # r1 arrives ~0.1 s after r0's decode ends: the host has barely cooled.
    assert warm[1] < got[1] < warm[1] + 0.0015 * 1.2
    # r2 after 16 s idle: its prefill step 10 ms longer, its first token 5 ms more on top,
    # whatever the prompt's length (a cost per step, not a factor).
    assert got[2] == pytest.approx(warm[2] + 0.015, rel=1e-3)
    # Over the whole decode the extra is the warm-up's integral: about 10 ms x 100 ms /
    # 33 ms a step, and the first token's 5 ms.
    lone = [RequestSpec("r", 5.0, 16, 100)]
    decode = run_policy(lone, Experiment(profile=cold), "round-robin", None)
    base = run_policy(lone, Experiment(profile=PROFILE), "round-robin", None)
    assert 0.03 < decode["request_mean"] - base["request_mean"] < 0.05
    # The time constants are the host's clock, not its steps: a scaled profile keeps them.
    slower = cold.scaled(2.0)
    assert (slower.warm_up_ms, slower.cool_down_ms) == (100.0, 1000.0)
    assert (slower.cold_step_extra_ms, slower.cold_first_token_ms) == (20.0, 10.0)


def test_an_instance_idle_beside_a_busy_neighbour_is_cold() -> None:
    # Warmth is each instance's: a neighbour decoding on the same host does not keep it
    # warm (measured here: an instance idle 3 s beside a busy one was as slow as on an
    # idle host).
    from llumctl.policy import get_policy
    from llumctl.sim.cluster import Simulation

    cold = replace(
        PROFILE, cold_step_extra_ms=10.0, cold_first_token_ms=5.0, warm_up_ms=100.0,
        cool_down_ms=1000.0,
    )  # fmt: skip

    def first_token_s(profile: LatencyProfile) -> float:
        # r0 decodes on instance 0 for minutes; r1 goes to instance 1, idle until then.
        requests = [RequestSpec("r0", 0.0, 16, 3000), RequestSpec("r1", 20.0, 16, 2)]
        config = SimConfig(num_instances=2, instances_per_host=2)
        sim = Simulation(requests, get_policy("round-robin"), config, profile)
        sim.run()
        r0, r1 = sim.requests
        assert r0.instance != r1.instance and r0.finish_time > r1.arrival_time
        return r1.first_token_time - r1.arrival_time + r1.first_token_delay_s

    # Its prefill step 10 ms longer, its first token 5 ms more on top.
    assert first_token_s(cold) == pytest.approx(first_token_s(PROFILE) + 0.015, rel=1e-3)
