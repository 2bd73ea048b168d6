"""Bad input to `llumctl bench` / `llumctl profile`: one line, an exit code, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def llumctl(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "llumctl.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def unused_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def assert_one_line(out: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert text in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--input", "XL"], "length must be S, M, L"),
        (["--rate", "0"], "rate must be positive"),
        (["--arrival", "uniform"], "arrival must be poisson or gamma"),
        (["--timeout", "-1"], "--timeout must be positive"),
    ],
)
def test_bad_workload_flags(args: list[str], text: str) -> None:
    assert_one_line(llumctl("bench", "--url", unused_url(), *args), 2, text)


def test_unreachable_endpoint() -> None:
    assert_one_line(llumctl("bench", "--url", unused_url(), "-n", "2"), 4, "cannot reach")


def test_bad_trace_names_the_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"arrival_time": 0, "prompt_tokens": 4, "output_tokens": 2}\n{"x": 1}\n')
    out = llumctl("bench", "--url", unused_url(), "--trace", str(trace))
    assert_one_line(out, 2, "line 2: missing arrival_time")


def test_missing_trace_file(tmp_path: Path) -> None:
    out = llumctl("bench", "--url", unused_url(), "--trace", str(tmp_path / "none.jsonl"))
    assert_one_line(out, 2, "cannot read trace")


def test_profile_needs_a_known_suffix(tmp_path: Path) -> None:
    out = llumctl("profile", "--url", unused_url(), "--out", str(tmp_path / "p.yaml"))
    assert_one_line(out, 2, "must end in .toml or .json")


def test_profile_unreachable_endpoint(tmp_path: Path) -> None:
    out = llumctl("profile", "--url", unused_url(), "--out", str(tmp_path / "p.toml"))
    assert_one_line(out, 4, "cannot reach")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--kv-blocks", "7"], "--kv-blocks and --block-size go together"),
        (["--kv-blocks", "-7", "--block-size", "32"], "--kv-blocks and --block-size go together"),
        (["--max-model-len", "-1"], "--max-model-len must be positive"),
        (["--co-located", "3"], "--co-located N (2 or more) and --co-located-url go together"),
        (["--co-located", "1", "--co-located-url", "http://x/v1"], "--co-located N (2 or more)"),
    ],
)
def test_profile_bad_kv_facts(tmp_path: Path, args: list[str], text: str) -> None:
    out = llumctl("profile", "--url", unused_url(), "--out", str(tmp_path / "p.toml"), *args)
    assert_one_line(out, 2, text)
