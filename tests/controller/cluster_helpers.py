"""Helpers for tests that run a controller with agents and sim instances (real processes
on loopback ports; every process is stopped by PID)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llumctl.controller.launch import ControllerProcess, free_port
from llumctl.protocol import bearer

SECRET = "test-secret"


@dataclass
class AgentProcess:
    url: str
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def spawn_agent(workdir: Path, controller_url: str, **settings: Any) -> AgentProcess:
    """Start `python -m agent` on a free port, registered with `controller_url`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "agent_id": settings.pop("agent_id", f"agent-{port}"),
        "host": "127.0.0.1",
        "port": port,
        "controller_url": controller_url,
        "secret": SECRET,
        "workdir": str(workdir),
        "heartbeat_s": 0.5,
        **settings,
    }
    config_path = workdir / "agent.json"
    config_path.write_text(json.dumps(config))
    log_path = workdir / "agent.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    handle = AgentProcess(f"http://127.0.0.1:{port}", config_path, log_path, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{handle.url}/health", headers=bearer(SECRET), timeout=1).is_success:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    handle.stop()
    raise RuntimeError("agent did not start")


def add_instances(agent: AgentProcess, model: str, count: int, **engine_args: Any) -> list[str]:
    ids = []
    for _ in range(count):
        body = {"engine": "sim", "model": model, "engine_args": engine_args}
        resp = httpx.post(f"{agent.url}/instances", json=body, headers=bearer(SECRET), timeout=30)
        resp.raise_for_status()
        ids.append(resp.json()["instance_id"])
    return ids


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def api(controller: ControllerProcess, method: str, path: str, **kw: Any) -> Any:
    resp = httpx.request(method, controller.url + path, headers=bearer(SECRET), timeout=30, **kw)
    assert resp.status_code < 500, resp.text
    return resp
