"""Workload generators and the JSONL trace reader."""

from __future__ import annotations

import statistics

import pytest

from llumctl.sim import WorkloadError, WorkloadSpec, generate, parse_trace


def test_power_law_lengths_match_the_paper_table() -> None:
    reqs = generate(WorkloadSpec(num_requests=10_000, input="L", output="S", seed=3))
    inputs = sorted(r.prompt_tokens for r in reqs)
    outputs = sorted(r.output_tokens for r in reqs)
    assert abs(statistics.mean(inputs) - 512) < 5  # rescaled to the mean (ceil adds < 1)
    assert 35 <= inputs[5000] <= 80 and 4000 <= inputs[9900] <= 6144
    assert abs(statistics.mean(outputs) - 128) < 3 and outputs[5000] < 60
    assert max(inputs) <= 6144


def test_arrivals_follow_the_rate_and_gamma_is_burstier() -> None:
    def gaps(spec: WorkloadSpec) -> list[float]:
        times = [r.arrival_time for r in generate(spec)]
        return [b - a for a, b in zip([0.0] + times, times, strict=False)]

    poisson = gaps(WorkloadSpec(num_requests=5000, rate=4.0, seed=1))
    gamma = gaps(WorkloadSpec(num_requests=5000, rate=4.0, arrival="gamma", cv=4.0, seed=1))
    assert abs(statistics.mean(poisson) - 0.25) < 0.02
    assert abs(statistics.mean(gamma) - 0.25) < 0.05
    cv_gamma = statistics.stdev(gamma) / statistics.mean(gamma)
    assert 3.0 < cv_gamma < 5.0


def test_priority_ratio_and_fixed_lengths() -> None:
    reqs = generate(WorkloadSpec(num_requests=4000, input="100", output="7", priority_ratio=0.1))
    assert {r.prompt_tokens for r in reqs} == {100} and {r.output_tokens for r in reqs} == {7}
    assert 300 < sum(r.priority for r in reqs) < 500


def test_same_seed_same_workload() -> None:
    spec = WorkloadSpec(num_requests=100, input="M", output="M", seed=9)
    assert generate(spec) == generate(spec)
    assert generate(spec) != generate(WorkloadSpec(num_requests=100, input="M", seed=10))


def test_trace_lines_are_parsed_and_sorted() -> None:
    lines = [
        '{"arrival_time": 2.0, "prompt_tokens": 10, "output_tokens": 3, "priority": "high"}',
        "",
        '{"arrival_time": 1.0, "prompt_tokens": 20, "output_tokens": 4}',
    ]
    reqs = parse_trace(lines)
    assert [(r.arrival_time, r.prompt_tokens, r.priority) for r in reqs] == [
        (1.0, 20, 0),
        (2.0, 10, 1),
    ]


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{nope", "line 2: not valid JSON"),
        ('{"arrival_time": 1, "prompt_tokens": 5}', "line 2: missing output_tokens"),
        ('{"arrival_time": -1, "prompt_tokens": 5, "output_tokens": 1}', "line 2: arrival_time"),
        ('{"arrival_time": 1, "prompt_tokens": 0, "output_tokens": 1}', "line 2: prompt_tokens"),
        ('{"arrival_time": 1, "prompt_tokens": 5, "output_tokens": 1, "priority": "x"}', "line 2"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_a_bad_trace_line_is_named(bad: str, words: str) -> None:
    good = '{"arrival_time": 0, "prompt_tokens": 5, "output_tokens": 1}'
    with pytest.raises(WorkloadError, match=words):
        parse_trace([good, bad], source="t.jsonl")


@pytest.mark.parametrize(
    "spec",
    [
        WorkloadSpec(rate=0),
        WorkloadSpec(rate=-1),
        WorkloadSpec(num_requests=0),
        WorkloadSpec(arrival="uniform"),
        WorkloadSpec(input="XL"),
        WorkloadSpec(priority_ratio=1.5),
    ],
)
def test_bad_settings_are_refused(spec: WorkloadSpec) -> None:
    with pytest.raises(WorkloadError):
        spec.validate()
