"""The instances a host should run, and making its agent run exactly those.

Instance ids are stable (`<host>-<n>`), and the request body each was started with is kept
in `instances.json` on the host, so a rerun of `up` keeps unchanged instances, drains and
recreates changed ones, and drains and removes ones no longer configured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from llumctl.client import AgentClient
from llumctl.config import TINY_MODEL, ClusterConfig, HostSpec
from llumctl.errors import LlumctlError, ProvisionError
from llumctl.provision.runner import CommandRunner
from llumctl.provision.shell import quote

TINY_SEED = 0
Drain = Callable[[list[str]], None]


def resolve_model_path(runner: CommandRunner, python: str, path: str) -> str:
    """The model path engines load; "tiny" = the generated random-weight model on that host."""
    if path != TINY_MODEL:
        return path
    code = f"from agent.models import cached_model; print(cached_model('tiny', {TINY_SEED}))"
    out = runner.run(f"{quote(python)} -c {quote(code)}", 600).check("generating the tiny model")
    return out.strip().splitlines()[-1]


def desired_instances(
    cfg: ClusterConfig, host: HostSpec, model_path: str | None
) -> dict[str, dict[str, Any]]:
    """instance id -> the agent's `POST /instances` body."""
    bodies: dict[str, dict[str, Any]] = {}
    n = 0
    for spec in host.instances:
        for _ in range(spec.count):
            args: dict[str, Any] = dict(cfg.model.engine_args)
            if cfg.model.dtype != "auto":
                args.setdefault("dtype", cfg.model.dtype)
            if cfg.model.max_model_len:
                args.setdefault("max_model_len", cfg.model.max_model_len)
            args.update(spec.engine_args)
            body: dict[str, Any] = {
                "instance_id": f"{host.name}-{n}",
                "engine": spec.engine,
                "model": spec.model or cfg.model.name,
                "engine_args": args,
            }
            if spec.engine == "vllm":
                args["model_path"] = model_path or cfg.model.path
            if spec.device:
                body["device"] = spec.device
            bodies[body["instance_id"]] = body
            n += 1
    return bodies


def ensure_instances(
    runner: CommandRunner,
    workdir: str,
    agent: AgentClient,
    desired: dict[str, dict[str, Any]],
    drain: Drain,
) -> tuple[list[str], list[str]]:
    """Make the agent run exactly `desired`; returns (ids created or recreated, ids removed)."""
    state_file = f"{workdir}/instances.json"
    res = runner.run(f"cat {quote(state_file)} 2>/dev/null", 30)
    try:
        previous: dict[str, Any] = json.loads(res.out) if res.rc == 0 and res.out.strip() else {}
    except ValueError:
        previous = {}
    present = {i["instance_id"] for i in agent.health().get("instances", [])}
    stale = [i for i in present if i not in desired or previous.get(i) != desired[i]]
    if stale:
        drain(stale)
        for iid in stale:
            agent.stop_instance(iid)
    created = []
    for iid, body in desired.items():
        if iid in present and iid not in stale:
            continue
        try:
            agent.start_instance(body)
        except LlumctlError as exc:
            raise ProvisionError(f"instance {iid}: {exc}") from None
        created.append(iid)
    runner.put_bytes(json.dumps(desired, indent=2, sort_keys=True).encode(), state_file, 0o600)
    return created, [i for i in stale if i not in desired]
