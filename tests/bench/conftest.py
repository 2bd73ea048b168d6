"""Fixture for `llumctl bench` / `llumctl profile` tests: ONE plain vLLM OpenAI server of
the tiny model per test module (the kind of endpoint users point the commands at), started
on a free loopback port and stopped by PID (its own process group) at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.bench.bench_server import BLOCK_SIZE, MAX_MODEL_LEN, NUM_BLOCKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OpenAIServer:
    url: str  # OpenAI base URL (…/v1)
    pid: int


def _start(model_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--dtype", "float32", "--block-size", str(BLOCK_SIZE), "--enforce-eager"]
    cmd += ["--max-model-len", str(MAX_MODEL_LEN)]
    cmd += ["--num-gpu-blocks-override", str(NUM_BLOCKS)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, f"http://127.0.0.1:{port}/v1"


def _wait(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/models", timeout=3).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError("vLLM server did not start in 600 s")


@pytest.fixture(scope="module")
def openai_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenAIServer]:
    log_path = tmp_path_factory.mktemp("vllm-openai") / "server.log"
    proc, url = _start(tiny_model_dir, log_path)
    try:
        _wait(proc, url, log_path)
        yield OpenAIServer(url, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
