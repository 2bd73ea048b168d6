"""Plain vLLM OpenAI servers and vllm-router in front of them (the peer stack)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.engines.vllm.params import SHARED_CORES_ENGINE_NICE, SHARED_CORES_GROUP_NICE
from agent.engines.vllm.priority import lower_group_priority
from bench.common.procs import ENGINE_ENV, Proc, free_port, spawn, wait_http


@dataclass(frozen=True)
class EngineShape:
    """The engine settings every stack in a comparison shares."""

    num_blocks: int = 64
    block_size: int = 32
    max_model_len: int = 1024
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    dtype: str = "float32"

    def engine_args(self) -> dict[str, object]:
        """As the llumctl instance's engine_args (vLLM EngineArgs names)."""
        return {
            "num_gpu_blocks_override": self.num_blocks,
            "block_size": self.block_size,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "dtype": self.dtype,
            "enforce_eager": True,
        }

    def cli_args(self) -> list[str]:
        args = []
        for key, value in self.engine_args().items():
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        return args


# The executor llumctl's agent picks for engines sharing a CPU host's cores (the model
# worker inside the engine-core process: agent/engines/vllm/params.worker_in_core), so the
# two stacks compared run identical engine processes.
IN_CORE_ARGS = ["--distributed-executor-backend", "uni"]
IN_CORE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def lower_engine_priority(server: Proc, nice: int = SHARED_CORES_ENGINE_NICE) -> None:
    """The plain server's engine-core main thread at the nice llumctl's agent gives its own
    on shared cores, and the server's process group (its session: the server was started
    as one) at the group nice a llumctl instance gives its own
    (agent/engines/vllm/params.py), so both stacks run their engines and their HTTP/relay
    processes at the same priorities."""
    if os.getsid(server.pid) == server.pid:  # else the group is also the bench's own
        lower_group_priority(SHARED_CORES_GROUP_NICE, f"/proc/{server.pid}/autogroup")
    for pid in _descendants(server.pid):
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if title.startswith(b"VLLM::EngineCore"):
                os.setpriority(os.PRIO_PROCESS, pid, nice)  # the main thread (tid = pid)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


def launch_vllm(model_dir: Path, name: str, shape: EngineShape, log_dir: Path) -> Proc:
    """Start `python -m vllm.entrypoints.openai.api_server` (returns at once)."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port)]
    cmd += shape.cli_args() + IN_CORE_ARGS
    return spawn(name, cmd, f"http://127.0.0.1:{port}", log_dir, {**ENGINE_ENV, **IN_CORE_ENV})


def start_vllm_servers(
    model_dir: Path, count: int, shape: EngineShape, log_dir: Path, prefix: str = "vllm"
) -> list[Proc]:
    """`count` servers, started together (engine start dominates), waited for each."""
    procs = [launch_vllm(model_dir, f"{prefix}{i}", shape, log_dir) for i in range(count)]
    try:
        for proc in procs:
            wait_http(proc, "/v1/models")
            lower_engine_priority(proc)
    except BaseException:  # Ctrl-C while waiting must not leave engines behind
        from bench.common.procs import stop_all

        stop_all(procs)
        raise
    return procs


def start_router(workers: Sequence[Proc], policy: str, log_dir: Path) -> Proc:
    port = free_port()
    cmd = ["vllm-router", "--host", "127.0.0.1", "--port", str(port), "--policy", policy]
    cmd += ["--worker-urls", *[w.url for w in workers], "--log-level", "warning"]
    proc = spawn(f"router-{policy}", cmd, f"http://127.0.0.1:{port}", log_dir, {})
    return wait_http(proc, "/v1/models", timeout_s=120)
