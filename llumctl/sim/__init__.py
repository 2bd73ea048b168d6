"""Discrete-event simulator around the policy core (imports only stdlib + llumctl.policy).

Public surface: `SimInstance`/`SimRequest` (one engine's scheduler and memory, reusable by
the simulated engine), `LatencyProfile`, workloads (`WorkloadSpec`, `generate`,
`parse_trace`), `Experiment`/`SimConfig`, and `run_experiment`. Every result it produces is
a simulation and says so (`"simulated": true`). See docs/simulator.md.
"""

from llumctl.sim.config import Experiment, SimConfig, experiment_from_dict
from llumctl.sim.instance import SimInstance, SimRequest, StepResult
from llumctl.sim.profile import LatencyProfile, ProfileError
from llumctl.sim.runner import run_experiment, run_policy
from llumctl.sim.workload import RequestSpec, WorkloadError, WorkloadSpec, generate, parse_trace

__all__ = [
    "Experiment",
    "LatencyProfile",
    "ProfileError",
    "RequestSpec",
    "SimConfig",
    "SimInstance",
    "SimRequest",
    "StepResult",
    "WorkloadError",
    "WorkloadSpec",
    "experiment_from_dict",
    "generate",
    "parse_trace",
    "run_experiment",
    "run_policy",
]
