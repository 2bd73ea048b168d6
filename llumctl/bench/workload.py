"""Workloads for `llumctl bench`, from the simulator's generators or a JSONL trace, and the
per-request log written back in the simulator's trace format.

There is one workload generator in llumctl, `llumctl.sim.workload`; this module only maps
its `RequestSpec`s to `BenchRequest`s, so a bench run and a simulation of "the same
workload" see the same requests, and a bench log replays in `llumctl sim --trace`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llumctl.bench.records import BenchRequest, RequestRecord
from llumctl.errors import InputError
from llumctl.sim.workload import RequestSpec, WorkloadError, WorkloadSpec, generate, parse_trace


def from_specs(specs: Sequence[RequestSpec]) -> list[BenchRequest]:
    """Bench requests for simulator request specs (arrival times shifted to start at 0)."""
    start = specs[0].arrival_time if specs else 0.0
    return [
        BenchRequest(s.arrival_time - start, s.prompt_tokens, s.output_tokens, s.priority)
        for s in specs
    ]


def generated(spec: WorkloadSpec) -> list[BenchRequest]:
    """A generated workload (the paper's S/M/L lengths; Poisson or Gamma arrivals)."""
    try:
        return from_specs(generate(spec))
    except WorkloadError as exc:
        raise InputError(str(exc)) from None


def from_trace(path: Path) -> list[BenchRequest]:
    """A JSONL trace file (the simulator's format; a bench log is one too)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    try:
        return from_specs(parse_trace(lines, source=str(path)))
    except WorkloadError as exc:
        raise InputError(str(exc)) from None


def log_line(record: RequestRecord, scheduled_arrival_s: float) -> dict[str, Any]:
    """One line of the per-request log: the trace fields first, then the measurements.

    `arrival_time` is the scheduled arrival, so replaying the log reproduces the workload;
    `sent_at_s` is when the request actually left the client.
    """
    return {
        "request_id": f"r{record.index}",
        "arrival_time": round(scheduled_arrival_s, 6),
        "prompt_tokens": record.num_prompt_tokens,
        "output_tokens": record.num_output_tokens,
        "priority": "high" if record.priority > 0 else "normal",
        "sent_at_s": record.arrival_s,
        "received_tokens": record.num_received_tokens,
        "ttft_s": _time(record.ttft_s),
        "tpot_s": _time(record.tpot_s),
        "e2e_s": _time(record.e2e_s),
        "response_id": record.response_id,
        "error": record.error or None,
    }


def write_log(
    path: Path, records: Iterable[RequestRecord], requests: Sequence[BenchRequest]
) -> None:
    with path.open("w") as out:
        for record in records:
            line = log_line(record, requests[record.index].arrival_s)
            out.write(json.dumps(line) + "\n")


def _time(value: float) -> float | None:
    return round(value, 6) if value >= 0 else None


def fit_lengths(
    requests: Sequence[BenchRequest],
    max_prompt: int,
    max_total: int,
    max_output: int | None = None,
) -> list[BenchRequest]:
    """Cap lengths so every request fits an engine's max_model_len (the long tail of the
    paper's distributions reaches 6,144 tokens; small benchmark engines hold less), and
    optionally the output, to bound a run's duration on slow engines."""
    out = []
    for r in requests:
        prompt = min(r.num_prompt_tokens, max_prompt)
        output = min(r.num_output_tokens, max_total - prompt, max_output or max_total)
        output = max(1, output)
        out.append(BenchRequest(r.arrival_s, prompt, output, r.priority))
    return out


def to_specs(requests: Sequence[BenchRequest]) -> list[RequestSpec]:
    """The simulator's view of a bench workload (for running it in `llumctl.sim`)."""
    return [
        RequestSpec(f"r{i}", r.arrival_s, r.num_prompt_tokens, r.num_output_tokens, r.priority)
        for i, r in enumerate(requests)
    ]
