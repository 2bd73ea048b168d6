"""`llumctl down`: drain, stop instances, agents and the controller; check nothing is left.

Everything is found through the state file (hosts, work directories, PIDs), stopped by PID
and its session, and verified gone with `ps -s` on each host.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from llumctl.client import AgentClient, ControllerClient
from llumctl.config import HostSpec
from llumctl.errors import LlumctlError
from llumctl.provision.runner import CommandRunner
from llumctl.provision.service import Service
from llumctl.provision.state import ClusterState, HostState
from llumctl.provision.up import connector, drain_and_wait

Progress = Callable[[str, str], None]


@dataclass
class DownOutcome:
    name: str
    # "stopped", "not running" or "failed".
    status: str
    reason: str = ""


def host_spec(h: HostState) -> HostSpec:
    return HostSpec(
        name=h.name, address=h.address, ssh_user=h.ssh_user, ssh_port=h.ssh_port, ssh_key=h.ssh_key
    )


def cluster_down(
    state: ClusterState, progress: Progress, force: bool = False, accept_new_host_keys: bool = False
) -> list[DownOutcome]:
    connect = connector(accept_new_host_keys)
    if not force:
        instances = [i for h in state.hosts for i in h.instances]
        with ControllerClient(state.controller_url, state.secret) as controller:
            progress("cluster", f"draining {len(instances)} instance(s)")
            drain_and_wait(controller, instances, progress)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(state.hosts)))) as pool:
        outcomes = list(
            pool.map(lambda h: _stop_host(h, state.secret, connect, progress), state.hosts)
        )
    outcomes.append(_stop_controller(state, connect, progress))
    return outcomes


def _stop_host(
    h: HostState, secret: str, connect: Callable[[HostSpec], CommandRunner], progress: Progress
) -> DownOutcome:
    try:
        runner = connect(host_spec(h))
    except LlumctlError as exc:
        progress(h.name, f"FAILED: {exc}")
        return DownOutcome(h.name, "failed", str(exc))
    try:
        svc = Service(runner, h.workdir, "agent")
        sid = svc.pid() or h.agent_pid
        tree = svc.tree_pids(sid) if sid else []
        if not tree:
            progress(h.name, "agent not running")
            return DownOutcome(h.name, "not running")
        try:
            with AgentClient(h.agent_url, secret, timeout_s=60) as agent:
                agent.shutdown()
        except LlumctlError as exc:
            progress(h.name, f"agent did not shut down cleanly ({exc}); stopping by PID")
        svc.wait_gone(tree, 30.0)
        left = svc.stop(sid, tree)
        if left:
            return DownOutcome(h.name, "failed", f"processes still running: {left}")
        progress(h.name, f"agent and instances stopped ({len(tree)} processes); none left")
        return DownOutcome(h.name, "stopped")
    except LlumctlError as exc:
        return DownOutcome(h.name, "failed", str(exc))
    finally:
        runner.close()


def _stop_controller(
    state: ClusterState, connect: Callable[[HostSpec], CommandRunner], progress: Progress
) -> DownOutcome:
    where = state.controller_host
    try:
        spec = (
            host_spec(state.host(where))
            if where != "local"
            else HostSpec(name="local", address="local")
        )
        runner = connect(spec)
    except LlumctlError as exc:
        return DownOutcome("controller", "failed", str(exc))
    try:
        svc = Service(runner, state.controller_workdir, "controller")
        sid = svc.pid() or state.controller_pid
        tree = svc.tree_pids(sid) if sid else []
        if not tree:
            progress("controller", "not running")
            return DownOutcome("controller", "not running")
        left = svc.stop(sid, tree)
        if left:
            return DownOutcome("controller", "failed", f"processes still running: {left}")
        progress("controller", "stopped; no process left")
        return DownOutcome("controller", "stopped")
    finally:
        runner.close()
