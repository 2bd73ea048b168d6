"""The controller on a host the cluster file names (over SSH), a partial failure, and down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from tests.ssh.ssh_hosts import SshEnv, free_port

pytestmark = pytest.mark.ssh


def test_controller_on_a_remote_host_and_a_failing_host(ssh_env: SshEnv, tmp_path: Path) -> None:
    good = ssh_env.hosts[1]
    port = free_port()
    # An existing Python environment on the host (as GPU hosts have for vLLM): the agent
    # is added to it, no virtualenv of our own is made.
    env_dir = tmp_path / "existing env"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True
    )
    text = f"""
[controller]
host = "hostb"
port = {port}
[model]
name = "sim-model"
path = "sim-model"

[[hosts]]
name = "hostb"
address = "127.0.0.1"
ssh_port = {good.port}
ssh_key = "{ssh_env.key}"
workdir = "{tmp_path}/hostb"
python_env = "{env_dir}"
agent_port = {free_port()}
[[hosts.instances]]
engine = "sim"
count = 2

[[hosts]]
name = "down-host"
address = "127.0.0.1"
ssh_port = {free_port()}
ssh_key = "{ssh_env.key}"
[[hosts.instances]]
engine = "sim"
"""
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(text)
    result = ssh_env.llumctl("up", str(cluster), "--accept-new-host-keys")
    try:
        out = result.stdout + result.stderr
        # One host is unreachable: reported with its reason, the other proceeds, exit 1.
        assert result.returncode == 1, out
        assert "down-host: FAILED" in out and "connection refused" in out
        assert "Traceback" not in out
        state = json.loads((ssh_env.home / ".llumctl" / "state.json").read_text())
        assert state["controller_host"] == "hostb"
        assert state["controller_workdir"] == f"{tmp_path}/hostb"
        assert (tmp_path / "hostb" / "controller.json").stat().st_mode & 0o777 == 0o600
        status = json.loads(ssh_env.llumctl("status", "--json").stdout)
        assert sorted(i["id"] for i in status["instances"]) == ["hostb-0", "hostb-1"]
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        assert (
            client.completions.create(
                model="sim-model", prompt="hi", max_tokens=3
            ).usage.completion_tokens
            == 3
        )
        assert not (tmp_path / "hostb" / "venv").exists()
        installed = list(env_dir.glob("lib/python*/site-packages/llumctl-*.dist-info"))
        assert installed, "llumctl was not installed into the host's existing environment"
        agent_cmd = (tmp_path / "hostb" / "agent.pid").read_text().strip()
        cmdline = Path(f"/proc/{agent_cmd}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode() == f"{env_dir}/bin/python"
        logs = ssh_env.llumctl("logs", "hostb", "-n", "1000000")  # the whole log
        assert logs.returncode == 0 and "instance hostb-0" in logs.stdout
    finally:
        down = ssh_env.llumctl("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "controller: stopped; no process left" in down.stdout
    for name in ("controller", "agent"):
        assert not (tmp_path / "hostb" / f"{name}.pid").exists()
