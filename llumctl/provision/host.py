"""Bootstrapping one host: a straight pipeline of named steps, each reported as it runs.

connect → workdir → check python/devices → install the agent → configure (config + secret,
0600) → start the agent detached (or leave a healthy, unchanged one alone; restart a changed
one). Instances are created afterwards through the agent's API (see up.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llumctl.client import AgentClient
from llumctl.config import ClusterConfig, HostSpec
from llumctl.errors import LlumctlError, ProvisionError
from llumctl.provision.install import check_python, install_agent, local_code_env
from llumctl.provision.instances import desired_instances, ensure_instances, resolve_model_path
from llumctl.provision.runner import CommandRunner, LocalRunner
from llumctl.provision.service import Service
from llumctl.provision.shell import qpath
from llumctl.provision.state import llumctl_home

Progress = Callable[[str, str], None]
AGENT_START_TIMEOUT_S = 60.0


@dataclass
class HostOutcome:
    """What `up` did on one host (one row of the summary table)."""

    name: str
    # "started", "restarted", "updated" (instances changed), "unchanged" or "failed".
    status: str = "failed"
    reason: str = ""
    workdir: str = ""
    agent_url: str = ""
    agent_pid: int = 0
    python: str = ""
    instances: list[str] = field(default_factory=list)


@dataclass
class HostContext:
    """What every host's bootstrap needs from the cluster."""

    controller_url: str
    secret: str
    wheel: Path | None
    progress: Progress
    cluster: ClusterConfig
    # Drains instances (through the controller) before they are stopped or restarted.
    drain: Callable[[list[str]], None] = lambda ids: None


def default_workdir(host: HostSpec) -> str:
    if host.workdir:
        return host.workdir
    return str(llumctl_home() / "hosts" / host.name) if host.is_local else "~/.llumctl"


def resolve_workdir(runner: CommandRunner, workdir: str) -> str:
    """Create the work directory (0700) and return its absolute path on the host."""
    out = runner.run(
        f"mkdir -p {qpath(workdir)} && chmod 700 {qpath(workdir)} && cd {qpath(workdir)} && pwd", 30
    )
    return out.check(f"creating workdir {workdir}").strip().splitlines()[-1]


def check_devices(runner: CommandRunner, devices: tuple[str, ...]) -> None:
    cuda = [d for d in devices if d.startswith("cuda")]
    if not cuda:
        return
    res = runner.run("nvidia-smi -L 2>/dev/null | grep -c '^GPU'", 30)
    found = int(res.out.strip() or 0) if res.out.strip().isdigit() else 0
    if found < len(cuda):
        raise ProvisionError(f"{len(cuda)} GPU(s) configured but nvidia-smi lists {found}")


def agent_config(host: HostSpec, ctx: HostContext, workdir: str) -> bytes:
    config = {
        "agent_id": host.name,
        "host": host.agent_host,
        "port": host.agent_port,
        "controller_url": ctx.controller_url,
        "secret": ctx.secret,
        "secret_file": f"{workdir}/secret",
        "devices": list(host.devices),
        # Not derived from the instance count alone, so adding an instance does not count
        # as an agent change (which would restart every instance of the host).
        "max_instances": host.max_instances or max(16, sum(i.count for i in host.instances)),
        "workdir": workdir,
        "env": dict(host.env),
    }
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


@dataclass
class PreparedHost:
    """A host that passed the preflight: connected, work directory made, Python checked."""

    runner: CommandRunner
    workdir: str
    python: str


def prepare_host(
    host: HostSpec, connect: Callable[[HostSpec], CommandRunner], progress: Progress
) -> PreparedHost:
    """Connect and check a host; LlumctlError names the failed step."""
    runner = connect(host)
    step = "workdir"
    try:
        workdir = resolve_workdir(runner, default_workdir(host))
        step = "check"
        python = _check(runner, host, progress)
    except LlumctlError as exc:
        runner.close()
        raise type(exc)(f"{step}: {exc}") from None
    return PreparedHost(runner, workdir, python)


def bootstrap_host(host: HostSpec, ctx: HostContext, prepared: PreparedHost) -> HostOutcome:
    """Install, configure and start the agent and its instances; failures end up in the outcome."""
    outcome = HostOutcome(name=host.name, agent_url=f"http://{host.agent_host}:{host.agent_port}")
    outcome.workdir = prepared.workdir
    runner = prepared.runner
    step = "install"
    try:
        outcome.python, is_new_code = _install(runner, host, ctx, outcome.workdir, prepared.python)
        step = "agent"
        _start_agent(runner, host, ctx, outcome, is_new_code)
        step = "instances"
        _instances(runner, host, ctx, outcome)
    except LlumctlError as exc:
        outcome.status, outcome.reason = "failed", f"{step}: {exc}"
        ctx.progress(host.name, f"FAILED at {step}: {exc}")
    finally:
        runner.close()
    return outcome


def _check(runner: CommandRunner, host: HostSpec, progress: Progress) -> str:
    python = f"{host.python_env.rstrip('/')}/bin/python" if host.python_env else host.python
    if isinstance(runner, LocalRunner) and not host.python_env:
        python = sys.executable  # the local cluster runs from this very installation
    version = check_python(runner, python)
    check_devices(runner, host.devices)
    progress(host.name, f"python {version}, devices: {', '.join(host.devices) or 'auto'}")
    return python


def _install(
    runner: CommandRunner, host: HostSpec, ctx: HostContext, workdir: str, python: str
) -> tuple[str, bool]:
    """(python of the agent's environment, whether new code was installed)."""
    if ctx.wheel is None:  # local cluster: the agent runs from this very installation
        return python, False
    ctx.progress(
        host.name, "installing the agent" + (f" into {host.python_env}" if host.python_env else "")
    )
    env_python, changed = install_agent(runner, workdir, host.python, host.python_env, ctx.wheel)
    ctx.progress(host.name, "agent installed" if changed else "agent already installed")
    return env_python, changed


def _start_agent(
    runner: CommandRunner, host: HostSpec, ctx: HostContext, outcome: HostOutcome, is_new_code: bool
) -> None:
    svc = Service(runner, outcome.workdir, "agent")
    config = agent_config(host, ctx, outcome.workdir)
    pid = svc.pid()
    is_same = not is_new_code and svc.read_config() == config
    if pid and is_same and _healthy(outcome.agent_url, ctx.secret):
        outcome.status, outcome.agent_pid = "unchanged", pid
        ctx.progress(host.name, f"agent healthy (pid {pid}), left alone")
        return
    outcome.status = "started"
    if pid:
        why = "new llumctl version" if is_new_code else "config changed"
        ctx.progress(host.name, f"{why}: draining and restarting the agent")
        ctx.drain(_instance_ids(outcome.agent_url, ctx.secret))
        left = svc.stop(pid, svc.tree_pids(pid))
        if left:
            raise ProvisionError(f"old agent processes did not stop: {left}")
        outcome.status = "restarted"
    svc.write_config(config)
    runner.put_bytes(ctx.secret.encode() + b"\n", f"{outcome.workdir}/secret", 0o600)
    argv = [outcome.python, "-m", "agent", "--config", svc.path(".json")]
    env = host.env
    if ctx.wheel is None:  # a local cluster: the agent runs this CLI's own code
        env = {**host.env, **local_code_env(host.env if "PYTHONPATH" in host.env else None)}
    outcome.agent_pid = svc.start(argv, env)
    ctx.progress(host.name, f"agent started (pid {outcome.agent_pid}), waiting for it")
    _wait_healthy(svc, outcome, ctx.secret)


def _instances(
    runner: CommandRunner, host: HostSpec, ctx: HostContext, outcome: HostOutcome
) -> None:
    needs_model = any(i.engine == "vllm" for i in host.instances)
    model_path = (
        resolve_model_path(runner, outcome.python, ctx.cluster.model.path) if needs_model else None
    )
    desired = desired_instances(ctx.cluster, host, model_path)
    with AgentClient(outcome.agent_url, ctx.secret, timeout_s=60) as agent:
        created, removed = ensure_instances(runner, outcome.workdir, agent, desired, ctx.drain)
    outcome.instances = list(desired)
    if removed:
        ctx.progress(host.name, f"drained and removed instances: {', '.join(removed)}")
    if created:
        ctx.progress(host.name, f"starting instances: {', '.join(created)}")
    if (created or removed) and outcome.status == "unchanged":
        outcome.status = "updated"
    if not created and not removed:
        ctx.progress(host.name, "instances unchanged")


def _healthy(url: str, secret: str) -> bool:
    try:
        with AgentClient(url, secret, timeout_s=3) as agent:
            agent.health()
        return True
    except LlumctlError:
        return False


def _instance_ids(url: str, secret: str) -> list[str]:
    try:
        with AgentClient(url, secret, timeout_s=5) as agent:
            return [i["instance_id"] for i in agent.health().get("instances", [])]
    except (LlumctlError, KeyError, TypeError):
        return []


def _wait_healthy(svc: Service, outcome: HostOutcome, secret: str) -> None:
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _healthy(outcome.agent_url, secret):
            return
        if not svc.pid():
            tail = svc.log_tail(5).strip().splitlines()
            raise ProvisionError(f"agent exited at start: {tail[-1] if tail else 'no log'}")
        time.sleep(0.5)
    raise ProvisionError(
        f"agent did not answer at {outcome.agent_url} within {AGENT_START_TIMEOUT_S:.0f} s"
    )
