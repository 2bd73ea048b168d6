"""Drive one engine through its OpenAI API and collect the points a profile is fitted to.

Prefill: one request at a time, prompt of n tokens, one output token: its TTFT is the
prefill time of n tokens plus the fixed cost of a request on this path (HTTP, tokenization,
relay), which the fit separates as `request_overhead_ms`. Decode: B requests of L prompt
tokens sent together; their time per output token is the decode step at batch B with about
B*(L + out/2) resident tokens. L is shortened where B such requests would not fit the KV
cache together (`fitting_decode_grid`): the engine would run them a few at a time. Every
point is the median of `repeats` measurements: one scheduling hiccup of a shared machine
must not become a coefficient; prefill lengths are measured in turn, round after round, so
a slow spell of the machine does not land on one length alone. Each measurement uses
fresh prompt ids (a new seed), so vLLM's prefix cache never shortcuts a prefill.

Speed probe: a lone reference decode (a 32-token prompt, 64 tokens out), timed per output
token at the start and at the end of the profile; beside it each time, lone 2-token
requests, whose one interval against the probe's mean interval gives
`second_token_extra_ms`. A shared machine's speed can drift by 10% or more within
minutes; the same probe taken later, next to a real run, says how much faster or slower
the machine is then (`LatencyProfile.scaled`), so a comparison with the simulator can
tell the model's error from the machine's drift.

Warming (llumctl/profile/warming.py): lone requests after idle pauses, token by token,
against the same request on a warm host: how much slower an idle host's next steps and
first token are and how fast that fades (`cold_step_extra_ms`, `cold_first_token_ms`,
`warm_up_ms`, `cool_down_ms`). Every other point here is taken back to back, on a warm
host.

Co-located (optional): through an endpoint that spreads simultaneous requests over N
instances of the profiled engine's host (a llumctl controller with all of them serving),
k = 1..N decodes at once; the rise of their end-to-end time per output token with k is
how much busy neighbours slow a step (`co_located_slowdown`, see llumctl/sim/hosts.py).
Then a short probe sent while k - 1 long decodes run on the other instances: the rise of
its mean TTFT with k is `co_located_first_token_ms` (a mean, not a median: the simulator
adds it to every request dispatched in that state, so it must carry the tail's weight). A
round in which a neighbour finished before the probe's first token did not measure k busy
and is left out.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llumctl.bench.loadgen import LoadGenerator
from llumctl.bench.records import BenchRequest, RequestRecord
from llumctl.errors import ConnectionFailed, InputError, LlumctlError
from llumctl.profile.fit import (
    fit_co_located,
    fit_decode,
    fit_first_token_extra,
    fit_prefill,
    fit_second_token_extra,
)
from llumctl.profile.transfer import loopback_transfer_gbps
from llumctl.profile.warming import (
    WarmingSettings,
    fit_warming,
    measure_warming,
    warming_result,
)

Say = Callable[[str], None] | None

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

# When the first-token probe is sent after its busy neighbours (s).
_PROBE_AFTER_S = 0.5
# The neighbours' prompt, and how many times the probe's delay they decode for at the lone
# speed: margin for the probe's own first token and a fast spell of the machine.
_NEIGHBOUR_PROMPT = 32
_NEIGHBOUR_BUSY_X = 3.0

# Pause before each co-located measurement (s): two of the llumlets' load-report intervals
# (0.2 s), so the controller has seen the last measurement's requests finish. Without it,
# k requests sent right after one finished could all go to the instances the stale
# report showed idle (a CI run saw both of a pair land on one instance), which measures
# batching, not neighbours.
_SETTLE_S = 0.5

# The speed probe's request: prompt and output tokens.
SPEED_PROBE_SHAPE = (32, 64)
# Its short twin, whose one interval is a step plus the second token's extra (0.4-1.0 ms
# on 2 ms steps through llumctl on 2026-11-30: a 2-token request's TPOT was 2.5-3.0 ms
# where a 65-token one's was 1.8-2.0).
SECOND_TOKEN_SHAPE = (32, 2)


@dataclass(frozen=True)
class ProfileSettings:
    url: str
    model: str = ""
    model_dir: Path | None = None
    name: str = "measured"
    quick: bool = False
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    # The engine's --dtype when it overrides the checkpoint's (KV bytes per token).
    dtype: str = ""
    # KV capacity and context length, for an endpoint whose /metrics and /v1/models do not
    # say (a llumctl controller); 0 = read them from the engine.
    num_blocks: int = 0
    block_size: int = 0
    max_model_len: int = 0
    # An endpoint spreading requests over `co_located` instances on the profiled host.
    co_located_url: str = ""
    co_located: int = 0

    @property
    def prefill_lengths(self) -> list[int]:
        # The shortest point pins the fixed per-request cost most workloads' short prompts pay.
        return [32, 256, 768] if self.quick else [16, 64, 128, 256, 512, 768]

    @property
    def decode_grid(self) -> list[tuple[int, int]]:
        if self.quick:
            return [(1, 64), (4, 64), (4, 256)]
        return [(b, n) for b in (1, 4, 8, 16) for n in (64, 512)]

    @property
    def repeats(self) -> int:
        return 2 if self.quick else 3

    @property
    def prefill_repeats(self) -> int:
        return 2 if self.quick else 5

    @property
    def first_token_rounds(self) -> int:
        # One probe per round and k: a mean of a heavy tail needs more samples than a median.
        return 4 if self.quick else 12

    @property
    def warming(self) -> WarmingSettings:
        # The long pause lets a host cool fully (1 s did all of it in a scratch run at
        # 05:50, 0.3 s about a third at 03:50): the short one must fall where cooling is
        # still under way, or it says only that cooling is fast.
        if self.quick:
            return WarmingSettings(rounds=2, short_gap_s=0.3, long_gap_s=2.0)
        return WarmingSettings(rounds=6, short_gap_s=0.3, long_gap_s=3.0)

    @property
    def decode_tokens(self) -> int:
        return 16 if self.quick else 32

    @property
    def speed_probe_rounds(self) -> int:
        # Taken twice (start and end): the median of both sets.
        return 2 if self.quick else 4


async def measure_engine(settings: ProfileSettings, progress: Say = None) -> dict[str, Any]:
    """Every measurement and the fitted profile (a dict of LatencyProfile keys)."""
    co_located = None
    if settings.co_located > 1:
        co_located = await measure_co_located_all(settings, progress)
    gen = LoadGenerator(settings.url, settings.model, timeout_s=300.0)
    await gen.check()
    facts = await engine_facts(gen, settings)
    gen.model = facts["model"]
    limit = facts["max_model_len"] - settings.decode_tokens - 1
    lengths = [n for n in settings.prefill_lengths if n <= limit]
    if len(lengths) < 2:
        raise InputError(f"max_model_len {facts['max_model_len']} is too small to profile")
    _say(progress, "speed probe: a lone reference decode, and lone 2-token requests")
    speed, short = await _speed_and_second_token(gen, settings.speed_probe_rounds, 6_000_000)
    _say(progress, f"prefill: {len(lengths)} prompt lengths x {settings.prefill_repeats}")
    prefill = await _prefill_points(gen, lengths, settings.prefill_repeats)
    blocks, block_size = facts["num_blocks"], facts["block_size"]
    grid = fitting_decode_grid(
        settings.decode_grid, blocks, block_size, settings.decode_tokens, limit
    )
    _say(progress, f"decode: {len(grid)} (batch, prompt) points")
    decode = [await _decode_point(gen, b, n, settings) for b, n in grid]
    speed_end, short_end = await _speed_and_second_token(
        gen, settings.speed_probe_rounds, 6_100_000
    )
    speed, short = speed + speed_end, short + short_end
    warming = settings.warming
    _say(progress, f"warming: lone requests after {warming.long_gap_s:g} s idle x {warming.rounds}")
    warming_points = await measure_warming(gen, warming, 6_500_000)
    _say(progress, "transfer: loopback TCP")
    gbps = loopback_transfer_gbps()
    overhead, per_token, quadratic = fit_prefill(prefill)
    base, per_seq, per_resident = fit_decode(decode)
    profile = {
        "name": settings.name,
        "decode_base_ms": base,
        "decode_per_seq_ms": per_seq,
        "decode_per_token_ms": per_resident,
        "prefill_per_token_ms": per_token,
        "prefill_quadratic_ms": quadratic,
        "request_overhead_ms": overhead,
        "second_token_extra_ms": fit_second_token_extra(short, speed, SPEED_PROBE_SHAPE[1]),
        "num_total_blocks": facts["num_blocks"],
        "block_size_tokens": facts["block_size"],
        "kv_bytes_per_token": facts["kv_bytes_per_token"],
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "max_num_seqs": settings.max_num_seqs,
        "watermark_blocks": max(1, facts["num_blocks"] // 100),
        "max_model_len": facts["max_model_len"],
        **fit_warming(warming_points, warming),
    }
    result = {
        "url": settings.url,
        "model": facts["model"],
        "profile": profile,
        "prefill_points_ms": [list(p) for p in prefill],
        "decode_points_ms": [list(p) for p in decode],
        "transfer_gbps": gbps,
        "facts": facts,
        "speed_probe_ms": float(statistics.median(speed)),
        "speed_probe_points_ms": speed,
        "second_token_points_ms": short,
        "warming_points_ms": warming_result(warming_points, warming),
    }
    return with_co_located(result, *co_located) if co_located else result


def fitting_decode_grid(
    grid: list[tuple[int, int]], num_blocks: int, block_size: int, out_tokens: int, limit: int
) -> list[tuple[int, int]]:
    """The (batch, prompt) points of `grid`, each shortened so that the whole batch fits
    the KV cache at once with its `out_tokens` generated, and none longer than `limit`.

    A point the cache cannot hold measures something else: vLLM admits as many requests
    as fit and the rest wait for them to finish, so "16 requests of 512 tokens" on a
    40-block cache decodes two at a time, its steps those of batch 2 (faster than batch 1
    plus the per-sequence cost, which skewed the fit). The prompt gives way first (the
    batch is the axis the fit needs most); where even `block_size` tokens per request do
    not fit, the batch is cut. One block is kept free, as the simulator keeps its
    watermark. Repeated points are dropped."""
    usable = max(1, num_blocks - 1)
    fitted: list[tuple[int, int]] = []
    for batch, prompt in grid:
        per_request_tokens = (usable // batch) * block_size - out_tokens
        if per_request_tokens < block_size:
            batch = max(1, usable // -(-(block_size + out_tokens) // block_size))
            per_request_tokens = (usable // batch) * block_size - out_tokens
        point = (batch, max(1, min(prompt, limit, per_request_tokens)))
        if point not in fitted:
            fitted.append(point)
    return fitted


async def _speed_and_second_token(
    gen: LoadGenerator, rounds: int, seed_base: int
) -> tuple[list[float], list[float]]:
    """The speed probe, then as many lone 2-token requests (their seeds 200,000 on)."""
    speed = await measure_speed(gen, rounds, seed_base)
    return speed, await measure_speed(gen, rounds, seed_base + 200_000, SECOND_TOKEN_SHAPE)


async def measure_speed(
    gen: LoadGenerator,
    rounds: int,
    seed_base: int,
    shape: tuple[int, int] = SPEED_PROBE_SHAPE,
) -> list[float]:
    """The speed probe `rounds` times, one after another: ms per output token after the
    first (TPOT) of a lone `shape` (prompt, output tokens) request, fresh prompt ids each
    time."""
    prompt, out = shape
    times = []
    for rep in range(rounds):
        gen.seed = seed_base + rep
        records, _ = await gen.run([BenchRequest(0.0, prompt, out)])
        times.append(_ok(records)[0].tpot_s * 1000)
    return times


# The two co-located measurements: (k, ms per output token) and (k, first-token ms).
CoLocatedPoints = tuple[list[tuple[int, float]], list[tuple[int, float]]]


async def measure_co_located_all(
    settings: ProfileSettings, progress: Say = None
) -> CoLocatedPoints:
    """Both co-located measurements, in the order `llumctl profile` takes them: the time per
    token with k decoding at once, then a first token with k - 1 busy."""
    _say(progress, f"co-located: 1..{settings.co_located} decodes at once")
    per_token = await measure_co_located(settings)
    _say(progress, f"co-located: a first token with 0..{settings.co_located - 1} busy")
    lone_ms_per_token = dict(per_token)[1]
    return per_token, await measure_co_located_first_token(settings, lone_ms_per_token)


async def measure_co_located(settings: ProfileSettings) -> list[tuple[int, float]]:
    """(k, end-to-end ms per output token) for k = 1..N decodes sent at once to the
    co-located endpoint, each the median of `repeats` rounds (k in turn within a round)."""

    async def per_token_ms(gen: LoadGenerator, k: int) -> float:
        batch = [BenchRequest(0.0, 32, 2 * settings.decode_tokens) for _ in range(k)]
        records, _ = await gen.run(batch)
        # End to end, not TPOT: a starved client reads a burst of tokens at once, which
        # makes TPOT look *smaller* under contention.
        return float(statistics.mean(r.e2e_s / r.num_received_tokens for r in _ok(records))) * 1000

    times = await _rounds_per_k(settings, settings.repeats, 8_000_000, per_token_ms)
    return [(k, float(statistics.median(ms))) for k, ms in times.items()]


async def measure_co_located_first_token(
    settings: ProfileSettings, lone_ms_per_token: float
) -> list[tuple[int, float]]:
    """(k, mean TTFT ms) of a short probe sent while k - 1 long decodes run, k = 1..N: the
    endpoint puts the probe on the instance left idle (every policy spreads a lone
    request onto an idle instance). Rounds of k = 1..N in turn. `lone_ms_per_token`, a
    lone decode's time per output token there, sizes the neighbours (`neighbour_tokens`)."""
    model_len = settings.max_model_len
    if not model_len:
        probe = LoadGenerator(settings.co_located_url, settings.model)
        model_len = int((await _served_model(probe, settings.model)).get("max_model_len") or 0)
    num_tokens = neighbour_tokens(settings, lone_ms_per_token, model_len)

    async def probe_ttft_ms(gen: LoadGenerator, k: int) -> float:
        # The probe arrives once the neighbours are past their prefill and reported busy
        # (llumlets report every 0.2 s); they decode long enough to still be at it then.
        batch = [BenchRequest(0.0, _NEIGHBOUR_PROMPT, num_tokens) for _ in range(k - 1)]
        records, _ = await gen.run([*batch, BenchRequest(_PROBE_AFTER_S, 32, 2)])
        return probe_ttft_among_busy_ms(_ok(records))

    rounds = settings.first_token_rounds
    ttft = await _rounds_per_k(settings, rounds, 9_000_000, probe_ttft_ms)
    points = []
    for k, ms in ttft.items():
        valid = [x for x in ms if not math.isnan(x)]
        if not valid:
            raise LlumctlError(
                f"co-located first token: in every round a neighbour finished before the "
                f"probe's first token with {k} busy: its {num_tokens}-token decodes (sized "
                f"at {lone_ms_per_token:.2f} ms a token alone) ended within {_PROBE_AFTER_S} s"
            )
        points.append((k, float(statistics.mean(valid))))
    return points


def probe_ttft_among_busy_ms(records: list[RequestRecord]) -> float:
    """The probe's TTFT (the last record) in ms, or NaN when a neighbour (the others) had
    finished before the probe's first token: that round did not meet its k busy."""
    *neighbours, probe = records
    first_token_at = probe.arrival_s + probe.ttft_s
    if any(n.arrival_s + n.e2e_s <= first_token_at for n in neighbours):
        return math.nan
    return float(probe.ttft_s * 1000)


def neighbour_tokens(settings: ProfileSettings, lone_ms_per_token: float, model_len: int) -> int:
    """Output tokens of the first-token probe's busy neighbours: enough to decode for
    `_NEIGHBOUR_BUSY_X` times the probe's delay at the lone speed (busy neighbours are no
    faster), at least 16 x `decode_tokens`, within `model_len` when known (0: unknown).

    Until 2026-11-30 they decoded a fixed 128 tokens, then 256 (quick), which a fast spell of
    the machine finished before the probe was sent at 0.5 s (the tiny model decodes a token
    in 1.4 ms alone): the probe met idle neighbours, and the profile said busy ones cost
    nothing or, when every round did so, failed."""
    wanted = math.ceil(_NEIGHBOUR_BUSY_X * _PROBE_AFTER_S * 1000 / max(lone_ms_per_token, 0.01))
    num_tokens = max(16 * settings.decode_tokens, wanted)
    if model_len:
        num_tokens = max(1, min(num_tokens, model_len - _NEIGHBOUR_PROMPT - 1))
    return num_tokens


async def _rounds_per_k(
    settings: ProfileSettings,
    rounds: int,
    seed_base: int,
    measure: Callable[[LoadGenerator, int], Awaitable[float]],
) -> dict[int, list[float]]:
    """`measure(gen, k)` for k = 1..N in turn, `rounds` times, through the co-located
    endpoint; fresh prompt ids every time (a new seed), so no prefix cache shortcuts."""
    gen = LoadGenerator(settings.co_located_url, settings.model, timeout_s=300.0)
    await gen.check()
    gen.model = (await _served_model(gen, settings.model))["id"]
    values: dict[int, list[float]] = {k: [] for k in range(1, settings.co_located + 1)}
    for rep in range(rounds):
        for k in values:
            gen.seed = seed_base + k * 1000 + rep
            await asyncio.sleep(_SETTLE_S)
            values[k].append(await measure(gen, k))
    return values


def with_co_located(
    result: dict[str, Any],
    points: list[tuple[int, float]],
    first_token: list[tuple[int, float]] | None = None,
) -> dict[str, Any]:
    """`result` with the co-located points and the slowdown fitted to them (and, when
    measured, the first-token points and the extra time fitted to those)."""
    profile = {**result["profile"], "co_located_slowdown": fit_co_located(points)}
    out = {**result, "co_located_points_ms": [list(p) for p in points]}
    if first_token:
        profile["co_located_first_token_ms"] = list(fit_first_token_extra(first_token))
        out["co_located_first_token_points_ms"] = [list(p) for p in first_token]
    return {**out, "profile": profile}


async def _prefill_points(
    gen: LoadGenerator, lengths: list[int], repeats: int
) -> list[tuple[int, float]]:
    times: dict[int, list[float]] = {n: [] for n in lengths}
    for rep in range(repeats):
        for n in lengths:
            gen.seed = n * 1000 + rep
            records, _ = await gen.run([BenchRequest(0.0, n, 1)])
            times[n].append(_ok(records)[0].ttft_s * 1000)
    return [(n, float(statistics.median(times[n]))) for n in lengths]


async def _decode_point(
    gen: LoadGenerator, batch: int, prompt: int, settings: ProfileSettings
) -> tuple[int, int, float]:
    out = settings.decode_tokens
    times = []
    for rep in range(settings.repeats):
        gen.seed = 7_000_000 + batch * 10_000 + prompt * 10 + rep
        records, _ = await gen.run([BenchRequest(0.0, prompt, out) for _ in range(batch)])
        times.append(statistics.mean(r.tpot_s for r in _ok(records)) * 1000)
    return batch, batch * (prompt + out // 2), float(statistics.median(times))


def _ok(records: list[Any]) -> list[Any]:
    failed = [r.error for r in records if r.error]
    if failed:
        raise ConnectionFailed(f"profiling request failed: {failed[0]}")
    return records


def _say(progress: Say, text: str) -> None:
    if progress is not None:
        progress(text)


async def engine_facts(gen: LoadGenerator, settings: ProfileSettings) -> dict[str, Any]:
    """Model name, max_model_len, KV blocks and block size (vLLM's metrics), KV bytes/token."""
    root = re.sub(r"/v1/?$", "", gen.base_url)
    entry = await _served_model(gen, settings.model)
    async with httpx.AsyncClient(timeout=10.0) as client:
        metrics = (await client.get(f"{root}/metrics")).text
    if settings.num_blocks and settings.block_size:
        blocks, block_size = settings.num_blocks, settings.block_size
    else:
        blocks, block_size = kv_blocks(metrics)
    model_dir = settings.model_dir or Path(str(entry.get("root", "")))
    return {
        "model": entry["id"],
        "max_model_len": settings.max_model_len or int(entry.get("max_model_len") or 2048),
        "num_blocks": blocks,
        "block_size": block_size,
        "kv_bytes_per_token": kv_bytes_per_token(model_dir, settings.dtype),
    }


async def _served_model(gen: LoadGenerator, wanted: str) -> dict[str, Any]:
    """The /v1/models entry of `wanted` (default: the first served)."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        models = (await client.get(f"{gen.base_url}/models", headers=gen.headers)).json()
    served = models.get("data") or []
    if not served:
        raise InputError(f"{gen.base_url} serves no models")
    entry = next((m for m in served if m["id"] == wanted), served[0])
    if wanted and entry["id"] != wanted:
        raise InputError(f"{gen.base_url} does not serve {wanted!r}")
    return dict(entry)


def kv_blocks(metrics_text: str) -> tuple[int, int]:
    """(num_gpu_blocks, block_size) from vLLM's `vllm:cache_config_info` metric labels."""
    for line in metrics_text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            try:
                return int(labels["num_gpu_blocks"]), int(labels["block_size"])
            except (KeyError, ValueError):
                break
    raise InputError(
        "the engine's /metrics has no vllm:cache_config_info (not vLLM itself?): "
        "pass --kv-blocks and --block-size"
    )


def kv_bytes_per_token(model_dir: Path, dtype: str = "") -> int:
    """K and V of every layer for one token, from the checkpoint's config.json."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"cannot read {model_dir}/config.json; pass --model-dir") from None
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    width = _DTYPE_BYTES.get(dtype or str(config.get("torch_dtype", "float16")), 2)
    return 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * width
