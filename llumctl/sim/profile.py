"""Engine profiles: per-step latency and KV capacity of one simulated instance.

A profile is a flat mapping (TOML table or JSON object) with these keys; any key left out
keeps the default, which is the paper's LLaMA-7B on one A10 (paper.md, "Latency facts"):

    name                   "llama-7b-a10"  label shown in outputs
    decode_base_ms         33.0     decode step = base + per_seq * B + per_token * S
    decode_per_seq_ms      0.27       (B = sequences decoding, S = resident KV tokens)
    decode_per_token_ms    0.0012
    prefill_per_token_ms   0.211    prefill of n tokens = per_token * n + quadratic * n^2
    prefill_quadratic_ms   4e-6       (summed over the prompts prefilled in a step)
    request_overhead_ms    0.0      fixed latency of every request outside engine steps
                                      (HTTP, tokenization, relay, first-token streaming):
                                      added to its TTFT and end-to-end time, engine not busy
    second_token_extra_ms  0.0      fixed latency between a request's first and second
                                      token beyond the decode step (the stream's start on
                                      the relay path): added to its decode span, engine not
                                      busy, so TPOT rises by it / (output tokens - 1)
    num_total_blocks       850      KV capacity M in blocks (850 * 16 = 13,600 tokens)
    block_size_tokens      16
    kv_bytes_per_token     524288   KV bytes per token (7B fp16: 512 KiB), for migration
    max_num_batched_tokens 8192     token budget per step (decode tokens + prefill tokens)
    max_num_seqs           256      running sequences per instance
    watermark_blocks       8        free blocks a new admission must leave (vLLM: 1% of M)
    max_model_len          12288    longest prompt + output accepted
    co_located_slowdown    0.0      relative step slowdown per other busy instance on the
                                      same host ([cluster] instances_per_host): CPU hosts
                                      share cores, GPUs do not (0)
    co_located_first_token_ms  []   extra time to first token of a request dispatched while
                                      k instances of its host are busy (itself included):
                                      the k-th entry (the last when k is larger); [] = none
    cold_step_extra_ms     0.0      ms added to a step of an instance idle long enough to
                                      be cold; 0 = none (llumctl/sim/hosts.py)
    cold_first_token_ms    0.0      ms added to the first token of a request dispatched
                                      to a cold instance; 0 = none
    warm_up_ms             100.0    busy time in which a cold instance's extra falls by e
    cool_down_ms           1000.0   idle time in which an instance's warmth falls by e

A step that decodes B sequences and prefills prompts n_1..n_k lasts
decode(B, S) + Σ prefill(n_i) (decode term only when B > 0). A measured engine drops in
by fitting these coefficients (e.g. from `llumctl profile`) and setting its capacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


class ProfileError(ValueError):
    """A profile mapping with an unknown key or a bad value."""


@dataclass(frozen=True)
class LatencyProfile:
    """One engine on one GPU: step latency model and memory facts."""

    name: str = "llama-7b-a10"
    decode_base_ms: float = 33.0
    decode_per_seq_ms: float = 0.27
    decode_per_token_ms: float = 0.0012
    prefill_per_token_ms: float = 0.211
    prefill_quadratic_ms: float = 4e-6
    # The paper's numbers are engine times; a measured profile fits what clients see.
    request_overhead_ms: float = 0.0
    # A short request's TPOT is above the decode step on a measured path: its second token
    # comes later than the step alone explains. Per request, not per step.
    second_token_extra_ms: float = 0.0
    num_total_blocks: int = 850
    block_size_tokens: int = 16
    kv_bytes_per_token: int = 512 * 1024
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    watermark_blocks: int = 8
    max_model_len: int = 12288
    # Instances on one CPU host slow each other; see llumctl/sim/hosts.py.
    co_located_slowdown: float = 0.0
    # A first token waits for several processes (frontend, engine, relay) to be scheduled
    # in turn, so on oversubscribed cores it suffers far more than a step's throughput
    # does, and not linearly in k: measured per k rather than fitted to a slope.
    co_located_first_token_ms: tuple[float, ...] = ()
    # A host idle for a while runs its next steps slower and its next first token later:
    # a cost per step and one per first token, and two time constants of the host's
    # clock, not of its steps, which `scaled` keeps.
    cold_step_extra_ms: float = 0.0
    cold_first_token_ms: float = 0.0
    warm_up_ms: float = 100.0
    cool_down_ms: float = 1000.0

    def decode_ms(self, num_seqs: int, num_resident_tokens: int) -> float:
        """Duration of the decode part of a step."""
        if num_seqs <= 0:
            return 0.0
        return (
            self.decode_base_ms
            + self.decode_per_seq_ms * num_seqs
            + self.decode_per_token_ms * num_resident_tokens
        )

    def prefill_ms(self, num_tokens: int) -> float:
        """Duration of prefilling one prompt of `num_tokens` tokens."""
        return self.prefill_per_token_ms * num_tokens + self.prefill_quadratic_ms * num_tokens**2

    def first_token_extra_ms(self, num_busy: int) -> float:
        """Extra time to first token with `num_busy` instances of the host busy."""
        extra = self.co_located_first_token_ms
        if not extra or num_busy < 1:
            return 0.0
        return extra[min(num_busy, len(extra)) - 1]

    def scaled(self, factor: float) -> LatencyProfile:
        """This profile on a machine whose steps take `factor` times as long: every time
        term scaled; capacity, the co-located slowdown (a ratio) and the warming time
        constants (the host's clock) unchanged."""
        if factor <= 0:
            raise ProfileError(f"a speed factor must be positive, got {factor!r}")
        times = {f.name: getattr(self, f.name) * factor for f in fields(self) if _is_time(f.name)}
        extra = tuple(ms * factor for ms in self.co_located_first_token_ms)
        return replace(self, **times, co_located_first_token_ms=extra)

    @property
    def block_bytes(self) -> int:
        return self.kv_bytes_per_token * self.block_size_tokens

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyProfile:
        """Build from a mapping; unknown keys or non-positive numbers raise ProfileError."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ProfileError(f"unknown profile key {key!r}")
            default = getattr(cls(), key)
            values[key] = _coerce_profile_value(key, value, type(default))
        return cls(**values)


# Keys in ms that `scaled` leaves alone: a list scaled on its own, and the host's clock.
_NOT_STEP_TIMES = ("co_located_first_token_ms", "warm_up_ms", "cool_down_ms")


def _is_time(key: str) -> bool:
    return key.endswith("_ms") and key not in _NOT_STEP_TIMES


def _coerce_profile_value(key: str, value: Any, kind: type) -> Any:
    if kind is str:
        return str(value)
    if kind is tuple:
        if not isinstance(value, list | tuple):
            raise ProfileError(f"profile key {key!r} must be a list of numbers, got {value!r}")
        return tuple(_coerce_profile_value(key, v, float) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(f"profile key {key!r} must be a number, got {value!r}")
    if value < 0 or (kind is int and value == 0 and key != "watermark_blocks"):
        raise ProfileError(f"profile key {key!r} must be positive, got {value!r}")
    if kind is int:
        if int(value) != value:
            raise ProfileError(f"profile key {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)
