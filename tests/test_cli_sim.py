"""`llumctl sim` end to end through the real console script (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["--requests", "150", "--rate", "4", "--instances", "4", "--input", "M", "--output", "M"]


def llumctl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llumctl.cli.main", "sim", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_json_contract_and_same_seed_gives_identical_bytes() -> None:
    args = [*SMALL, "--policy", "llumnix", "--policy", "round-robin", "--seed", "7", "--json"]
    first, second = llumctl(*args), llumctl(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    result = json.loads(first.stdout)
    assert result["simulated"] is True
    assert result["workload"]["num_requests"] == 150 and result["workload"]["instances"] == 4
    assert list(result["results"]) == ["llumnix", "round-robin"]
    metrics = result["results"]["llumnix"]
    keys = (
        "prefill_mean prefill_p50 prefill_p99 decode_mean decode_p99 request_mean "
        "request_p99 preemption_loss"
    ).split()
    for key in [*keys, "migrations", "avg_instances", "fragmentation"]:
        assert isinstance(metrics[key], int | float), key
    assert set(keys) <= set(metrics["high"])
    assert metrics["prefill_p99"] >= metrics["prefill_p50"] > 0
    other = llumctl(*[a if a != "7" else "8" for a in args])
    assert other.stdout != first.stdout


def test_table_output_names_the_simulation_and_ratios() -> None:
    done = llumctl(*SMALL, "--policy", "infaas++", "--policy", "round-robin")
    assert done.returncode == 0, done.stderr
    assert "SIMULATED" in done.stdout and "infaas++" in done.stdout and "x)" in done.stdout


def test_workload_file_with_flag_override(tmp_path: Path) -> None:
    wl = tmp_path / "w.toml"
    wl.write_text(
        '[workload]\nrequests = 40\nrate = 2.0\ninput = "S"\noutput = 32\n'
        '[cluster]\ninstances = 2\npolicies = ["llumnix-base"]\n'
    )
    done = llumctl(str(wl), "--requests", "30", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["workload"]["num_requests"] == 30 and result["workload"]["instances"] == 2
    assert list(result["results"]) == ["llumnix-base"]


def test_trace_replay(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    lines = [
        json.dumps({"arrival_time": k * 0.1, "prompt_tokens": 50, "output_tokens": 10})
        for k in range(20)
    ]
    trace.write_text("\n".join(lines) + "\n")
    done = llumctl("--trace", str(trace), "--instances", "2", "--policy", "llumnix", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"]["llumnix"]["num_requests"] == 20


def _bad_trace(tmp_path: Path) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival_time": 0, "prompt_tokens": 5, "output_tokens": 2}\n{"oops": 1}\n')
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "fastest"], "unknown policy 'fastest'"),
        (["--rate", "0"], "rate must be positive"),
        (["--rate", "-2"], "rate must be positive"),
        (["--instances", "0"], "instances must be positive"),
        (["--instances", "-3"], "instances must be positive"),
        (["--requests", "0"], "requests must be positive"),
        (["/no/such/workload.toml"], "cannot read workload file"),
        (["--trace", "/no/such/trace.jsonl"], "cannot read trace"),
        (["--trace", "BAD_TRACE"], "bad.jsonl line 2: missing"),
        (["--input", "XXL"], "length must be S, M, L"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    args = [_bad_trace(tmp_path) if a == "BAD_TRACE" else a for a in args]
    done = llumctl(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_malformed_workload_file(tmp_path: Path) -> None:
    wl = tmp_path / "w.toml"
    wl.write_text("[workload\nrate = ")
    done = llumctl(str(wl))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    wl.write_text("[workload]\nspeed = 3\n")
    done = llumctl(str(wl))
    assert done.returncode == 2 and "unknown key 'speed'" in done.stderr
