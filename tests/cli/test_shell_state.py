"""Quoting (checked by a real shell), the state file, and detached services by PID."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llumctl.errors import ConfigError
from llumctl.provision.runner import LocalRunner
from llumctl.provision.service import Service
from llumctl.provision.shell import env_prefix, qpath, quote
from llumctl.provision.state import ClusterState, HostState, load_state, save_state

NASTY = ["a b", "$(touch x)", "`id`", "a;b", "it's", '"q"', "~root", "x && y", "*", "\\n", "-rf"]


@pytest.mark.parametrize("value", NASTY)
def test_quote_survives_a_real_shell(value: str, tmp_path: Path) -> None:
    out = subprocess.run(
        ["/bin/sh", "-c", f"printf %s {quote(value)}"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.stdout == value
    assert not (tmp_path / "x").exists()


def test_qpath_expands_only_the_home_prefix(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    for path, expected in [
        ("~/a b/$(x)", f"{tmp_path}/a b/$(x)"),
        ("~", str(tmp_path)),
        ("/abs/~/x", "/abs/~/x"),
    ]:
        out = subprocess.run(
            ["/bin/sh", "-c", f"printf %s {qpath(path)}"], capture_output=True, text=True, env=env
        )
        assert out.stdout == expected


def test_env_prefix_quotes_values_and_rejects_bad_names() -> None:
    out = subprocess.run(
        ["/bin/sh", "-c", env_prefix({"A": "1; echo pwned"}) + "printenv A"],
        capture_output=True,
        text=True,
    )
    assert out.stdout == "1; echo pwned\n"
    with pytest.raises(ValueError):
        env_prefix({"A;B": "1"})


def test_state_file_is_private_and_round_trips(tmp_path: Path) -> None:
    state = ClusterState(
        controller_url="http://127.0.0.1:8000",
        secret="s3cret",
        hosts=[
            HostState(
                "h", "/w", "http://127.0.0.1:7100", 42, ["h-0"], "127.0.0.1", "root", 2222, "/k"
            )
        ],
    )
    path = save_state(state, tmp_path / "state.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_state(path)
    assert loaded == state


def test_missing_state_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `llumctl up` or pass --cluster"):
        load_state(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read cluster state"):
        load_state(tmp_path / "bad.json")


def test_service_starts_detached_and_stops_its_whole_tree(tmp_path: Path) -> None:
    runner = LocalRunner()
    svc = Service(runner, str(tmp_path), "svc")
    # A parent that spawns a child in a session of its own (as the agent does with engine
    # processes): both must be found and gone after stop().
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
        "time.sleep(600)"
    )
    pid = svc.start([sys.executable, "-c", code], {"X": "1"})
    assert svc.pid() == pid
    assert (tmp_path / "svc.pid").read_text().strip() == str(pid)
    for _ in range(100):
        if len(svc.tree_pids(pid)) >= 2:
            break
        time.sleep(0.1)
    tree = svc.tree_pids(pid)
    assert len(tree) == 2 and pid in tree
    assert svc.alive(tree) == tree
    assert svc.stop(pid, tree, grace_s=5) == []
    assert svc.alive(tree) == []
    assert svc.pid() == 0
