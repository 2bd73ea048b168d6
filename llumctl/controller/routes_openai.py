"""OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models.

A request is validated, dispatched, and its instance stream opened *before* the response
starts, so every input error (ours or the instance's, e.g. a prompt longer than the
context) reaches the client as a 4xx in OpenAI's shape, never as a broken stream.
The two generating endpoints are served by the plain ASGI front (`asgi_front`), the
model list by FastAPI.
"""

from __future__ import annotations

import hmac
import json
import uuid
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from llumctl.controller import openai_shapes as shapes
from llumctl.controller.app import Controller, error_response
from llumctl.controller.asgi_front import Exchange, Handler
from llumctl.controller.openai_api import (
    DEFAULT_COMPLETION_MAX_TOKENS,
    ParsedRequest,
    decode_body,
    parse_request,
)
from llumctl.controller.relay import RequestStream
from llumctl.controller.state import RequestRecord
from llumctl.errors import (
    AuthError,
    ConnectionFailed,
    EngineError,
    InstanceDraining,
    LlumctlError,
)
from llumctl.protocol import EventType, GenerateRequest, StreamEvent

# Instances tried for one request before it fails with a 503.
_OPEN_ATTEMPTS = 3

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


def front_routes(ctrl: Controller) -> dict[str, Handler]:
    """The generating endpoints, for the ASGI front."""

    async def completions(exchange: Exchange) -> None:
        await _serve(ctrl, "completion", exchange)

    async def chat_completions(exchange: Exchange) -> None:
        await _serve(ctrl, "chat", exchange)

    return {"/v1/completions": completions, "/v1/chat/completions": chat_completions}


def register(app: FastAPI, ctrl: Controller) -> None:
    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _check_api_key(ctrl, request.headers.get("authorization"))
        names = sorted(ctrl.state.models() | {m.name for m in ctrl.config.models})
        return {"object": "list", "data": [_model_entry(ctrl, n) for n in names]}


def _model_entry(ctrl: Controller, name: str) -> dict[str, Any]:
    """One /v1/models entry; with `max_model_len` as vLLM gives it, once an instance says."""
    entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "llumctl"}
    if max_model_len := ctrl.state.max_model_len(name):
        entry["max_model_len"] = max_model_len
    return entry


def _check_api_key(ctrl: Controller, authorization: str | None) -> None:
    if not ctrl.config.api_keys:
        return
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not any(hmac.compare_digest(given, key) for key in ctrl.config.api_keys):
        raise AuthError("invalid or missing API key")


async def _serve(ctrl: Controller, kind: str, exchange: Exchange) -> None:
    _check_api_key(ctrl, exchange.header(b"authorization"))
    default_max = DEFAULT_COMPLETION_MAX_TOKENS
    if kind == "chat":
        default_max = ctrl.config.default_chat_max_tokens
    parsed = parse_request(
        kind, decode_body(await exchange.body()), exchange.header(b"x-priority"), default_max
    )
    ctrl.dispatcher.check_model(parsed.model)
    prefix = "cmpl-" if kind == "completion" else "chatcmpl-"
    record = RequestRecord(
        id=prefix + uuid.uuid4().hex[:24],
        model=parsed.model,
        priority=parsed.priority,
        num_blocks_estimate=ctrl.dispatcher.estimate_blocks(
            parsed.model, parsed.estimated_prompt_tokens()
        ),
    )
    ctrl.state.requests[record.id] = record
    response: JSONResponse | None = None
    # The last write completes the response, which uvicorn reports to the watch as the
    # client leaving: so it goes out after the watch.
    with exchange.watch_client():
        try:
            stream = await _open(ctrl, record, parsed)
        except LlumctlError:
            ctrl.finish(record, "failed")
            raise
        except BaseException:
            # Cancelled as the client left while the stream opened, or a bug.
            ctrl.finish(record, "aborted" if exchange.has_client_left else "failed")
            raise
        if parsed.stream:
            await _sse(ctrl, stream, record, parsed, exchange)
        else:
            response = await _collect(ctrl, stream, record, parsed)
    if exchange.has_client_left:
        return
    if response is not None:
        await exchange.respond(response)
    else:
        await exchange.write("data: [DONE]\n\n", is_last=True)


async def _open(ctrl: Controller, record: RequestRecord, parsed: ParsedRequest) -> RequestStream:
    generate = GenerateRequest(
        request_id=record.id,
        prompt=parsed.prompt,
        prompt_token_ids=parsed.prompt_token_ids,
        messages=parsed.messages,
        sampling=parsed.sampling,
        priority=parsed.priority,
    )
    # The request has not started anywhere while its stream fails to open, so it goes to
    # the next choice: an unreachable instance leaves the cluster view; one that began
    # draining between the choice and the open (a scale-down racing the dispatch) stops
    # taking requests.
    for _ in range(_OPEN_ATTEMPTS):
        entry = await ctrl.dispatcher.choose(record)
        url = entry.info.url
        stream = RequestStream(ctrl.instance_client, record, generate, url, ctrl.on_move)
        try:
            await stream.open()
            return stream
        except ConnectionFailed as exc:
            ctrl.actuator.instance_failed(entry.id, f"unreachable at dispatch: {exc}")
        except InstanceDraining:
            ctrl.state.drop_pending(record.id)
            ctrl.state.note_draining(entry.id)
    raise EngineError(f"no instance took the request after {_OPEN_ATTEMPTS} tries; retry")


async def _collect(
    ctrl: Controller, stream: RequestStream, record: RequestRecord, parsed: ParsedRequest
) -> JSONResponse:
    parts: list[str] = []
    finish, num_prompt = None, 0
    status = "aborted"
    try:
        async for event in stream.events():
            if event.type == EventType.TOKEN:
                parts.append(event.text)
            else:
                finish, num_prompt = event.finish_reason, event.num_prompt_tokens
        status = "finished"
    except LlumctlError as exc:
        status = "failed"
        return error_response(exc)
    finally:
        # The client leaving cancels this; the abort must still go out.
        with anyio.CancelScope(shield=True):
            await stream.close()
        if status != "finished":
            ctrl.finish(record, status)
    record.num_prompt_tokens = num_prompt
    ctrl.finish(record, "finished")
    body = shapes.full_response(
        parsed, record.id, "".join(parts), finish, num_prompt, stream.next_index
    )
    return JSONResponse(body)


async def _sse(
    ctrl: Controller,
    stream: RequestStream,
    record: RequestRecord,
    parsed: ParsedRequest,
    exchange: Exchange,
) -> None:
    """Start the response and relay the stream as server-sent events, all but the
    closing `[DONE]`; the stream is closed and the request accounted whatever happens."""
    status = "aborted"
    is_first = True
    token = shapes.token_sse(parsed, record.id)
    try:
        await exchange.start_stream(_SSE_HEADERS)
        # One write per batch that arrived together from the instance.
        async for batch in stream.batches():
            parts: list[str] = []
            for event in batch:
                if event.type != EventType.TOKEN:
                    parts += _closing_chunks(record, parsed, event, is_first, stream.next_index)
                    status = "finished"
                elif is_first:
                    parts.append(shapes.sse(_first_chunk(record, parsed, event.text)))
                    is_first = False
                else:
                    parts.append(token(event.text))
            await exchange.write("".join(parts))
    except LlumctlError as exc:
        status = "failed"
        await exchange.write(shapes.sse(json.loads(bytes(error_response(exc).body))))
    finally:
        # A client that hung up cancels this; the abort must still go out.
        with anyio.CancelScope(shield=True):
            await stream.close()
        ctrl.finish(record, status)


def _first_chunk(record: RequestRecord, parsed: ParsedRequest, text: str) -> dict[str, Any]:
    """The first chunk of a stream (a chat stream's carries the assistant role)."""
    return shapes.chunk(parsed, record.id, text, None, is_first=True)


def _closing_chunks(
    record: RequestRecord,
    parsed: ParsedRequest,
    event: StreamEvent,
    is_first: bool,
    num_output: int,
) -> list[str]:
    """The chunks that end a stream: its finish reason and, if asked for, its usage (a chat
    stream that produced no token still opens with the role chunk)."""
    parts = []
    if is_first and parsed.kind == "chat":
        parts.append(shapes.sse(_first_chunk(record, parsed, "")))
    text = None if parsed.kind == "chat" else ""
    parts.append(shapes.sse(shapes.chunk(parsed, record.id, text, event.finish_reason)))
    record.num_prompt_tokens = event.num_prompt_tokens
    if parsed.include_usage:
        usage = shapes.usage_chunk(parsed, record.id, event.num_prompt_tokens, num_output)
        parts.append(shapes.sse(usage))
    return parts
