"""The operator commands against a real controller process on loopback (no instances)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llumctl.provision.state import ClusterState, save_state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A controller started by PID; yields the state file naming it."""
    tmp = tmp_path_factory.mktemp("ctrl")
    port = free_port()
    config = tmp / "controller.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "secret": "s3cret"}))
    log = open(tmp / "controller.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "llumctl.controller", "--config", str(config)],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, (tmp / "controller.log").read_text()
                assert time.monotonic() < deadline, "controller did not start"
                time.sleep(0.2)
        yield save_state(ClusterState(controller_url=url, secret="s3cret"), tmp / "state.json")
    finally:
        proc.terminate()
        proc.wait(10)


def llumctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "llumctl.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_status_json_shape(cluster: Path) -> None:
    result = llumctl("status", "--json", "--cluster", str(cluster))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["controller"].startswith("http://127.0.0.1:")
    assert data["instances"] == [] and data["requests"] == []


def test_status_table(cluster: Path) -> None:
    result = llumctl("status", "--cluster", str(cluster))
    assert result.returncode == 0, result.stderr
    assert "0 request(s) in flight" in result.stdout


def test_policy_get_and_set(cluster: Path) -> None:
    got = json.loads(llumctl("policy", "get", "--cluster", str(cluster)).stdout)
    assert got["name"] == "llumnix"
    result = llumctl("policy", "set", "migrate_out_threshold", "-5", "--cluster", str(cluster))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"]["migrate_out_threshold"] == -5.0
    result = llumctl("policy", "set", "name", "infaas++", "--cluster", str(cluster))
    assert json.loads(result.stdout)["name"] == "infaas++"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["migrate", "cmpl-nope", "--to", "x"], 2, "no running request 'cmpl-nope'"),
        (["migrate"], 2, "give either a REQUEST id or --from"),
        (["drain", "nope"], 2, "nope"),
        (["policy", "set", "nonsense", "1"], 2, "unknown policy parameter 'nonsense'"),
        (["policy", "set", "name", "fastest"], 2, "unknown policy 'fastest'"),
        (["policy", "frobnicate"], 2, "unknown action"),
        (["top", "--sort", "color", "--once"], 2, "unknown sort key"),
    ],
)
def test_bad_operations_are_one_line(
    cluster: Path, args: list[str], code: int, needle: str
) -> None:
    result = llumctl(*args, "--cluster", str(cluster))
    assert result.returncode == code, result.stdout + result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_wrong_secret(cluster: Path, tmp_path: Path) -> None:
    url = json.loads(cluster.read_text())["controller_url"]
    bad = save_state(ClusterState(controller_url=url, secret="wrong"), tmp_path / "bad.json")
    result = llumctl("status", "--cluster", str(bad))
    assert result.returncode == 3
    assert "refused the cluster secret" in result.stderr


def test_controller_down(tmp_path: Path) -> None:
    gone = save_state(
        ClusterState(controller_url=f"http://127.0.0.1:{free_port()}", secret="x"),
        tmp_path / "s.json",
    )
    result = llumctl("status", "--cluster", str(gone))
    assert result.returncode == 4
    assert "cannot reach controller" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_top_once(cluster: Path) -> None:
    result = llumctl("top", "--once", "--cluster", str(cluster))
    assert result.returncode == 0, result.stderr
    assert "llumctl top" in result.stdout and "migrations: 0 in flight" in result.stdout


def test_grafana_dashboard_queries_metrics_the_controller_exports(cluster: Path) -> None:
    import re

    url = json.loads(cluster.read_text())["controller_url"]
    exported = set(re.findall(r"^# TYPE (\S+) (\S+)", httpx.get(f"{url}/metrics").text, re.M))
    names = {name for name, _ in exported}
    # Counters are exported as <name>_total, histograms as <name>_bucket/_sum/_count.
    names |= {f"{n}_total" for n, kind in exported if kind == "counter"}
    names |= {f"{n}_bucket" for n, kind in exported if kind == "histogram"}
    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json").read_text()
    )
    used = {
        m
        for p in dashboard["panels"]
        for t in p["targets"]
        for m in re.findall(r"llumctl_[a-z_]+", t["expr"])
    }
    assert used, "the dashboard queries nothing"
    assert used <= names, sorted(used - names)
