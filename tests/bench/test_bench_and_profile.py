"""`llumctl bench` and `llumctl profile` against a real vLLM OpenAI server (structure and
consistency, never timing)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from llumctl.sim.profile import LatencyProfile
from llumctl.sim.workload import parse_trace
from tests.bench.bench_server import BLOCK_SIZE, MAX_MODEL_LEN, NUM_BLOCKS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.vllm


def llumctl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "llumctl.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_bench_json_summary_and_replayable_log(openai_server, tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    out = llumctl(
        "bench", "--url", openai_server.url, "--requests", "6", "--rate", "20",
        "--input", "S", "--output", "12", "--seed", "3", "--json", "--log", str(log),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    summary = result["summary"]
    assert result["model"] == "tiny"
    assert summary["requests"] == 6 and summary["errors"] == 0
    assert summary["ttft_p50"] <= summary["ttft_p99"] <= summary["e2e_p99"]
    assert summary["output_tokens_per_s"] > 0

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 6
    for line in lines:
        assert line["error"] is None
        # ignore_eos: the server produced exactly what was asked for.
        assert line["received_tokens"] == line["output_tokens"] == 12
        assert 0 < line["ttft_s"] <= line["e2e_s"]
        assert line["tpot_s"] > 0
    # The log is a simulator trace: same requests, same order, same lengths.
    replay = parse_trace(log.read_text().splitlines())
    assert [r.prompt_tokens for r in replay] == [line["prompt_tokens"] for line in lines]
    assert [r.arrival_time for r in replay] == sorted(line["arrival_time"] for line in lines)


def test_bench_replays_a_trace_and_prints_a_table(openai_server, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    rows = [
        {"arrival_time": 0.0, "prompt_tokens": 40, "output_tokens": 5},
        {"arrival_time": 0.1, "prompt_tokens": 70, "output_tokens": 3, "priority": "high"},
        {"arrival_time": 0.2, "prompt_tokens": 10, "output_tokens": 4},
    ]
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    log = tmp_path / "log.jsonl"
    out = llumctl("bench", "--url", openai_server.url, "--trace", str(trace), "--log", str(log))
    assert out.returncode == 0, out.stderr
    assert "TTFT" in out.stdout and "requests / errors" in out.stdout
    assert "3 / 0" in out.stdout
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["prompt_tokens"], x["received_tokens"]) for x in logged] == [
        (40, 5),
        (70, 3),
        (10, 4),
    ]
    assert [x["priority"] for x in logged] == ["normal", "high", "normal"]


def test_bench_counts_rejected_requests_as_errors(openai_server, tmp_path: Path) -> None:
    # 2,000 prompt tokens exceed the server's max_model_len (1,024): every request fails
    # with the server's 400, which the summary reports and the exit code flags.
    trace = tmp_path / "too-long.jsonl"
    trace.write_text(json.dumps({"arrival_time": 0, "prompt_tokens": 2000, "output_tokens": 4}))
    out = llumctl("bench", "--url", openai_server.url, "--trace", str(trace), "--json")
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["summary"]["errors"] == 1
    assert "HTTP 400" in result["errors"][0]


def test_profile_writes_a_simulator_profile(openai_server, tmp_path: Path) -> None:
    out_file = tmp_path / "measured.toml"
    out = llumctl(
        "profile", "--url", openai_server.url, "--out", str(out_file), "--quick",
        "--name", "tiny-cpu", "--dtype", "float32", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # The file is in the simulator's format: LatencyProfile reads it unchanged.
    data = tomllib.loads(out_file.read_text())
    profile = LatencyProfile.from_dict(data)
    assert profile.name == "tiny-cpu"
    # Capacity facts come from the engine itself (the server's flags in conftest).
    assert profile.num_total_blocks == NUM_BLOCKS
    assert profile.block_size_tokens == BLOCK_SIZE
    assert profile.max_model_len == MAX_MODEL_LEN
    # tiny: 2 layers x 2 KV heads x head_dim 64, K and V, float32.
    assert profile.kv_bytes_per_token == 2 * 2 * 2 * 64 * 4
    # Every point was measured and the fit reproduces a positive step time from them.
    assert len(result["prefill_points_ms"]) == 3 and len(result["decode_points_ms"]) == 3
    assert all(ms > 0 for _, ms in result["prefill_points_ms"])
    assert profile.decode_ms(4, 1000) > 0 and profile.prefill_ms(256) > 0
    assert result["transfer_gbps"] > 0
    assert data == {k: v for k, v in result["profile"].items()} | {"name": "tiny-cpu"}
    # The speed probe, taken at the start and at the end (2 rounds each when quick).
    probes = result["speed_probe_points_ms"]
    assert len(probes) == 4 and all(ms > 0 for ms in probes)
    assert min(probes) <= result["speed_probe_ms"] <= max(probes)
    assert f"# Speed probe: {result['speed_probe_ms']:.2f} ms per token" in out_file.read_text()
    # Lone 2-token requests beside each probe set; their rise is the second token's extra.
    assert len(result["second_token_points_ms"]) == 4
    assert profile.second_token_extra_ms >= 0.0
    # Warming: per round a warm probe and one after each of two pauses (2 rounds, quick).
    warming = result["warming_points_ms"]
    assert warming["gaps_s"] == [0.3, 2.0]
    for key in ("warm_tpot_ms", "short_gap_tpot_ms", "long_gap_tpot_ms"):
        assert len(warming[key]) == 2 and all(ms > 0 for ms in warming[key]), key
    assert profile.cold_step_extra_ms >= 0.0 and profile.cold_first_token_ms >= 0.0
    assert len(warming["warm_ttft_ms"]) == 2 and len(warming["long_gap_ttft_ms"]) == 2
    assert profile.warm_up_ms > 0 and profile.cool_down_ms > 0


def test_profile_co_located_points_go_into_the_profile(openai_server, tmp_path: Path) -> None:
    # The plumbing only: one server batches the "co-located" pair instead of spreading it
    # (tests/controller/test_vllm_cluster.py measures through a controller that spreads).
    out_file = tmp_path / "measured.toml"
    out = llumctl(
        "profile", "--url", openai_server.url, "--out", str(out_file), "--quick",
        "--co-located", "2", "--co-located-url", openai_server.url, "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [k for k, _ in result["co_located_points_ms"]] == [1, 2]
    text = out_file.read_text()
    assert "[cluster] instances_per_host = 2" in text
    written = LatencyProfile.from_dict(tomllib.loads(text))
    assert written.co_located_slowdown == result["profile"]["co_located_slowdown"] >= 0.0
    assert [k for k, _ in result["co_located_first_token_points_ms"]] == [1, 2]
    extra = list(written.co_located_first_token_ms)
    assert extra == result["profile"]["co_located_first_token_ms"]
    assert len(extra) == 2 and extra[0] == 0.0 and extra[1] >= 0.0


def test_profile_takes_kv_facts_given_for_an_endpoint_that_hides_them(
    openai_server, tmp_path: Path
) -> None:
    # An endpoint may hide vLLM's /metrics and max_model_len (a llumctl controller has no
    # /metrics): the operator says them; given values win over what the engine reports.
    out_file = tmp_path / "given.json"
    half = llumctl(
        "profile", "--url", openai_server.url, "--out", str(out_file), "--kv-blocks", "7"
    )
    assert half.returncode == 2
    assert "--kv-blocks and --block-size go together" in half.stderr
    out = llumctl(
        "profile", "--url", openai_server.url, "--out", str(out_file), "--quick",
        "--kv-blocks", "7", "--block-size", "64", "--max-model-len", "900", "--dtype", "float32",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    profile = LatencyProfile.from_dict(json.loads(out_file.read_text()))
    assert (profile.num_total_blocks, profile.block_size_tokens) == (7, 64)
    assert profile.max_model_len == 900 != MAX_MODEL_LEN


def test_profile_json_file_and_unknown_model(openai_server, tmp_path: Path) -> None:
    out = llumctl(
        "profile", "--url", openai_server.url, "--out", str(tmp_path / "p.json"),
        "--model", "no-such-model",
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {openai_server.url} does not serve 'no-such-model'"
    assert not (tmp_path / "p.json").exists()


def test_bench_gives_a_plain_server_the_priorities_of_a_llumctl_instance(openai_server) -> None:
    # The side-by-side compares stacks whose engines run at the same CPU priority: the
    # agent's engine steps run at nice 10 on shared cores, and the bench sets the same on
    # a plain vLLM server's engine-core main thread (its API process keeps 0); each
    # instance's group is at nice 10, and so is each plain server's.
    from types import SimpleNamespace

    from bench.common.engines import _descendants, lower_engine_priority

    lower_engine_priority(SimpleNamespace(pid=openai_server.pid))  # type: ignore[arg-type]
    titles = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in _descendants(openai_server.pid)}
    cores = [p for p, t in titles.items() if t.startswith(b"VLLM::EngineCore")]
    assert len(cores) == 1, titles
    assert os.getpriority(os.PRIO_PROCESS, cores[0]) == 10
    assert os.getpriority(os.PRIO_PROCESS, openai_server.pid) == 0
    # And the server's process group as a whole, as a llumctl instance does its own.
    group = Path(f"/proc/{openai_server.pid}/autogroup").read_text().split()
    assert group[1:] == ["nice", "10"], group


def test_overhead_probes_alternate_a_stack_with_its_engine(openai_server, vllm_instances) -> None:
    # The suite's low-load overhead: an OpenAI endpoint and a llumctl instance's own API,
    # one request at a time in turn; both give first-token and per-token times.
    import asyncio

    from bench.overhead import OverheadConfig, instance_probe, low_load_pair, openai_probe

    cfg = OverheadConfig(
        low_requests=2,
        low_spacing_s=0.0,
        prompt_tokens=16,
        output_tokens=4,
        burst_per_instance=3,
        saturated_bursts=2,
        burst_pause_s=0.0,
    )
    inst = vllm_instances[0]
    stack = openai_probe(openai_server.url.removesuffix("/v1"))
    pair = asyncio.run(low_load_pair(stack, instance_probe(inst.url, inst.secret), cfg, seed=1))
    for side in ("stack", "direct"):
        assert pair[side]["ttft_median"] > 0 and pair[side]["tpot_median"] > 0
    # Through `measure`, as the suite calls it: the stack against its engine directly,
    # one request at a time and in bursts, each burst kept.
    from bench.overhead import measure

    out = measure(openai_server.url.removesuffix("/v1"), cfg, [stack], seed=2)
    assert set(out) == {"low", "low_direct", "saturated", "saturated_direct"}
    assert out["low"]["ttft_median"] > 0 and out["low_direct"]["ttft_median"] > 0
    for path in ("saturated", "saturated_direct"):
        bursts = out[path]["bursts"]
        assert len(bursts) == 2 and all(b["errors"] == 0 for b in bursts)
        tpots = sorted(b["tpot_median"] for b in bursts)
        assert out[path]["tpot_median"] == pytest.approx(sum(tpots) / 2)
        assert out[path]["output_tokens_per_s"] > 0


def _prefix_cache_hit_tokens(url: str) -> float:
    import httpx

    metrics = httpx.get(f"{url.removesuffix('/v1')}/metrics", timeout=10).text
    lines = [ln for ln in metrics.splitlines() if ln.startswith("vllm:prefix_cache_hits_total")]
    assert lines, "the engine reports no prefix cache hits metric"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def test_fidelity_runs_are_probed_around_and_never_share_prompts(openai_server) -> None:
    from bench.fidelity import SPEED_PROBE_ROUNDS, FidelityConfig, real_runs, speed_factor

    # Prompts of at least one KV block (32 tokens): a repeated one would hit the cache.
    cfg = FidelityConfig(requests=3, rate=20.0, seed=8, max_prompt=96, max_output=8)
    assert all(r.num_prompt_tokens >= 32 for r in cfg.workload())
    hits = _prefix_cache_hit_tokens(openai_server.url)
    runs, probes = real_runs(openai_server.url.removesuffix("/v1"), cfg, runs=2)
    assert [len(run.records) for run in runs] == [3, 3]
    assert all(r.is_ok for run in runs for r in run.records)
    assert all(isinstance(run.stalls, list) for run in runs)
    # Each run has its own prompt ids, and so has every probe: nothing came from the cache.
    assert _prefix_cache_hit_tokens(openai_server.url) == hits
    assert len(probes) == 3 * SPEED_PROBE_ROUNDS and all(ms > 0 for ms in probes)
    assert speed_factor(probes, 2 * statistics.median(probes)) == pytest.approx(0.5)


def test_records_send_times_count_from_the_runs_recorded_start(openai_server) -> None:
    # The fidelity bench puts the client's stalls (perf_counter) on the records' clock
    # through `run_started_at`.
    import asyncio
    import time

    from llumctl.bench.loadgen import LoadGenerator
    from llumctl.bench.records import BenchRequest

    gen = LoadGenerator(openai_server.url, "tiny", seed=77)
    before = time.perf_counter()
    records, _ = asyncio.run(gen.run([BenchRequest(0.0, 8, 2), BenchRequest(0.3, 8, 2)]))
    after = time.perf_counter()
    assert all(r.is_ok for r in records)
    sent = [gen.run_started_at + r.arrival_s for r in records]
    assert before <= sent[0] < sent[1] <= after
    assert sent[1] - sent[0] >= 0.3
