"""Starting the controller daemon, on this machine or on the host the cluster file names.

It runs as `python -m llumctl.controller --config controller.json` (0600: holds the secret),
detached like the agents; an unchanged, healthy controller is left alone on a rerun.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llumctl.client import ControllerClient
from llumctl.config import LOCAL, ClusterConfig, HostSpec
from llumctl.errors import LlumctlError, ProvisionError
from llumctl.provision.host import default_workdir, resolve_workdir
from llumctl.provision.install import check_python, install_agent, local_code_env
from llumctl.provision.runner import CommandRunner, LocalRunner
from llumctl.provision.service import Service
from llumctl.provision.shell import quote
from llumctl.provision.state import llumctl_home

START_TIMEOUT_S = 60.0


@dataclass
class ControllerOutcome:
    url: str
    host: str
    workdir: str
    pid: int
    # "started", "restarted" or "unchanged".
    status: str


def controller_url(cfg: ClusterConfig) -> str:
    c = cfg.controller
    if c.advertise:
        return f"http://{c.advertise}:{c.port}"
    if c.host == LOCAL:
        address = "127.0.0.1" if c.bind in ("0.0.0.0", "::") else c.bind
    else:
        address = cfg.host(c.host).agent_host
    return f"http://{address}:{c.port}"


def controller_config(cfg: ClusterConfig, secret: str) -> bytes:
    first = next((i for h in cfg.hosts for i in h.instances), None)
    template = {
        "name": cfg.model.name,
        "engine": first.engine if first else "sim",
        "engine_args": {},
    }
    data = {
        "host": cfg.controller.bind,
        "port": cfg.controller.port,
        "secret": secret,
        "public_url": controller_url(cfg),
        "policy": cfg.policy,
        "params": cfg.policy_params,
        "models": [template],
    }
    if cfg.controller.api_keys:
        data["api_keys"] = list(cfg.controller.api_keys)
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def start_controller(
    cfg: ClusterConfig,
    secret: str,
    connect: Callable[[HostSpec], CommandRunner],
    wheel: Path | None,
    progress: Callable[[str, str], None],
) -> ControllerOutcome:
    """Start (or keep) the controller; ProvisionError/ConnectionFailed if it cannot run."""
    where = cfg.controller.host
    if where == LOCAL:
        runner: CommandRunner = LocalRunner()
        workdir = str(llumctl_home() / "controller")
        runner.run(f"mkdir -p {quote(workdir)} && chmod 700 {quote(workdir)}").check(
            "creating controller dir"
        )
        python = sys.executable
    else:
        host = cfg.host(where)
        runner = connect(host)
        try:
            workdir = resolve_workdir(runner, default_workdir(host))
            if host.python_env:
                check_python(runner, f"{host.python_env.rstrip('/')}/bin/python")
            else:
                check_python(runner, host.python)
            assert wheel is not None  # remote hosts always get the wheel
            python, _ = install_agent(runner, workdir, host.python, host.python_env, wheel)
        except LlumctlError:
            runner.close()
            raise
    try:
        return _run(runner, workdir, python, cfg, secret, progress)
    finally:
        runner.close()


def _run(
    runner: CommandRunner,
    workdir: str,
    python: str,
    cfg: ClusterConfig,
    secret: str,
    progress: Callable[[str, str], None],
) -> ControllerOutcome:
    svc = Service(runner, workdir, "controller")
    url, where = controller_url(cfg), cfg.controller.host
    config = controller_config(cfg, secret)
    pid = svc.pid()
    if pid and svc.read_config() == config and _healthy(url, secret):
        progress("controller", f"healthy at {url} (pid {pid}), left alone")
        return ControllerOutcome(url, where, workdir, pid, "unchanged")
    status = "started"
    if pid:
        progress("controller", "config changed: restarting the controller")
        if svc.stop(pid, svc.tree_pids(pid)):
            raise ProvisionError("the old controller did not stop")
        status = "restarted"
    svc.write_config(config)
    env = local_code_env() if where == LOCAL else {}
    pid = svc.start([python, "-m", "llumctl.controller", "--config", svc.path(".json")], env)
    progress("controller", f"started (pid {pid}), waiting for {url}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(url, secret):
        if not svc.pid():
            tail = svc.log_tail(5).strip().splitlines()
            raise ProvisionError(f"controller exited at start: {tail[-1] if tail else 'no log'}")
        if time.monotonic() > deadline:
            raise ProvisionError(
                f"controller did not answer at {url} within {START_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.5)
    return ControllerOutcome(url, where, workdir, pid, status)


def _healthy(url: str, secret: str) -> bool:
    try:
        with ControllerClient(url, secret, timeout_s=3) as c:
            c.request("GET", "/health")
        return True
    except LlumctlError:
        return False
