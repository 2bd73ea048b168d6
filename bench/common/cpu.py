"""CPU time by role over a benchmark run (controller, instance servers, engine cores, router,
the load generator, everything else), from per-process counters before and after.

On a 2-core machine every stack's engines compete with its own front end and with the load
generator for the same cores, so the CPU a stack spends besides its engines is latency its
engines lose. This makes that cost visible per run instead of guessed at.
"""

from __future__ import annotations

import os
from typing import Any

import psutil

# Roles named by what a process runs (its command line); engine cores are the children of an
# instance or a plain vLLM server (vLLM starts them with multiprocessing spawn).
ROLE_MARKERS = (
    ("llumctl.controller", "controller"),
    ("agent.instance", "instance"),
    ("vllm.entrypoints.openai.api_server", "vllm-server"),
    ("vllm-router", "router"),
    ("vllm::router", "router"),  # the router renames its process
)
ENGINE_PARENTS = ("instance", "vllm-server")


def _role(proc: psutil.Process, roles: dict[int, str]) -> str:
    if proc.pid == os.getpid():
        return "client"
    try:
        args = proc.cmdline()
        ppid = proc.ppid()
    except (psutil.Error, OSError):
        return "other"
    line = " ".join(args)
    for marker, role in ROLE_MARKERS:
        if marker in line:
            return role
    if "-m" in args and args[args.index("-m") + 1 :][:1] == ["agent"]:
        return "agent"
    if roles.get(ppid) in ENGINE_PARENTS:
        return "engine"
    return "other"


def snapshot() -> dict[str, Any]:
    """CPU seconds used so far, per process (with its role) and for the whole machine."""
    procs = sorted(psutil.process_iter(), key=lambda p: p.pid)
    roles: dict[int, str] = {}
    used: dict[int, tuple[str, float]] = {}
    # Parents first (lower PIDs, almost always), so an engine core finds its parent's role;
    # a second pass settles the rest.
    for _ in range(2):
        for proc in procs:
            roles[proc.pid] = _role(proc, roles)
    for proc in procs:
        try:
            t = proc.cpu_times()
        except (psutil.Error, OSError):
            continue
        used[proc.pid] = (roles[proc.pid], t.user + t.system)
    machine = psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
    return {"procs": used, "busy": busy, "steal": getattr(machine, "steal", 0.0)}


def used_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """CPU seconds by role between two snapshots, plus `busy` (all cores, all processes)
    and `steal` (time the hypervisor ran something else while we wanted the cores)."""
    out: dict[str, float] = {}
    for pid, (role, seconds) in after["procs"].items():
        start = before["procs"].get(pid)
        # A process that started during the run counts from zero.
        base = start[1] if start is not None and start[0] == role else 0.0
        out[role] = out.get(role, 0.0) + max(0.0, seconds - base)
    out["busy"] = after["busy"] - before["busy"]
    out["steal"] = after["steal"] - before["steal"]
    return {k: round(v, 2) for k, v in sorted(out.items())}
