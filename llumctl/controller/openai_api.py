"""OpenAI request parsing and validation, and response/chunk building.

Parsing is strict: a field we do not implement is refused with a 400 naming it, rather
than silently ignored (a client asking for logprobs must not get a response without them).
Every error here is an `InputError`, which the app turns into OpenAI's error shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from llumctl.errors import InputError
from llumctl.policy import Priority
from llumctl.protocol import SamplingParams

# Fields accepted by both endpoints; each is either used or harmless metadata.
_COMMON = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n", "stream",
    "stream_options", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "min_tokens", "ignore_eos", "priority", "user", "logprobs", "logit_bias",
}  # fmt: skip
_COMPLETION_ONLY = {"prompt", "echo", "best_of", "suffix"}
_CHAT_ONLY = {"messages", "max_completion_tokens", "top_logprobs", "response_format"}

DEFAULT_COMPLETION_MAX_TOKENS = 16


class ParamError(InputError):
    """A bad request field; `param` names it in the OpenAI error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ParsedRequest:
    """A validated OpenAI request, ready for dispatch."""

    kind: str  # "completion" or "chat"
    model: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...] | None
    messages: tuple[dict[str, Any], ...] | None
    sampling: SamplingParams
    priority: Priority
    stream: bool
    include_usage: bool

    def estimated_prompt_tokens(self) -> int:
        """Prompt length guess for dispatch, before the instance tokenises.

        Exact for token ids; otherwise one token per 3 UTF-8 bytes (English BPE averages
        ~4 bytes per token, so this over-estimates a little, which errs on the side of
        not overfilling an instance), plus 8 tokens of template per chat message.
        """
        if self.prompt_token_ids is not None:
            return len(self.prompt_token_ids)
        if self.messages is not None:
            text = sum(len(str(m.get("content", "")).encode()) for m in self.messages)
            return math.ceil(text / 3) + 8 * len(self.messages)
        return math.ceil(len((self.prompt or "").encode()) / 3)


def decode_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ParamError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ParamError("request body must be a JSON object")
    return body


def parse_request(
    kind: str, body: dict[str, Any], header_priority: str | None, default_max_tokens: int
) -> ParsedRequest:
    allowed = _COMMON | (_COMPLETION_ONLY if kind == "completion" else _CHAT_ONLY)
    for key in body:
        if key not in allowed:
            raise ParamError(f"unsupported parameter: {key!r}", key)
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ParamError("'model' is required and must be a string", "model")
    prompt, token_ids, messages = None, None, None
    if kind == "completion":
        prompt, token_ids = _parse_prompt(body.get("prompt"))
    else:
        messages = _parse_messages(body.get("messages"))
    stream = _typed(body, "stream", bool, False)
    options = _typed(body, "stream_options", dict, None) or {}
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else None
    return ParsedRequest(
        kind=kind,
        model=model,
        prompt=prompt,
        prompt_token_ids=token_ids,
        messages=messages,
        sampling=_parse_sampling(body, max_key or "max_tokens", default_max_tokens),
        priority=parse_priority(body.get("priority"), header_priority),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields we accept in their default form only."""
    checks = {
        "logprobs": body.get("logprobs") in (None, False, 0),
        "top_logprobs": body.get("top_logprobs") in (None, 0),
        "echo": body.get("echo") in (None, False),
        "best_of": body.get("best_of") in (None, 1),
        "suffix": body.get("suffix") in (None, ""),
        "logit_bias": body.get("logit_bias") in (None, {}),
        "response_format": body.get("response_format") in (None, {"type": "text"}),
    }
    for key, is_ok in checks.items():
        if not is_ok:
            raise ParamError(f"unsupported parameter value: {key}={body[key]!r}", key)


def _parse_prompt(value: Any) -> tuple[str | None, tuple[int, ...] | None]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        if not value:
            raise ParamError("'prompt' must not be empty", "prompt")
        return value, None
    if isinstance(value, list) and value and all(_is_int(t) and t >= 0 for t in value):
        return None, tuple(value)
    raise ParamError("'prompt' must be a non-empty string or list of token ids", "prompt")


def _parse_messages(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise ParamError("'messages' must be a non-empty list", "messages")
    out = []
    for i, msg in enumerate(value):
        role = msg.get("role") if isinstance(msg, dict) else None
        content = msg.get("content") if isinstance(msg, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ParamError(f"messages[{i}].role must be system, user or assistant", "messages")
        if isinstance(content, list):
            # The typed-parts form; only text parts are supported.
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ParamError(f"messages[{i}]: only text content is supported", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ParamError(f"messages[{i}].content must be a string", "messages")
        out.append({"role": role, "content": content})
    return tuple(out)


def _parse_sampling(body: dict[str, Any], max_key: str, default_max: int) -> SamplingParams:
    max_tokens = _typed(body, max_key, int, default_max)
    if max_tokens <= 0:
        raise ParamError(f"'{max_key}' must be at least 1, got {max_tokens}", max_key)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise ParamError("'top_p' must be in (0, 1]", "top_p")
    top_k = _typed(body, "top_k", int, -1)
    if top_k == 0 or top_k < -1:
        raise ParamError("'top_k' must be -1 (off) or at least 1", "top_k")
    n = _typed(body, "n", int, 1)
    if n != 1:
        raise ParamError("only n=1 is supported", "n")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = tuple(stop)
    else:
        raise ParamError("'stop' must be a string or a list of up to 4 strings", "stop")
    seed = _typed(body, "seed", int, None)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=tuple(s for s in stops if s),
        seed=seed,
        n=1,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        min_tokens=max(0, _typed(body, "min_tokens", int, 0)),
        ignore_eos=_typed(body, "ignore_eos", bool, False),
    )


def parse_priority(body_value: Any, header_value: str | None) -> Priority:
    """`priority` body field, else the `X-Priority` header: high/normal or 1/0."""
    value = body_value if body_value is not None else header_value
    if value is None:
        return Priority.NORMAL
    text = str(value).strip().lower()
    if text in ("high", "1", "true"):
        return Priority.HIGH
    if text in ("normal", "0", "low", "false", "default"):
        return Priority.NORMAL
    raise ParamError(f"priority must be 'high' or 'normal' (or 1/0), got {value!r}", "priority")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        raise ParamError(f"'{key}' must be of type {kind.__name__}, got {value!r}", key)
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ParamError(f"'{key}' must be a number", key)
    if not low <= value <= high:
        raise ParamError(f"'{key}' must be between {low} and {high}, got {value}", key)
    return float(value)
