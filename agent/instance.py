"""The instance API over HTTP (docs/architecture.md, "Instance API"), and the entry point
of a vLLM instance process:

    python -m agent.instance --instance-id i0 --model DIR --port 7101 \
        [--engine-args '{"num_gpu_blocks_override": 128}'] [--controller-url URL]

The secret comes from --secret-file or the LLUMCTL_SECRET environment variable.
`create_app(instance)` builds the routes for one `Instance` (any engine); the process (and
the agent, for sim instances) mounts it under `/instances/{id}`.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agent.runtime import Instance
from agent.streams import RequestStream
from llumctl.errors import AuthError, InputError, LlumctlError
from llumctl.heap import freeze_startup_heap
from llumctl.listen import bind_tcp, server_config
from llumctl.logsetup import setup_logging
from llumctl.protocol import (
    GenerateRequest,
    from_json_dict,
    to_compact_json_dict,
    to_json_dict,
)

log = logging.getLogger(__name__)


def error_response(exc: LlumctlError) -> JSONResponse:
    body = {"message": str(exc), "type": type(exc).__name__}
    reason = getattr(exc, "reason", None)
    if reason:
        body["reason"] = reason
    return JSONResponse({"error": body}, status_code=exc.http_status)


async def _body(request: Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InputError("the request body is not valid JSON") from None


def _ndjson(stream: RequestStream, from_index: int) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        # One write per batch of ready events; default-valued fields left out (the
        # controller decodes every line, so smaller is cheaper on both sides).
        async for batch in stream.batches(from_index):
            text = "".join(
                json.dumps(to_compact_json_dict(e), separators=(",", ":")) + "\n" for e in batch
            )
            yield text.encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def create_app(instance: Instance) -> FastAPI:
    # async: a sync dependency would cost a thread-pool hop on every request.
    async def auth(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {instance.secret}".encode()):
            raise AuthError("missing or wrong cluster secret")

    app = FastAPI(dependencies=[Depends(auth)])
    app.add_exception_handler(LlumctlError, lambda _r, exc: error_response(exc))

    @app.post("/generate")
    async def generate(request: Request) -> StreamingResponse:
        try:
            req = from_json_dict(GenerateRequest, await _body(request))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return _ndjson(await instance.submit(req), 0)

    @app.get("/requests/{rid}/stream")
    async def attach(rid: str, request: Request) -> StreamingResponse:
        raw = request.query_params.get("from", "0")
        if not raw.isdigit():
            raise InputError("from must be a non-negative integer")
        stream = instance.streams.get(rid)
        if int(raw) < stream.first_index:
            raise InputError(f"tokens before index {stream.first_index} are not on this instance")
        return _ndjson(stream, int(raw))

    @app.post("/requests/{rid}/abort")
    async def abort(rid: str) -> dict[str, Any]:
        await instance.abort(rid)
        return {"ok": True}

    @app.get("/requests")
    async def requests() -> list[dict[str, Any]]:
        return instance.list_requests()

    @app.get("/load")
    async def load() -> Any:
        return to_json_dict(instance.report())

    @app.post("/drain")
    async def drain(request: Request) -> dict[str, Any]:
        instance.is_draining = bool((await _body(request)).get("draining", True))
        return {"draining": instance.is_draining}

    @app.put("/report-target")
    async def report_target(request: Request) -> dict[str, Any]:
        url = (await _body(request)).get("url")
        if url is not None and not isinstance(url, str):
            raise InputError("url must be a string or null")
        instance.controller_url = url.rstrip("/") if url else None
        return {"url": instance.controller_url}

    @app.post("/migrate")
    async def migrate(request: Request) -> dict[str, Any]:
        body = await _body(request)
        if not isinstance(body, dict):
            raise InputError("migrate body must be an object")
        results = await instance.migrate_out(body)
        return {"results": [to_json_dict(r) for r in results]}

    _add_migrate_in_routes(app, instance)
    return app


def _add_migrate_in_routes(app: FastAPI, instance: Instance) -> None:
    dst = instance.destination

    @app.post("/migrate-in/reserve")
    async def reserve(request: Request) -> dict[str, Any]:
        body = await _body(request)
        if not isinstance(body, dict) or "migration_id" not in body or "request_id" not in body:
            raise InputError("reserve needs migration_id, request_id, num_blocks")
        fingerprint = instance.spec.fingerprint if instance.spec else ""
        reply = await dst.reserve(body, fingerprint)
        return {**reply, "kv_address": instance.kv_address}

    @app.post("/migrate-in/{mid}/resume")
    async def resume(mid: str, request: Request) -> dict[str, Any]:
        return await dst.resume(mid, await _body(request))

    @app.post("/migrate-in/{mid}/cancel")
    async def cancel(mid: str) -> dict[str, Any]:
        await dst.cancel(mid)
        return {"ok": True}


# ---- process entry point ---------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent.instance")
    p.add_argument("--instance-id", required=True)
    p.add_argument("--model", required=True, help="local HF directory or hub id")
    p.add_argument("--engine", default="vllm", choices=["vllm"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--engine-args", default="{}", help="JSON object of vLLM engine args")
    p.add_argument("--secret-file", default=None)
    p.add_argument("--controller-url", default=None)
    p.add_argument("--migration-idle-timeout-s", type=float, default=30.0)
    return p.parse_args(argv)


def _secret(args: argparse.Namespace) -> str:
    if args.secret_file:
        with open(args.secret_file) as f:
            return f.read().strip()
    secret = os.environ.get("LLUMCTL_SECRET", "")
    if not secret:
        raise InputError("give --secret-file or set LLUMCTL_SECRET")
    return secret


async def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from agent.engines.vllm.engine import VllmEngine

    try:
        engine_args = json.loads(args.engine_args)
    except ValueError:
        raise InputError("--engine-args must be a JSON object") from None
    base = f"/instances/{args.instance_id}"
    # Held from now (the engine loads for tens of seconds); served once it is ready.
    sock = bind_tcp(args.host, args.port)
    instance = Instance(
        args.instance_id,
        VllmEngine(args.model, engine_args),
        _secret(args),
        url=f"http://{args.host}:{args.port}{base}",
        host=args.host,
        controller_url=args.controller_url,
        migration_idle_timeout_s=args.migration_idle_timeout_s,
    )
    await instance.start()
    # After the engine's load: its objects are most of this process's heap.
    num_frozen = freeze_startup_heap()
    log.info("froze %d start-up objects out of the garbage collector", num_frozen)
    root = FastAPI()
    root.mount(base, create_app(instance))
    try:
        await uvicorn.Server(server_config(root, args.host, args.port)).serve(sockets=[sock])
    finally:
        await instance.shutdown()


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    try:
        asyncio.run(serve(_parse(sys.argv[1:] if argv is None else argv)))
    except LlumctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
