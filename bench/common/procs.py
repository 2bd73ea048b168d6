"""Starting and stopping benchmark processes, always by PID (each in its own session, so
stopping one takes its engine children with it and nothing else)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    # One OpenMP thread per engine: unbound, each engine's worker would start one spinning
    # thread per core, and N engines on a 2-core machine then spend their steps fighting
    # over the cores (decode steps of hundreds of ms for a model that needs a few).
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class Proc:
    name: str
    url: str
    log_path: Path
    popen: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(name: str, cmd: Sequence[str], url: str, log_dir: Path, env: dict[str, str]) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            list(cmd),
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, url, log_path, popen)


def wait_http(proc: Proc, path: str, timeout_s: float = 600.0) -> Proc:
    """Until GET url+path answers 200; raises with the log tail if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            tail = proc.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(proc.url + path, timeout=3).status_code == 200:
                return proc
        time.sleep(1.0)
    stop(proc)
    raise RuntimeError(f"{proc.name} did not answer {path} within {timeout_s:.0f} s")


def stop(proc: Proc, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group (its session), then SIGKILL it if it lingers."""
    if proc.popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
    # Engine workers may outlive the leader: sweep the group once more, by its id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop_all(procs: Sequence[Proc]) -> None:
    for proc in procs:
        stop(proc)
