"""Starting a controller from Python: as a subprocess (tests, benchmarks) or in a thread.

proc = spawn_controller(ControllerConfig(secret="s", port=free_port()), workdir)
...
proc.stop()                     # SIGTERM, then SIGKILL, by PID
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from llumctl.controller.config import ControllerConfig
from llumctl.errors import ConnectionFailed


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def config_json(config: ControllerConfig) -> dict[str, Any]:
    data = asdict(config)
    data["models"] = [asdict(m) for m in config.models]
    data["api_keys"] = list(config.api_keys)
    return data


def wait_healthy(
    url: str, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConnectionFailed(f"controller exited with code {proc.returncode} at start")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ConnectionFailed(f"controller at {url} did not answer within {timeout_s:.0f} s")


@dataclass
class ControllerProcess:
    config: ControllerConfig
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout_s)

    def kill(self) -> None:
        """Die abruptly (SIGKILL), as a crashed controller would."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, timeout_s: float = 30.0) -> None:
        """Start a fresh process on the same config (same port and secret)."""
        self.stop()
        fresh = spawn_controller(self.config, self.config_path.parent, timeout_s=timeout_s)
        self.proc = fresh.proc


def spawn_controller(
    config: ControllerConfig, workdir: Path, *, timeout_s: float = 30.0
) -> ControllerProcess:
    """Start `python -m llumctl.controller` and wait until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "controller.json"
    config_path.write_text(json.dumps(config_json(config)))
    config_path.chmod(0o600)
    log_path = workdir / "controller.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llumctl.controller", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    handle = ControllerProcess(config, config_path, log_path, proc)
    try:
        wait_healthy(handle.url, timeout_s, proc)
    except ConnectionFailed:
        handle.stop()
        raise
    return handle
