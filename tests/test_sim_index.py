"""The simulator's DispatchIndex fast path changes nothing in its results."""

from __future__ import annotations

from dataclasses import replace

import pytest

import llumctl.sim.cluster as cluster
from llumctl.sim import Experiment, LatencyProfile, SimConfig, WorkloadSpec, run_experiment

# Small and loaded (queues, migrations), with high-priority traffic for the HIGH rule.
EXP = Experiment(
    workload=WorkloadSpec(
        num_requests=300, rate=6.0, input="M", output="M", priority_ratio=0.2, seed=3
    ),
    config=SimConfig(num_instances=4),
    profile=LatencyProfile(num_total_blocks=800),
    policies=("llumnix", "llumnix-base", "infaas++"),
)


def test_results_equal_with_and_without_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = run_experiment(EXP)
    # No index: the simulation falls back to plain Policy.dispatch on each view.
    monkeypatch.setattr(cluster, "DispatchIndex", lambda policy: None)
    plain = run_experiment(EXP)
    assert fast["results"] == plain["results"]
    assert fast["results"]["llumnix"]["migrations"] > 0


def test_scaling_runs_through_the_index_too() -> None:
    """Instances come and go (scale up and down): the index must follow them."""
    exp = replace(EXP, policies=("llumnix",), config=SimConfig(num_instances=1))
    exp = replace(exp, params=exp.params.with_updates({"is_scaling_enabled": True}))
    result = run_experiment(exp)["results"]["llumnix"]
    assert result["unfinished"] == 0
    assert result["avg_instances"] > 1.0
