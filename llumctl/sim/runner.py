"""Run an experiment (one workload, one or more policies) and shape the results as JSON.

The output object is the `llumctl sim --json` contract:
`{"simulated": true, "workload": {...}, "results": {"<policy>": {metrics..., "high": {...}}}}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from llumctl.policy import get_policy
from llumctl.sim.cluster import Simulation
from llumctl.sim.config import Experiment
from llumctl.sim.metrics import latency_metrics, rounded
from llumctl.sim.workload import RequestSpec, WorkloadError, generate

Progress = Callable[[int, int], None]


def check_fits(requests: Sequence[RequestSpec], exp: Experiment) -> None:
    """Every request must fit one instance, or the simulation could never finish it."""
    profile = exp.profile
    capacity = (profile.num_total_blocks - profile.watermark_blocks) * profile.block_size_tokens
    limit = min(capacity, profile.max_model_len)
    for req in requests:
        if req.prompt_tokens + req.output_tokens > limit:
            raise WorkloadError(
                f"request {req.request_id} needs {req.prompt_tokens + req.output_tokens} "
                f"tokens; an instance holds at most {limit}"
            )


def run_policy(
    requests: Sequence[RequestSpec], exp: Experiment, policy_name: str, progress: Progress | None
) -> dict[str, Any]:
    """Simulate one policy; its metrics (overall, and for high-priority requests)."""
    policy = get_policy(policy_name, exp.params)
    sim = Simulation(requests, policy, exp.config, exp.profile)
    raw = sim.run(progress)
    done = [r for r in sim.requests if r.finish_time is not None]
    overhead_s = exp.profile.request_overhead_ms / 1000.0
    stream_s = exp.profile.second_token_extra_ms / 1000.0
    result = latency_metrics(done, overhead_s, stream_s)
    result.update(raw)
    result["high"] = latency_metrics([r for r in done if r.priority > 0], overhead_s, stream_s)
    return result


def workload_summary(requests: Sequence[RequestSpec], exp: Experiment) -> dict[str, Any]:
    spec = asdict(exp.workload)
    if exp.workload.trace is not None:
        spec = {"trace": exp.workload.trace, "seed": exp.workload.seed}
    n = len(requests)
    spec.update(
        num_requests=n,
        instances=exp.config.num_instances,
        mean_prompt_tokens=sum(r.prompt_tokens for r in requests) / n,
        mean_output_tokens=sum(r.output_tokens for r in requests) / n,
        num_high_priority=sum(1 for r in requests if r.priority > 0),
        profile=exp.profile.name,
        scaling=exp.params.is_scaling_enabled,
    )
    return spec


def run_experiment(
    exp: Experiment,
    requests: Sequence[RequestSpec] | None = None,
    progress: Callable[[str], Progress | None] | None = None,
) -> dict[str, Any]:
    """Run every policy of `exp` over the same requests; the JSON-ready result object."""
    exp.config.validate()
    if requests is None:
        requests = generate(exp.workload)
    check_fits(requests, exp)
    results = {}
    for name in exp.policies:
        results[name] = run_policy(requests, exp, name, progress(name) if progress else None)
    out: dict[str, Any] = rounded(
        {"simulated": True, "workload": workload_summary(requests, exp), "results": results}
    )
    return out
