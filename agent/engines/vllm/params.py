"""Translations between llumctl's request/engine settings and vLLM's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.engines.base import PreparedRequest
from llumctl.errors import InputError
from llumctl.protocol import GenerateRequest, SamplingParams

# Engine defaults for an instance (CPU-friendly; every key may be overridden).
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "enforce_eager": True,
    "block_size": 32,
    "enable_prefix_caching": True,
    # vLLM's per-step statistics (Prometheus histograms, the periodic throughput log): the
    # instance serves no vLLM metrics endpoint, and the controller gets its load from the
    # connector, so they are work per step and per token that nothing reads.
    "disable_log_stats": True,
}


# llumctl's own engine args (not vLLM's), handed to the connector:
# `min_step_ms`: every engine step lasts at least this long. It emulates a slower
# accelerator, and lets tests keep requests alive long enough to act on them whatever the
# machine's speed (a tiny model on an idle CPU decodes 1,000+ tokens/s).
# `engine_nice`: the CPU priority (nice, 0-19) of the engine core's compute thread; see
# `SHARED_CORES_ENGINE_NICE`.
# `group_nice`: the CPU priority (nice, 0-19) of the instance's process group as a whole
# (its autogroup: the instance process and its engine core); see `SHARED_CORES_GROUP_NICE`.
# The instance process applies it (VllmEngine.start); the connector ignores it.
CONNECTOR_ARGS = ("min_step_ms", "engine_nice", "group_nice")
NICE_ARGS = ("engine_nice", "group_nice")

# On a CPU host whose engines share cores, engine steps are the compute and everything else
# on the path of a token (instance API, controller relay, their load reports) is a few
# milliseconds of Python per step that must wait for a core behind them. At nice 10 the
# engines still get every cycle nobody else wants, and the relays get a core when a token is
# ready. Measured on 2 cores, 3 engines, the side-by-side workload through the controller
# with round-robin dispatch: P50 TTFT 0.52-0.58 s (two runs) -> 0.29 s (one run), with the
# same throughput.
SHARED_CORES_ENGINE_NICE = 10

# A thread's nice only orders it within its autogroup (agent/engines/vllm/priority.py), and
# each instance is a session of its own: an engine at nice 10 yielded to its own instance's
# API, but the controller's relay and the other instances' APIs waited for a core behind it
# as equals. With every instance's group at nice 10 as well, traced on 2 cores, 3 engines,
# 4 req/s of short prompts and long outputs through the controller (round-robin; three runs
# before, one after): the controller's event loop woke 103-163 ms late at P99 -> 47 ms; a
# first token took 33-47 ms (mean; P90 96-173) from the instance's API to the controller
# -> 6 ms (P90 20); a client's request took 31-85 ms (P90 96-202) to reach the controller
# -> 16 ms (P90 57).
SHARED_CORES_GROUP_NICE = 10


def build_engine_args(
    model: str, overrides: dict[str, Any], socket_dir: str, in_core: bool = False
) -> Any:
    """vLLM's engine args for one instance (`in_core`: see `worker_in_core`)."""
    from vllm.config import KVTransferConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = {**DEFAULT_ENGINE_ARGS, **overrides}
    if in_core:
        args["distributed_executor_backend"] = "uni"
        args.setdefault("engine_nice", SHARED_CORES_ENGINE_NICE)
        args.setdefault("group_nice", SHARED_CORES_GROUP_NICE)
    extra: dict[str, Any] = {"socket_dir": socket_dir}
    for key in CONNECTOR_ARGS:
        if key in args:
            extra[key] = _non_negative(key, args.pop(key))
    for key in NICE_ARGS:
        nice = extra.get(key, 0)
        if nice > 19 or nice != int(nice):
            raise InputError(f"bad engine argument: {key} must be an integer 0-19, not {nice}")
    kv = KVTransferConfig(
        kv_connector="LlumConnector",
        kv_connector_module_path="agent.engines.vllm.connector",
        kv_role="kv_both",
        kv_connector_extra_config=extra,
    )
    try:
        return AsyncEngineArgs(model=model, kv_transfer_config=kv, **args)
    except TypeError as exc:
        raise InputError(f"bad engine argument: {exc}") from None


def worker_in_core(is_cpu: bool, args: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    """Whether to run the model worker inside the engine-core process ("uni" executor).

    vLLM's default executor on CPU puts the worker in a process of its own, and each side
    busy-waits (sched_yield) on their shared-memory queue for 1 s after every message. On
    a host where llumctl runs several engines on shared cores (`VLLM_CPU_OMP_THREADS_BIND
    =nobind`, so the worker process's thread pinning does nothing) those spinning pairs
    take the cores from the engines' own HTTP, streaming and relay work: on 2 cores with 3
    engines, TTFT was 6x and TPOT 2x what the same cluster shows with the worker in-core
    (docs/architecture.md, Processes). Any explicit choice by the user wins.
    """
    if not is_cpu or env.get("VLLM_CPU_OMP_THREADS_BIND") != "nobind":
        return False
    if "distributed_executor_backend" in args:
        return False
    parallel = (args.get("tensor_parallel_size", 1), args.get("pipeline_parallel_size", 1))
    return parallel == (1, 1)


def _non_negative(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InputError(f"bad engine argument: {key} must be a number >= 0, not {value!r}")
    return float(value)


def check_sampling(s: SamplingParams) -> None:
    if s.max_tokens < 1:
        raise InputError("max_tokens must be at least 1")
    if s.temperature < 0:
        raise InputError("temperature must be >= 0")
    if not 0 < s.top_p <= 1:
        raise InputError("top_p must be in (0, 1]")
    if s.n < 1:
        raise InputError("n must be at least 1")
    if s.min_tokens < 0 or s.min_tokens > s.max_tokens:
        raise InputError("min_tokens must be in [0, max_tokens]")


def prepare_request(
    request: GenerateRequest, tokenizer: Any, max_model_len: int
) -> PreparedRequest:
    given = [x is not None for x in (request.prompt, request.prompt_token_ids, request.messages)]
    if sum(given) != 1:
        raise InputError("give exactly one of prompt, prompt_token_ids, messages")
    check_sampling(request.sampling)
    if request.prompt_token_ids is not None:
        ids = list(request.prompt_token_ids)
        vocab = len(tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise InputError(f"prompt_token_ids must be in [0, {vocab})")
    elif request.messages is not None:
        try:
            ids = tokenizer.apply_chat_template(
                list(request.messages), add_generation_prompt=True, tokenize=True
            )
        except Exception as exc:  # template errors come in many types
            raise InputError(f"cannot apply the chat template: {exc}") from None
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding (not a dict)
            ids = ids["input_ids"]
    else:
        ids = tokenizer.encode(request.prompt, add_special_tokens=True)
    if not ids:
        raise InputError("the prompt is empty")
    if len(ids) + request.sampling.max_tokens > max_model_len:
        raise InputError(
            f"prompt ({len(ids)} tokens) + max_tokens ({request.sampling.max_tokens}) "
            f"exceeds the model context ({max_model_len})"
        )
    return PreparedRequest(
        request.request_id, tuple(int(t) for t in ids), request.sampling, request.priority
    )


def to_vllm_sampling(s: SamplingParams, num_previous: int, kv_params: dict[str, Any]) -> Any:
    """vLLM SamplingParams for a request that already produced `num_previous` tokens."""
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VllmSampling

    return VllmSampling(
        n=s.n,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=0 if s.top_k < 0 else s.top_k,
        stop=list(s.stop) or None,
        seed=s.seed,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        min_tokens=max(0, s.min_tokens - num_previous),
        ignore_eos=s.ignore_eos,
        max_tokens=s.max_tokens - num_previous,
        output_kind=RequestOutputKind.DELTA,
        # The instance derives the text from token ids itself (agent.engines.vllm.text);
        # vLLM's own detokenizer is only needed to match stop strings. Off, it saves a
        # detokenization per token in the instance process's event loop.
        detokenize=bool(s.stop),
        extra_args={"kv_transfer_params": kv_params},
    )
