"""Pure parts of bench/profile: fits, metric parsing, workload mapping, summaries."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llumctl.bench.records import BenchRequest, RequestRecord
from llumctl.bench.stats import percentile, summarize
from llumctl.bench.workload import fit_lengths, from_specs, log_line, to_specs
from llumctl.errors import InputError
from llumctl.profile.fit import (
    fit_co_located,
    fit_cold_first_token,
    fit_cool_down,
    fit_decode,
    fit_first_token_extra,
    fit_prefill,
    fit_second_token_extra,
    fit_warm_up,
    nonneg_lstsq,
    relative_error,
)
from llumctl.profile.measure import (
    ProfileSettings,
    fitting_decode_grid,
    kv_blocks,
    neighbour_tokens,
    probe_ttft_among_busy_ms,
)
from llumctl.profile.warming import WarmingPoints, WarmingSettings, fit_warming
from llumctl.sim.workload import WorkloadSpec, generate


def test_fits_recover_known_coefficients() -> None:
    prefill = [(n, 12 + 0.5 * n + 1e-4 * n * n) for n in (32, 128, 512, 1024)]
    assert fit_prefill(prefill) == pytest.approx((12, 0.5, 1e-4))
    decode = [(b, s, 20 + 0.3 * b + 0.002 * s) for b in (1, 4, 16) for s in (100, 3000)]
    assert fit_decode(decode) == pytest.approx((20, 0.3, 0.002))


def _cold_chunks_ms(extra_ms: float, warm_up_ms: float, jitter_ms: float = 0.0) -> list[float]:
    """Token arrivals of a 64-token request on a cold host, 2 ms steps, first at 15 ms."""
    times = [15.0]
    for k in range(63):
        step = 2.0 + extra_ms * math.exp(-(times[-1] + 1.0) / warm_up_ms)
        times.append(times[-1] + step + (jitter_ms if k % 7 == 3 else 0.0))
    return times


def test_warm_up_fit_recovers_the_step_extra_and_its_time_constant() -> None:
    # One request of three hit by scheduling hiccups: the per-token medians ignore it.
    chunks = [_cold_chunks_ms(1.2, 80.0), _cold_chunks_ms(1.2, 80.0), _cold_chunks_ms(1.2, 80.0, 9)]
    extra_ms, warm_up_ms = fit_warm_up(chunks, 2.0)
    assert extra_ms == pytest.approx(1.2, rel=0.05)
    assert warm_up_ms == pytest.approx(80.0, rel=0.06)
    # A host that is not slower when cold: nothing to model.
    assert fit_warm_up([_cold_chunks_ms(0.0, 80.0)] * 2, 2.0) == (0.0, 0.0)
    assert fit_warm_up([[15.0, 17.0]], 2.0) == (0.0, 0.0)  # one interval is no curve


def test_cool_down_fit_reads_the_time_constant_off_two_pauses() -> None:
    # Cooling with 1 s: a 1 s pause leaves (1 - e^-1) of the coldness a 3 s one does.
    short = 0.3 * (1 - math.exp(-1.0))
    long = 0.3 * (1 - math.exp(-3.0))
    assert fit_cool_down(short, long, 1000.0, 3000.0) == pytest.approx(1000.0, rel=0.05)
    assert fit_cool_down(0.1, 0.0, 1000.0, 3000.0) == 0.0  # the long pause showed nothing
    # A short pause as slow as the long one: the host cools (nearly) at once.
    assert fit_cool_down(0.3, 0.3, 1000.0, 3000.0) < 250.0
    # A short pause that showed next to nothing: cooling is slow, but the long pause was
    # taken for fully cold (it gave the extra), so at most a third of it.
    assert fit_cool_down(0.02, 1.0, 300.0, 3000.0) == pytest.approx(1000.0)


def test_cold_first_token_is_the_rise_beyond_the_cold_prefill_step() -> None:
    # Warm first tokens 11 ms, cold 18 ms, of which the prefill step's own cold extra 1.2.
    assert fit_cold_first_token([11.0, 10.0, 12.0], [18.0, 30.0, 17.0], 1.2) == pytest.approx(5.8)
    assert fit_cold_first_token([11.0], [11.2], 0.0) == 0.0  # under 3%: noise
    assert fit_cold_first_token([11.0], [12.0], 1.5) == 0.0  # the step explains it all
    assert fit_cold_first_token([], [18.0], 0.0) == 0.0


def test_warming_keys_from_the_probes_and_defaults_when_no_slowdown_shows() -> None:
    settings = WarmingSettings(rounds=2, short_gap_s=0.3, long_gap_s=3.0)
    cold = _cold_chunks_ms(1.2, 80.0)
    mean_cold = (cold[-1] - cold[0]) / 63
    short_gap = 2.0 + 0.3 * (mean_cold - 2.0)  # the short pause cooled the host by 30%
    points = WarmingPoints([2.0] * 2, [short_gap] * 2, [mean_cold] * 2, [cold] * 2, [9.0] * 2)
    keys = fit_warming(points, settings)
    assert keys["cold_step_extra_ms"] == pytest.approx(1.2, rel=0.05)
    assert keys["warm_up_ms"] == pytest.approx(80.0, rel=0.06)
    # exp(-300 / c) = 0.7 (relative to the 3 s pause's nearly full cooling): c ~ 0.85 s.
    assert 700.0 < keys["cool_down_ms"] < 1000.0
    # First token 15 ms cold against 9 warm: 6 ms, of which 1.2 the cold prefill step.
    assert keys["cold_first_token_ms"] == pytest.approx(6.0 - keys["cold_step_extra_ms"])
    flat = WarmingPoints(
        [2.0] * 2, [2.0] * 2, [2.0] * 2, [_cold_chunks_ms(0.0, 80.0)] * 2, [15.0] * 2
    )
    assert fit_warming(flat, settings) == {
        "cold_step_extra_ms": 0.0, "cold_first_token_ms": 0.0, "warm_up_ms": 100.0,
        "cool_down_ms": 1000.0,
    }  # fmt: skip


def test_second_token_extra_is_the_short_requests_rise_over_the_long_ones() -> None:
    # Step 2 ms, extra 0.9 ms: a 2-token request's TPOT 2.9, a 64-token one's 2 + 0.9/63.
    short = [2.8, 2.9, 3.5]
    long = [1.9, 2.0 + 0.9 / 63, 2.3]
    assert fit_second_token_extra(short, long, 64) == pytest.approx(0.9)
    # Short requests no slower than long ones: no extra, never a negative one.
    assert fit_second_token_extra([1.9], [2.0], 64) == 0.0
    assert fit_second_token_extra([], [2.0], 64) == 0.0


def test_first_token_extra_is_each_mean_above_the_lone_one() -> None:
    assert fit_first_token_extra([(2, 45.0), (1, 30.0), (3, 200.0)]) == (0.0, 15.0, 170.0)
    assert fit_first_token_extra([(1, 30.0), (2, 28.0)]) == (0.0, 0.0)  # never below 0
    assert fit_first_token_extra([(2, 45.0)]) == ()  # no lone probe to compare with


def test_co_located_slowdown_is_the_rise_per_busy_neighbour() -> None:
    assert fit_co_located([(1, 4.0), (2, 5.0), (3, 6.0)]) == pytest.approx(0.25)
    # Neighbours that do not slow a step (GPUs): zero, never negative.
    assert fit_co_located([(1, 4.0), (2, 3.9), (3, 4.0)]) == 0.0
    assert fit_co_located([(2, 5.0)]) == 0.0  # no k = 1 point to compare with


def test_negative_terms_are_dropped_not_written() -> None:
    # y falls with x2: the unconstrained fit would give x2 a negative coefficient.
    rows = [(1.0, 0.0), (1.0, 1.0), (1.0, 2.0)]
    coef = nonneg_lstsq(rows, [3.0, 2.5, 2.0])
    assert coef[1] == 0.0 and coef[0] == pytest.approx(2.5)


def test_relative_error() -> None:
    assert relative_error(1.1, 1.0) == pytest.approx(0.1)
    assert relative_error(0.0, 0.0) == 0.0 and math.isinf(relative_error(1.0, 0.0))


def test_speed_factor_is_the_real_probes_median_over_the_profiles() -> None:
    from bench.fidelity import speed_factor

    assert speed_factor([8.0, 12.0, 10.0], 5.0) == 2.0
    assert speed_factor([6.0, 7.0], 10.0) == pytest.approx(0.65)


def test_unstalled_keeps_each_timing_only_where_no_stall_of_the_client_overlaps_it() -> None:
    from bench.fidelity import RealRun, measured_unstalled

    def rec(index: int, sent: float, ttft: float, tpot: float, e2e: float) -> RequestRecord:
        return RequestRecord(index, sent, 10, 5, 5, 0, ttft, tpot, e2e)

    records = [
        rec(0, 0.0, 0.1, 0.01, 0.14),  # wait 0.0-0.1, decode 0.1-0.14: untouched
        rec(1, 1.0, 0.5, 0.02, 0.58),  # wait 1.0-1.5 holds the stall at 1.2
        rec(2, 2.0, 0.1, 0.30, 1.3),  # decode 2.1-3.3 holds the stall at 3.0
        rec(3, 3.4, 0.2, 0.04, 0.36),  # untouched (starts after the stall ends)
        RequestRecord(4, 0.0, 10, 5, 0, 0, -1.0, -1.0, -1.0, error="HTTP 500"),
    ]
    run = RealRun(records, stalls=[(1.2, 1.3), (3.0, 3.4)])
    got = measured_unstalled(run)
    assert (got["num_ttft"], got["num_tpot"]) == (3, 3)
    assert got["ttft_mean"] == pytest.approx((0.1 + 0.1 + 0.2) / 3)
    assert got["tpot_mean"] == pytest.approx((0.01 + 0.02 + 0.04) / 3)
    assert got["tpot_p99"] == pytest.approx(percentile([0.01, 0.02, 0.04], 99))
    assert got["stalled_s"] == pytest.approx(0.5)


def test_fidelity_compares_with_every_runs_requests_together() -> None:
    from bench.fidelity import RealRun, compare, measured, measured_unstalled_pooled

    def rec(index: int, ttft: float) -> RequestRecord:
        return RequestRecord(index, float(index), 10, 5, 5, 0, ttft, 0.01, ttft + 0.04)

    # Three runs of 100 requests; the slow requests fall unevenly between them.
    runs = [
        RealRun([rec(i, 0.9 if i < slow else 0.1) for i in range(100)], stalls=[])
        for slow in (3, 0, 1)
    ]
    each = [measured(run.records) for run in runs]
    pooled = measured([r for run in runs for r in run.records])
    result = compare(each, {**pooled, "ttft_p99": 0.9}, pooled)
    # A run's P99 sits between its second-slowest and slowest request: 0.9, 0.1 and
    # 0.108 s, median 0.108 s. Over the 300 requests together, the 4 slow ones hold the
    # 99th percentile's rank: 0.9 s.
    assert [m["ttft_p99"] for m in each] == pytest.approx([0.9, 0.1, 0.108])
    assert result["real"]["ttft_p99"] == pytest.approx(0.9)
    assert result["relative_error"]["ttft_p99"] == pytest.approx(0.0)
    # The spread says how far the runs lie from the pooled figure.
    assert result["real_spread"]["ttft_p99"] == pytest.approx(0.8 / 0.9)
    assert result["met"]
    # The unstalled diagnostic pools the same way (no stalls here: every request kept).
    assert measured_unstalled_pooled(runs) == pytest.approx(pooled)


def test_kv_blocks_from_vllm_metrics() -> None:
    text = (
        "# HELP vllm:cache_config_info x\n"
        'vllm:cache_config_info{block_size="32",cache_dtype="auto",num_gpu_blocks="64"} 1.0\n'
    )
    assert kv_blocks(text) == (64, 32)
    with pytest.raises(InputError, match="no vllm:cache_config_info"):
        kv_blocks("llumctl_instance_running 1\n")


def test_decode_points_are_cut_to_what_the_kv_cache_holds_at_once() -> None:
    grid = [(b, n) for b in (1, 4, 8, 16) for n in (64, 512)]
    # The suite's engines: 40 blocks of 32 tokens, 32 tokens decoded per request.
    fitted = fitting_decode_grid(grid, num_blocks=40, block_size=32, out_tokens=32, limit=991)
    for batch, prompt in fitted:
        blocks_each = math.ceil((prompt + 32) / 32)
        assert batch * blocks_each <= 40 - 1, (batch, prompt)
    # Points that fit are kept as asked; the prompt gives way before the batch does.
    assert (1, 512) in fitted and (4, 64) in fitted and (8, 64) in fitted
    assert (4, 256) in fitted and (16, 32) in fitted
    assert len(fitted) == len(set(fitted)) == 7
    # A cache too small for even a block of prompt per request cuts the batch.
    assert fitting_decode_grid([(8, 64)], 10, 32, 32, 991) == [(4, 32)]
    # And the engine's context limit still caps the prompt.
    assert fitting_decode_grid([(1, 512)], 1000, 32, 32, 300) == [(1, 300)]


def test_a_first_token_probe_counts_only_while_its_neighbours_decode() -> None:
    def record(arrival_s: float, ttft_s: float, e2e_s: float) -> RequestRecord:
        return RequestRecord(0, arrival_s, 32, 2, 2, 0, ttft_s, 0.001, e2e_s)

    probe = record(0.5, 0.012, 0.014)
    # Neighbours sent at 0 and decoding until 1.1 s: the probe met them busy.
    assert probe_ttft_among_busy_ms([record(0, 0.01, 1.1), record(0, 0.01, 1.1), probe]) == (
        pytest.approx(12.0)
    )
    # One neighbour done at 0.4 s, before the probe was even sent: not a k = 3 sample.
    assert math.isnan(probe_ttft_among_busy_ms([record(0, 0.01, 1.1), record(0, 0.01, 0.4), probe]))
    # Alone (k = 1) there is nothing to miss.
    assert probe_ttft_among_busy_ms([probe]) == pytest.approx(12.0)


def test_busy_neighbours_outlast_the_probe_at_the_measured_speed() -> None:
    quick = ProfileSettings("", quick=True)
    # 1.4 ms a token alone (the tiny model here): 3 x 0.5 s of decoding, over 256 tokens.
    assert neighbour_tokens(quick, 1.4, 0) == 1072
    # Within the context: prompt (32) plus output fit a 1024-token model.
    assert neighbour_tokens(quick, 1.4, 1024) == 1024 - 32 - 1
    # A slow engine still gets 16 x decode_tokens (256 quick, 512 full).
    assert neighbour_tokens(quick, 40.0, 0) == 256
    assert neighbour_tokens(ProfileSettings(""), 40.0, 4096) == 512


def test_workload_maps_both_ways_and_caps_lengths() -> None:
    specs = generate(WorkloadSpec(num_requests=50, rate=5.0, input="L", output="L", seed=2))
    requests = from_specs(specs)
    assert requests[0].arrival_s == 0.0
    capped = fit_lengths(requests, max_prompt=512, max_total=1023)
    assert all(r.num_prompt_tokens <= 512 for r in capped)
    assert all(r.num_prompt_tokens + r.num_output_tokens <= 1023 for r in capped)
    assert [r.arrival_s for r in capped] == [r.arrival_s for r in requests]
    back = to_specs(capped)
    assert [(s.prompt_tokens, s.output_tokens) for s in back] == [
        (r.num_prompt_tokens, r.num_output_tokens) for r in capped
    ]


def _record(i: int, ttft: float, error: str = "") -> RequestRecord:
    return RequestRecord(
        i, 0.0, 10, 5, 5 if not error else 0, 0, ttft, 0.01, ttft + 0.04, "", error
    )


def test_summary_counts_errors_and_excludes_them_from_latency() -> None:
    records = [_record(0, 0.1), _record(1, 0.3), _record(2, -1.0, "HTTP 400: bad")]
    summary = summarize(records, duration_s=2.0)
    assert summary["requests"] == 3 and summary["errors"] == 1
    assert summary["ttft_p50"] == pytest.approx(0.2)
    assert summary["throughput_rps"] == pytest.approx(1.0)
    assert summary["output_tokens_per_s"] == pytest.approx(5.0)
    assert math.isnan(percentile([], 50))


def test_log_line_is_a_trace_line_with_measurements() -> None:
    line = log_line(_record(7, -1.0, "boom"), scheduled_arrival_s=1.25)
    assert line["request_id"] == "r7" and line["arrival_time"] == 1.25
    assert line["ttft_s"] is None and line["error"] == "boom"
    assert BenchRequest(0.0, 1, 1).priority == 0


def test_side_by_side_rows_are_medians_of_the_runs_with_counts_summed() -> None:
    from bench.side_by_side import combine

    runs = [
        {"ttft_p99": 3.0, "preemptions": 4, "errors": 0, "migration_attempts": {"committed:x": 1}},
        {"ttft_p99": 1.0, "preemptions": 9, "errors": 2, "migration_attempts": {"aborted:y": 1}},
        {"ttft_p99": 2.0, "preemptions": 5, "errors": 1, "migration_attempts": {"committed:x": 2}},
    ]
    row = combine(runs)
    assert row["ttft_p99"] == 2.0 and row["preemptions"] == 5  # medians
    assert row["errors"] == 3  # every failed request counts
    assert row["migration_attempts"] == {"committed:x": 3, "aborted:y": 1}
    assert row["runs"] == runs


def test_side_by_side_percentiles_pool_every_request_of_the_runs() -> None:
    from bench.side_by_side import combine

    # 3 of the 200 requests (1.5%) took 5 s, all in one run: the P99 over both runs is
    # 5 s, where the median of the two runs' own P99s would say 2.6 s.
    fast = {"ttft": [0.1] * 97 + [5.0] * 3, "tpot": [0.01] * 100}
    slow = {"ttft": [0.1] * 99 + [0.2], "tpot": [0.01] * 99 + [0.5]}
    runs = [
        {"ttft_p99": 5.0, "ttft_p50": 0.1, "errors": 0, "latencies": fast},
        {"ttft_p99": 0.2, "ttft_p50": 0.1, "errors": 1, "latencies": slow},
    ]
    row = combine(runs)
    assert row["ttft_p99"] == 5.0
    assert row["ttft_p50"] == 0.1 and row["requests_pooled"] == 200
    assert row["tpot_p99"] == 0.01 and row["errors"] == 1
    assert row["ttft_mean"] == round((0.1 * 196 + 15.0 + 0.2) / 200, 4)
    # The runs keep their own percentiles, not their latencies (kept out of the results).
    assert [r["ttft_p99"] for r in row["runs"]] == [5.0, 0.2]
    assert not any("latencies" in r for r in row["runs"])
    assert "latencies" in runs[0]  # the caller's runs are left as they were


def test_cluster_state_samples_say_whether_queues_formed() -> None:
    from bench.common.cluster_state import summarize_samples
    from bench.side_by_side import combine

    # (running, queued, KV blocks used) per instance, per sample.
    quiet = summarize_samples([[(1, 0, 8), (0, 0, 0)], [(2, 0, 28), (1, 0, 5)]])
    assert quiet == {"state_samples": 2, "queued_samples": 0, "max_queued": 0, "kv_peak_blocks": 28}
    busy = summarize_samples([[(3, 0, 39), (1, 2, 40)], [(3, 1, 40), (0, 0, 0)], [(1, 0, 9)]])
    assert busy == {"state_samples": 3, "queued_samples": 2, "max_queued": 2, "kv_peak_blocks": 40}
    assert summarize_samples([])["queued_samples"] == 0
    # Over runs: samples add up, peaks are the largest.
    row = combine([{"ttft_p99": 1.0, **quiet}, {"ttft_p99": 2.0, **busy}])
    assert (row["state_samples"], row["queued_samples"]) == (5, 2)
    assert (row["max_queued"], row["kv_peak_blocks"]) == (2, 40)


def test_cpu_by_role_is_the_rise_per_role_and_new_processes_count_from_zero() -> None:
    from bench.common.cpu import used_between
    from bench.side_by_side import combine

    before = {"procs": {10: ("engine", 5.0), 11: ("controller", 1.0)}, "busy": 100.0, "steal": 1}
    after = {
        "procs": {10: ("engine", 9.5), 11: ("controller", 1.5), 12: ("engine", 2.0)},
        "busy": 112.0,
        "steal": 1.5,
    }
    used = used_between(before, after)
    assert used == {"busy": 12.0, "controller": 0.5, "engine": 6.5, "steal": 0.5}
    # A reused PID under another role is a new process: it counts from zero.
    reused = {**after, "procs": {11: ("router", 0.75)}}
    assert used_between(before, reused)["router"] == 0.75
    row = combine([{"cpu_s": used}, {"cpu_s": {"engine": 8.5, "busy": 10.0}}])
    assert row["cpu_s"] == {"busy": 11.0, "controller": 0.25, "engine": 7.5, "steal": 0.25}


def test_cpu_snapshot_names_this_process_the_client() -> None:
    import os

    from bench.common.cpu import snapshot

    role, seconds = snapshot()["procs"][os.getpid()]
    assert role == "client" and seconds > 0


def test_added_latency_is_each_phase_against_its_own_direct_path() -> None:
    from bench.overhead import added, report

    def medians(ttft: float, tpot: float) -> dict[str, float]:
        return {"ttft_median": ttft, "tpot_median": tpot}

    stack = {
        "low": medians(0.022, 0.0052),
        "low_direct": medians(0.020, 0.005),
        "saturated": medians(0.4, 0.011),
        "saturated_direct": medians(0.5, 0.010),
    }
    got = added(stack)
    assert got["low"]["added_ttft_s"] == pytest.approx(0.002)
    assert got["low"]["added_tpot_s"] == pytest.approx(0.0002)
    # A stack can come out faster than its engines at saturation (noise, or spreading).
    assert got["saturated"]["added_ttft_s"] == pytest.approx(-0.1)
    assert got["saturated"]["added_tpot_s"] == pytest.approx(0.001)
    # The verdict: within 2x the router's added latency, or 1 ms when the router's is ~0.
    ours = {**stack, "saturated": {**medians(0.4, 0.012), "output_tokens_per_s": 700.0}}
    router = {
        **stack,
        "low": medians(0.0215, 0.005),
        "saturated": medians(0.45, 0.0104),
    }
    assert report(ours, router)["verdict"] == {
        "checks": {
            "low.added_ttft_s": True,  # 2 ms against 2 x 1.5 ms
            "low.added_tpot_s": True,  # 0.2 ms against the 1 ms floor (router: 0)
            "saturated.added_ttft_s": True,  # -100 ms: faster than its engines
            "saturated.added_tpot_s": False,  # 2 ms against the floor (2 x 0.4 ms < 1 ms)
        },
        "met": False,
    }


def _recording_probe(calls: list[tuple[str, tuple[int, ...]]]):
    """A probe factory: each probe records (its name, the prompt) and answers a fixed TTFT
    and 1 ms per output token."""

    def recording(name: str, ttft: float):
        async def probe(client, prompt: list[int], out: int) -> tuple[float, float]:
            calls.append((name, tuple(prompt)))
            return ttft, 0.001 * out

        return probe

    return recording


def test_saturated_pair_spreads_the_direct_burst_over_the_engines_in_turns() -> None:
    # The stack's burst and the same burst spread over its engines directly take turns,
    # every request with a prompt of its own; each path reports the median of its bursts.
    import asyncio

    from bench.overhead import OverheadConfig, saturated_pair

    calls: list[tuple[str, tuple[int, ...]]] = []
    recording = _recording_probe(calls)

    cfg = OverheadConfig(
        burst_per_instance=2,
        prompt_tokens=8,
        output_tokens=3,
        saturated_bursts=2,
        burst_pause_s=0.0,
    )
    directs = [recording(f"e{i}", 0.01 * (i + 1)) for i in range(3)]
    got = asyncio.run(saturated_pair(recording("stack", 0.05), directs, cfg, seed=3))
    names = [name for name, _ in calls]
    # Round 0: stack then direct; round 1: direct then stack (6 requests a burst).
    assert names[:6] == ["stack"] * 6 and names[18:] == ["stack"] * 6
    assert sorted(names[6:12]) == sorted(names[12:18]) == ["e0", "e0", "e1", "e1", "e2", "e2"]
    prompts = [p for _, p in calls]
    assert len(set(prompts)) == len(prompts) == 24
    assert len(got["stack"]["bursts"]) == len(got["direct"]["bursts"]) == 2
    assert got["stack"]["ttft_median"] == pytest.approx(0.05)
    assert got["direct"]["ttft_median"] == pytest.approx(0.02)  # median of 10, 20, 30 ms
    assert got["direct"]["tpot_median"] == pytest.approx(0.003)
    assert got["stack"]["errors"] == got["direct"]["errors"] == 0


def test_a_failed_request_in_a_burst_is_counted_not_fatal() -> None:
    import asyncio

    from bench.overhead import OverheadConfig, saturated_pair

    async def ok(client, prompt: list[int], out: int) -> tuple[float, float]:
        return 0.02, 0.004

    async def broken(client, prompt: list[int], out: int) -> tuple[float, float]:
        raise RuntimeError("a probe got 0 arrivals")

    cfg = OverheadConfig(burst_per_instance=2, saturated_bursts=1, burst_pause_s=0.0)
    got = asyncio.run(saturated_pair(ok, [ok, broken], cfg, seed=1))
    assert got["direct"]["errors"] == 2 and got["stack"]["errors"] == 0
    assert got["direct"]["ttft_median"] == pytest.approx(0.02)


def test_overhead_probe_counts_chunks_whose_token_has_no_text() -> None:
    # A token ending inside a multi-byte character streams as text "": it is still a
    # token arrival; a chunk without choices (usage) is not.
    import json

    from bench.overhead import is_token_chunk, ttft_tpot

    def chunk(choices: list[dict]) -> str:
        return json.dumps({"id": "c", "choices": choices})

    assert is_token_chunk(chunk([{"index": 0, "text": ""}]))
    assert is_token_chunk(chunk([{"index": 0, "text": "a", "finish_reason": "length"}]))
    assert not is_token_chunk(chunk([]))
    assert not is_token_chunk(chunk([{"index": 0, "delta": {"content": "a"}}]))
    # Four tokens asked for: the span over the three after the first, however many
    # arrivals carried them (a closing chunk adds one at the end).
    ttft, tpot = ttft_tpot(10.0, [10.5, 10.6, 10.8, 11.1], 4)
    assert (round(ttft, 6), round(tpot, 6)) == (0.5, 0.2)
    with pytest.raises(RuntimeError):
        ttft_tpot(10.0, [10.5], 4)


def test_low_load_pair_gives_every_request_its_own_prompt_and_swaps_the_order() -> None:
    # One prompt sent to both paths in turn let the second find it in the engine's prefix
    # cache (no prefill), which once made llumctl's hop look ~2.5 ms dearer than it was.
    import asyncio

    from bench.overhead import OverheadConfig, low_load_pair

    calls: list[tuple[str, tuple[int, ...]]] = []
    recording = _recording_probe(calls)

    cfg = OverheadConfig(low_requests=4, low_spacing_s=0.0, prompt_tokens=8, output_tokens=3)
    pair = asyncio.run(low_load_pair(recording("stack", 0.02), recording("direct", 0.01), cfg, 7))
    assert [name for name, _ in calls] == ["stack", "direct", "direct", "stack"] * 2
    prompts = [p for _, p in calls]
    assert len(set(prompts)) == len(prompts) == 8 and all(len(p) == 8 for p in prompts)
    assert pair["stack"]["ttft_median"] == 0.02 and pair["direct"]["ttft_median"] == 0.01
    assert pair["direct"]["tpot_median"] == pytest.approx(0.003)


def test_the_report_gives_each_stack_its_cpu_by_role_and_the_hypervisors_steal():
    from bench.report import _cpu_line

    cpu = {"busy": 87.3, "engine": 68.1, "instance": 10.7, "controller": 3.4, "agent": 0.3}
    line = _cpu_line("llumctl-llumnix", {**cpu, "client": 4.5, "steal": 6.04})
    assert line == (
        "`llumctl-llumnix` busy 87: engines 68, servers 10.7, front 3.7, client 4.5, steal 6.0"
    )
    # Results from before the steal counter say nothing about it.
    assert "steal" not in _cpu_line("vllm-router-round_robin", {"router": 1.1})
    # The stack waiting its turn idles meanwhile: its CPU is shown apart, not as this
    # stack's front end or servers.
    idle = {"router": 1.1, "vllm-server": 2.0, "controller": 0.4, "agent": 0.2, "instance": 0.3}
    line = _cpu_line("vllm-router-cache_aware", {**idle, "busy": 50.0, "engine": 40.0})
    assert line == (
        "`vllm-router-cache_aware` busy 50: engines 40, servers 2.0, front 1.1, client 0.0, "
        "other stack idle 0.9"
    )


def test_side_by_side_stacks_take_turns_and_the_first_alternates_by_round(monkeypatch):
    from bench import side_by_side

    calls: list[tuple[str, int]] = []

    def fake_run(stack: str):
        def run(target, policy, workload, extra, seed):
            calls.append((f"{stack}-{policy}", seed))
            return {"ttft_p99": float(seed), "errors": 0}

        return run

    monkeypatch.setattr(side_by_side, "_llumctl_run", fake_run("llumctl"))
    monkeypatch.setattr(side_by_side, "_router_run", fake_run("vllm-router"))
    cfg = side_by_side.SideBySideConfig(requests=4, reps=3, seed=1)
    results = side_by_side.run_rounds(cfg, Path("."), cluster=object(), servers=[])
    llumctl = ["llumctl-llumnix", "llumctl-infaas++"]
    router = [f"vllm-router-{p}" for p in side_by_side.ROUTER_POLICIES]
    assert [name for name, _ in calls] == llumctl + router + router + llumctl + llumctl + router
    # Every run has its own seed (its own prompt ids), the same one whatever the order.
    seeds = [seed for _, seed in calls]
    assert len(set(seeds)) == len(seeds)
    assert dict(calls[:2]) == {"llumctl-llumnix": 100, "llumctl-infaas++": 101}
    assert results["vllm-router-round_robin"]["ttft_p99"] == 130.0  # median of 110, 130, 150
    # One stack alone runs its policies in every round.
    calls.clear()
    side_by_side.run_rounds(cfg, Path("."), servers=[])
    assert [name for name, _ in calls] == router * 3
    # Any llumctl policies, e.g. round-robin beside llumnix: the same path without
    # load-aware dispatch.
    calls.clear()
    side_by_side.run_rounds(cfg, Path("."), cluster=object(), llumctl_policies=("round-robin",))
    assert [name for name, _ in calls] == ["llumctl-round-robin"] * 3
