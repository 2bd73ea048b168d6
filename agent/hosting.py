"""Instances an agent hosts: sim engines in-process, vLLM engines as child processes.

Both kinds expose the same few things to the agent server: their `InstanceInfo`, `start`,
`stop`, their recent log lines, and `failure()` (why the instance died, or None). A dead
instance is reported, never restarted behind the controller's back: a restart would drop
its running requests silently.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from llumctl.errors import InputError
from llumctl.protocol import InstanceInfo, bearer

LOG_LINES = 2000
# A vLLM instance may take minutes to load on a busy box.
START_TIMEOUT_S = 600.0


class Hosted(abc.ABC):
    def __init__(self, info: InstanceInfo) -> None:
        self.info = info
        self.is_stopping = False

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def logs(self, tail: int) -> str: ...

    def failure(self) -> str | None:
        return None

    def set_state(self, state: str) -> None:
        self.info = replace(self.info, state=state)

    def set_failed(self, reason: str) -> None:
        self.info = replace(self.info, state="failed", failure=reason)


class _RingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class SimHosted(Hosted):
    """A sim instance served by the agent's own HTTP server under /instances/{id}."""

    def __init__(self, info: InstanceInfo, engine_args: dict[str, Any], ctx: dict[str, Any]):
        super().__init__(info)
        self.engine_args = engine_args
        self.ctx = ctx
        self.instance: Any = None
        self.asgi: Any = None
        self._log = _RingHandler()

    async def start(self) -> None:
        from agent.engines.sim import SimEngine
        from agent.instance import create_app
        from agent.runtime import Instance

        engine = SimEngine(self.info.instance_id, self.info.model, self.engine_args)
        self._log.lines.append(f"sim engine for {self.info.model} (simulated, not a real model)")
        if engine.ignored_args:
            self._log.lines.append(f"ignored engine args: {', '.join(engine.ignored_args)}")
        self.instance = Instance(
            self.info.instance_id,
            engine,
            self.ctx["secret"],
            url=self.info.url,
            host=self.ctx["bind"],
            controller_url=self.ctx["controller_url"] or None,
        )
        spec = await self.instance.start()
        self.asgi = create_app(self.instance)
        self.info = replace(
            self.info, fingerprint=spec.fingerprint, max_model_len=spec.max_model_len
        )
        self.set_state("running")

    async def stop(self) -> None:
        self.is_stopping = True
        if self.instance is not None:
            await self.instance.shutdown()
        self.set_state("stopped")

    def logs(self, tail: int) -> str:
        return "\n".join(list(self._log.lines)[-tail:]) + "\n"


class ProcessHosted(Hosted):
    """A vLLM instance in its own process (`python -m agent.instance`), its own port."""

    def __init__(self, info: InstanceInfo, argv: list[str], env: dict[str, str], log: Path):
        super().__init__(info)
        self.argv = argv
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._secret = env.get("LLUMCTL_SECRET", "")
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self._watch = asyncio.get_running_loop().create_task(self._wait_ready())

    async def _wait_ready(self) -> None:
        """`starting` until the instance answers its load endpoint."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        async with httpx.AsyncClient(headers=bearer(self._secret), timeout=5.0) as http:
            while asyncio.get_running_loop().time() < deadline and self.failure() is None:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.info.url}/load")).status_code == 200:
                        self.set_state("running")
                        return
                await asyncio.sleep(1.0)
        if self.failure() is None:
            self.set_failed(f"instance not answering {START_TIMEOUT_S:.0f} s after its start")

    async def stop(self) -> None:
        self.is_stopping = True
        if self._watch is not None:
            self._watch.cancel()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # The engine's own children share the session: stop the whole group by its id.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            for _ in range(100):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.set_state("stopped")

    def failure(self) -> str | None:
        if self.proc is None or self.is_stopping:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        last = last_error_line(self.logs(50))
        return f"engine process exited with code {code}" + (f": {last}" if last else "")

    def logs(self, tail: int) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:]) + "\n"


def vllm_argv(
    info: InstanceInfo, port: int, engine_args: dict[str, Any], ctx: dict[str, Any]
) -> list[str]:
    """Command line of a vLLM instance process (`python -m agent.instance`)."""
    args = dict(engine_args)
    model_path = args.pop("model_path", None) or args.pop("model", None)
    if not model_path:
        raise InputError("a vllm instance needs engine_args.model_path")
    argv = [
        sys.executable, "-m", "agent.instance",
        "--instance-id", info.instance_id,
        "--model", str(model_path),
        "--host", ctx["bind"],
        "--port", str(port),
        "--engine-args", json.dumps(args),
    ]  # fmt: skip
    if ctx["controller_url"]:
        argv += ["--controller-url", ctx["controller_url"]]
    return argv


def last_error_line(text: str) -> str:
    """The line of an instance's log that says why it stopped: its own one-line `error:`
    message (bad engine args, say), unless that only points at a root cause above (vLLM's
    "engine core initialization failed"): then the last exception line of the log (a
    model too long for the KV cache, say)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = next((line[6:].strip() for line in reversed(lines) if line.startswith("error:")), "")
    raised = next((line for line in reversed(lines) if _is_exception_line(line)), "")
    if said and not (raised and "root cause" in said):
        return said[:500]
    return raised[:500]


def _is_exception_line(line: str) -> bool:
    head = line.split(":", 1)[0]
    return head.endswith(("Error", "Exception")) and " " not in head and ":" in line
