"""`llumctl up`: controller first, then every host in parallel, then wait for registration.

A host that fails is reported with its reason while the others proceed; the state file is
written whenever the controller is up, so `down` can always clean up what was started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llumctl.client import ControllerClient
from llumctl.config import ClusterConfig, HostSpec
from llumctl.errors import LlumctlError
from llumctl.provision.controller import ControllerOutcome, start_controller
from llumctl.provision.host import (
    HostContext,
    HostOutcome,
    PreparedHost,
    bootstrap_host,
    prepare_host,
)
from llumctl.provision.install import local_wheel
from llumctl.provision.runner import CommandRunner, LocalRunner
from llumctl.provision.ssh import connect as ssh_connect
from llumctl.provision.state import ClusterState, HostState, load_state, new_secret, save_state

Progress = Callable[[str, str], None]
DRAIN_TIMEOUT_S = 60.0


@dataclass
class UpResult:
    # None when no host could be reached (nothing was started).
    controller: ControllerOutcome | None
    hosts: list[HostOutcome] = field(default_factory=list)
    state_path: Path | None = None

    @property
    def is_complete(self) -> bool:
        return self.controller is not None and all(h.status != "failed" for h in self.hosts)


def connector(accept_new_host_keys: bool) -> Callable[[HostSpec], CommandRunner]:
    def connect(host: HostSpec) -> CommandRunner:
        return LocalRunner() if host.is_local else ssh_connect(host, accept_new_host_keys)

    return connect


def cluster_up(
    cfg: ClusterConfig,
    progress: Progress,
    accept_new_host_keys: bool = False,
    state_path: Path | None = None,
    ready_timeout_s: float = 300.0,
) -> UpResult:
    old = load_state(state_path, required=False)
    secret = old.secret if old else new_secret()
    connect = connector(accept_new_host_keys)
    # Connect to and check every host first: if none passes, nothing is started at all.
    prepared, failed = _preflight(cfg, connect, progress)
    if not prepared:
        return UpResult(None, failed)
    try:
        wheel = local_wheel() if any(not h.is_local for h in cfg.hosts) else None
        ctrl = start_controller(cfg, secret, connect, wheel, progress)
    except LlumctlError:
        for p in prepared.values():
            p.runner.close()
        raise
    result = UpResult(ctrl, list(failed))
    result.state_path = _save(cfg, ctrl, secret, [], state_path)
    hosts = [h for h in cfg.hosts if h.name in prepared]
    with ControllerClient(ctrl.url, secret) as controller:
        ctx = HostContext(
            controller_url=ctrl.url,
            secret=secret,
            wheel=wheel,
            progress=progress,
            cluster=cfg,
            drain=lambda ids: drain_and_wait(controller, ids, progress),
        )
        with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
            result.hosts.extend(pool.map(lambda h: bootstrap_host(h, ctx, prepared[h.name]), hosts))
        result.state_path = _save(cfg, ctrl, secret, result.hosts, state_path)
        _wait_ready(controller, result.hosts, progress, ready_timeout_s)
    return result


def _preflight(
    cfg: ClusterConfig, connect: Callable[[HostSpec], CommandRunner], progress: Progress
) -> tuple[dict[str, PreparedHost], list[HostOutcome]]:
    def prepare(host: HostSpec) -> PreparedHost | HostOutcome:
        try:
            return prepare_host(host, connect, progress)
        except LlumctlError as exc:
            progress(host.name, f"FAILED: {exc}")
            return HostOutcome(host.name, "failed", str(exc))

    with ThreadPoolExecutor(max_workers=min(16, len(cfg.hosts))) as pool:
        results = list(pool.map(prepare, cfg.hosts))
    prepared = {
        h.name: r for h, r in zip(cfg.hosts, results, strict=True) if isinstance(r, PreparedHost)
    }
    return prepared, [r for r in results if isinstance(r, HostOutcome)]


def _save(
    cfg: ClusterConfig,
    ctrl: ControllerOutcome,
    secret: str,
    hosts: list[HostOutcome],
    path: Path | None,
) -> Path:
    old = load_state(path, required=False)
    kept = {h.name: h for h in (old.hosts if old else [])}
    for h in hosts:
        if h.workdir:
            spec = cfg.host(h.name)
            kept[h.name] = HostState(
                h.name,
                h.workdir,
                h.agent_url,
                h.agent_pid,
                h.instances,
                spec.address,
                spec.ssh_user,
                spec.ssh_port,
                spec.ssh_key,
            )
    state = ClusterState(
        controller_url=ctrl.url,
        secret=secret,
        source=cfg.source,
        controller_host=ctrl.host,
        controller_workdir=ctrl.workdir,
        controller_pid=ctrl.pid,
        hosts=list(kept.values()),
    )
    return save_state(state, path)


def _instance_states(controller: ControllerClient) -> dict[str, tuple[str, str]]:
    """Instance id -> (state, why it failed), as the controller lists them."""
    try:
        status = controller.status()
    except LlumctlError:
        return {}
    states = {str(i.get("id")): (str(i.get("state")), "") for i in status.get("instances", [])}
    for failed in status.get("failed_instances", []):
        states[str(failed.get("id"))] = ("failed", str(failed.get("reason", "")))
    return states


def _wait_ready(
    controller: ControllerClient, hosts: list[HostOutcome], progress: Progress, timeout_s: float
) -> None:
    """Wait until every instance of a healthy host is registered and running (or failed)."""
    waiting = {iid: h for h in hosts if h.status != "failed" for iid in h.instances}
    deadline = time.monotonic() + timeout_s
    while waiting:
        states = _instance_states(controller)
        for iid in list(waiting):
            state, why = states.get(iid, ("unregistered", ""))
            if state == "running":
                progress(waiting.pop(iid).name, f"{iid} running")
            elif state == "failed":
                host = waiting.pop(iid)
                host.status, host.reason = (
                    "failed",
                    f"instance {iid} failed to start"
                    + (f": {why}" if why else "")
                    + f" (llumctl logs {host.name} {iid})",
                )
        if waiting and time.monotonic() > deadline:
            for iid, host in waiting.items():
                state = states.get(iid, ("unregistered", ""))[0]
                host.status = "failed"
                host.reason = f"instance {iid} not running after {timeout_s:.0f} s (state {state})"
            return
        if waiting:
            time.sleep(0.5)


def drain_and_wait(
    controller: ControllerClient,
    ids: list[str],
    progress: Progress,
    timeout_s: float = DRAIN_TIMEOUT_S,
) -> None:
    """Drain instances (their requests migrate away) and wait until they hold none."""
    for iid in ids:
        try:
            controller.drain(iid)
        except LlumctlError as exc:
            progress(iid, f"drain: {exc}")
    deadline = time.monotonic() + timeout_s
    while ids and time.monotonic() < deadline:
        busy = _busy(controller, ids)
        if not busy:
            return
        time.sleep(0.5)
    if ids:
        progress("drain", f"gave up waiting for {', '.join(_busy(controller, ids))} to empty")


def _busy(controller: ControllerClient, ids: list[str]) -> list[str]:
    try:
        instances: list[dict[str, Any]] = controller.status().get("instances", [])
    except LlumctlError:
        return []
    return [
        str(i["id"])
        for i in instances
        if i.get("id") in ids and (i.get("running") or i.get("queued"))
    ]
