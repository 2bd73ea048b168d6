"""OpenAI response shapes: full responses, streamed chunks, usage, errors."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from llumctl.controller.openai_api import ParsedRequest


def usage(num_prompt: int, num_output: int) -> dict[str, int]:
    return {
        "prompt_tokens": num_prompt,
        "completion_tokens": num_output,
        "total_tokens": num_prompt + num_output,
    }


def full_response(
    req: ParsedRequest, rid: str, text: str, finish: str | None, num_prompt: int, num_out: int
) -> dict[str, Any]:
    if req.kind == "completion":
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
        obj = "chat.completion"
    choice["finish_reason"] = finish
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": req.model,
        "choices": [choice],
        "usage": usage(num_prompt, num_out),
    }


def chunk(
    req: ParsedRequest, rid: str, text: str | None, finish: str | None, *, is_first: bool = False
) -> dict[str, Any]:
    """One streamed chunk; chat chunks carry deltas (the first one the role)."""
    if req.kind == "completion":
        choice: dict[str, Any] = {"index": 0, "text": text or "", "logprobs": None}
        obj = "text_completion"
    else:
        delta: dict[str, Any] = {"role": "assistant"} if is_first else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None}
        obj = "chat.completion.chunk"
    choice["finish_reason"] = finish
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": req.model,
        "choices": [choice],
    }


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying `obj`."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def token_sse(req: ParsedRequest, rid: str) -> Callable[[str], str]:
    """`text -> sse(chunk(req, rid, text, None))` for a request's token chunks after its
    first, with the JSON around the text rendered once: the relay's per-token cost."""
    marker = "\x00text\x00"
    head, tail = sse(chunk(req, rid, marker, None)).split(json.dumps(marker), 1)
    return lambda text: head + json.dumps(text) + tail


def usage_chunk(req: ParsedRequest, rid: str, num_prompt: int, num_out: int) -> dict[str, Any]:
    obj = "text_completion" if req.kind == "completion" else "chat.completion.chunk"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": req.model,
        "choices": [],
        "usage": usage(num_prompt, num_out),
    }


def error_body(
    message: str, kind: str, param: str | None = None, code: Any = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
