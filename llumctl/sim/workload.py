"""Workloads: the paper's generated traces, arrival processes and JSONL trace replay.

Lengths: "S", "M", "L" are the paper's power-law distributions (means 128/256/512,
Table 1); an integer is a fixed length. Arrivals: Poisson at `rate`, or Gamma with
coefficient of variation `cv` (shape 1/cv², scale cv²/rate). A fraction
`priority_ratio` of requests is high priority. Each stream (input, output, arrival,
priority) has its own rng derived from the seed, so changing one knob leaves the others'
samples unchanged.

Trace files are JSONL, one request per line:
    {"arrival_time": 0.52, "prompt_tokens": 310, "output_tokens": 87, "priority": "high"}
`priority` is optional ("normal"/"high" or 0/1); blank lines are skipped; requests are
replayed in arrival order.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

MAX_TOKENS = 6144
# (mean, Zipf exponent) of the paper's power-law length distributions.
POWER_LAW = {"S": (128, 2.0), "M": (256, 1.5), "L": (512, 1.15)}


class WorkloadError(ValueError):
    """A workload setting or trace line that cannot be used."""


@dataclass(frozen=True)
class RequestSpec:
    """One request of a workload."""

    request_id: str
    arrival_time: float
    prompt_tokens: int
    output_tokens: int
    priority: int = 0


@dataclass(frozen=True)
class WorkloadSpec:
    """A generated workload (ignored fields when `trace` is set: all but `trace`)."""

    num_requests: int = 1000
    rate: float = 1.0
    arrival: str = "poisson"
    cv: float = 1.0
    input: str = "M"
    output: str = "M"
    priority_ratio: float = 0.0
    seed: int = 0
    trace: str | None = None

    def validate(self) -> None:
        if self.trace is not None:
            return
        if self.num_requests <= 0:
            raise WorkloadError(f"requests must be positive, got {self.num_requests}")
        if not self.rate > 0 or math.isinf(self.rate):
            raise WorkloadError(f"rate must be positive, got {self.rate}")
        if self.arrival not in ("poisson", "gamma"):
            raise WorkloadError(f"arrival must be poisson or gamma, got {self.arrival!r}")
        if not self.cv > 0:
            raise WorkloadError(f"cv must be positive, got {self.cv}")
        if not 0.0 <= self.priority_ratio <= 1.0:
            raise WorkloadError(f"priority ratio must be in [0, 1], got {self.priority_ratio}")
        parse_length(self.input)
        parse_length(self.output)


def parse_length(text: str) -> str | int:
    """ "S"/"M"/"L" or a positive integer token count."""
    upper = str(text).strip().upper()
    if upper in POWER_LAW:
        return upper
    try:
        value = int(upper)
    except ValueError:
        raise WorkloadError(f"length must be S, M, L or a token count, got {text!r}") from None
    if value <= 0 or value > MAX_TOKENS:
        raise WorkloadError(f"length must be in 1..{MAX_TOKENS}, got {value}")
    return value


def power_law_lengths(mean: int, exponent: float, n: int, rng: random.Random) -> list[int]:
    """The paper's generator: Zipf ranks over 1..2*mean-1, rescaled to the mean, capped."""
    ranks = range(1, 2 * mean)
    cum = list(itertools.accumulate(k**-exponent for k in ranks))
    total = cum[-1]
    samples = [bisect.bisect_left(cum, rng.random() * total) + 1 for _ in range(n)]
    scale = mean / (sum(samples) / n)
    return [min(MAX_TOKENS, max(1, math.ceil(s * scale))) for s in samples]


def lengths(kind: str | int, n: int, rng: random.Random) -> list[int]:
    if isinstance(kind, int):
        return [kind] * n
    mean, exponent = POWER_LAW[kind]
    return power_law_lengths(mean, exponent, n, rng)


def arrival_times(spec: WorkloadSpec, rng: random.Random) -> list[float]:
    times: list[float] = []
    t = 0.0
    if spec.arrival == "gamma":
        shape, scale = 1.0 / spec.cv**2, spec.cv**2 / spec.rate
    for _ in range(spec.num_requests):
        if spec.arrival == "gamma":
            t += rng.gammavariate(shape, scale)
        else:
            t += rng.expovariate(spec.rate)
        times.append(t)
    return times


def generate(spec: WorkloadSpec) -> list[RequestSpec]:
    """The requests of a generated workload, in arrival order."""
    spec.validate()
    rngs = [random.Random(f"{spec.seed}:{name}") for name in ("in", "out", "arr", "prio")]
    n = spec.num_requests
    inputs = lengths(parse_length(spec.input), n, rngs[0])
    outputs = lengths(parse_length(spec.output), n, rngs[1])
    times = arrival_times(spec, rngs[2])
    priorities = [1 if rngs[3].random() < spec.priority_ratio else 0 for _ in range(n)]
    return [RequestSpec(f"r{i}", times[i], inputs[i], outputs[i], priorities[i]) for i in range(n)]


def parse_trace(lines: Iterable[str], source: str = "trace") -> list[RequestSpec]:
    """Requests from JSONL lines; WorkloadError names the line of the first bad one."""
    requests: list[RequestSpec] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            requests.append(_trace_request(line, len(requests)))
        except WorkloadError as exc:
            raise WorkloadError(f"{source} line {number}: {exc}") from None
    if not requests:
        raise WorkloadError(f"{source} holds no requests")
    requests.sort(key=lambda r: r.arrival_time)
    return requests


def _trace_request(line: str, index: int) -> RequestSpec:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise WorkloadError("expected a JSON object")
    missing = [k for k in ("arrival_time", "prompt_tokens", "output_tokens") if k not in obj]
    if missing:
        raise WorkloadError(f"missing {', '.join(missing)}")
    arrival = obj["arrival_time"]
    if isinstance(arrival, bool) or not isinstance(arrival, int | float) or not arrival >= 0:
        raise WorkloadError(f"arrival_time must be a number >= 0, got {arrival!r}")
    tokens = [obj["prompt_tokens"], obj["output_tokens"]]
    for key, value in zip(("prompt_tokens", "output_tokens"), tokens, strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise WorkloadError(f"{key} must be a positive integer, got {value!r}")
    priority = _trace_priority(obj.get("priority", 0))
    request_id = str(obj.get("request_id", f"r{index}"))
    return RequestSpec(request_id, float(arrival), tokens[0], tokens[1], priority)


def _trace_priority(value: object) -> int:
    if value in (0, "normal", "0"):
        return 0
    if value in (1, "high", "1"):
        return 1
    raise WorkloadError(f"priority must be normal or high, got {value!r}")
