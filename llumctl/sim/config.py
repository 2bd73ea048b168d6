"""Simulator settings, and reading a workload file's parsed mapping into them.

A workload file (TOML, parsed by the caller) holds:

    [workload]   requests, rate, arrival, cv, input, output, priority_ratio, seed, trace
    [cluster]    instances, tick_interval_s, report_interval_s, startup_delay_s,
                 migration_bandwidth_gbps, migration_stop_ms, max_migration_stages,
                 migration_delta_blocks, instances_per_host, policies (list of names)
    [policy]     any `PolicyParams` field (thresholds, scaling band, pool bounds, ...)
    [profile]    any `LatencyProfile` key (see llumctl/sim/profile.py)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from llumctl.policy.params import PolicyParams
from llumctl.sim.profile import LatencyProfile
from llumctl.sim.workload import WorkloadError, WorkloadSpec


@dataclass(frozen=True)
class SimConfig:
    """How the simulated cluster behaves around the policy."""

    num_instances: int = 16
    # Period of the policy loop (migration pairing, scaling); the paper checks about
    # every 4 engine steps (~0.2 s).
    tick_interval_s: float = 0.2
    # Age after which an instance's load report is refreshed; 0 = every decision sees
    # fresh state. Dispatches since the last report are passed to the policy as pending.
    report_interval_s: float = 0.0
    # Time from a scale-up decision until the new instance serves.
    startup_delay_s: float = 15.0
    # KV transfer bandwidth between instances (the paper's testbed: 64 Gb/s network).
    migration_bandwidth_gbps: float = 64.0
    # Fixed cost of stopping on the source and resuming on the destination.
    migration_stop_ms: float = 20.0
    # Pre-copy stages before the stop, at most; stop early once the new delta is small.
    max_migration_stages: int = 4
    migration_delta_blocks: int = 1
    # Instances per host, filled in creation order; the profile's co_located_slowdown
    # applies among the instances of one host (CPU hosts share cores; GPUs do not).
    instances_per_host: int = 1

    def validate(self) -> None:
        if self.num_instances <= 0:
            raise WorkloadError(f"instances must be positive, got {self.num_instances}")
        names = ("tick_interval_s", "migration_bandwidth_gbps", "max_migration_stages")
        for name in (*names, "instances_per_host"):
            if not getattr(self, name) > 0:
                raise WorkloadError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("report_interval_s", "startup_delay_s", "migration_stop_ms"):
            if not getattr(self, name) >= 0:
                raise WorkloadError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Experiment:
    """Everything one `llumctl sim` run needs besides the policy names."""

    workload: WorkloadSpec = WorkloadSpec()
    config: SimConfig = SimConfig()
    params: PolicyParams = PolicyParams()
    profile: LatencyProfile = LatencyProfile()
    policies: tuple[str, ...] = ()


def _typed(cls: Any, section: str, values: Mapping[str, Any], base: Any) -> Any:
    """`base` with `values` applied, each checked against the field's type."""
    known = {f.name: f for f in fields(cls)}
    updates: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise WorkloadError(f"[{section}] unknown key {key!r}")
        current = getattr(base, key)
        if current is None or isinstance(current, str):
            if not isinstance(value, str):
                raise WorkloadError(f"[{section}] {key} must be a string, got {value!r}")
        elif isinstance(current, bool) != isinstance(value, bool) or not isinstance(
            value, int | float
        ):
            raise WorkloadError(f"[{section}] {key} must be a number, got {value!r}")
        elif isinstance(current, int) and not isinstance(current, bool) and value != int(value):
            raise WorkloadError(f"[{section}] {key} must be an integer, got {value!r}")
        updates[key] = type(current)(value) if current is not None else value
    return replace(base, **updates)


def experiment_from_dict(data: Mapping[str, Any], base: Experiment | None = None) -> Experiment:
    """Apply a parsed workload file to `base` (defaults when None)."""
    exp = base or Experiment()
    unknown = set(data) - {"workload", "cluster", "policy", "profile"}
    if unknown:
        raise WorkloadError(f"unknown section(s): {', '.join(sorted(unknown))}")
    workload = _workload_section(data.get("workload", {}))
    workload_spec = _typed(WorkloadSpec, "workload", workload, exp.workload)
    cluster = dict(_section(data, "cluster"))
    policies = cluster.pop("policies", None)
    if "instances" in cluster:
        cluster["num_instances"] = cluster.pop("instances")
    config = _typed(SimConfig, "cluster", cluster, exp.config)
    try:
        params = exp.params.with_updates(dict(_section(data, "policy")))
        profile = LatencyProfile.from_dict({**_asdict(exp.profile), **_section(data, "profile")})
    except ValueError as exc:
        raise WorkloadError(str(exc)) from None
    names = exp.policies
    if policies is not None:
        if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
            raise WorkloadError("[cluster] policies must be a list of names")
        names = tuple(policies)
    return Experiment(workload_spec, config, params, profile, names)


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, Mapping):
        raise WorkloadError(f"[{name}] must be a table")
    return section


def _workload_section(section: Any) -> dict[str, Any]:
    if not isinstance(section, Mapping):
        raise WorkloadError("[workload] must be a table")
    out = dict(section)
    if "requests" in out:
        out["num_requests"] = out.pop("requests")
    for key in ("input", "output"):
        if isinstance(out.get(key), int) and not isinstance(out.get(key), bool):
            out[key] = str(out[key])
    return out


def _asdict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
