"""The controller: one object holding its state and parts, and the FastAPI app around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from llumctl.controller import events as ev
from llumctl.controller.actuator import Actuator
from llumctl.controller.asgi_front import AsgiFront
from llumctl.controller.clients import AgentClient, InstanceClient
from llumctl.controller.config import ControllerConfig
from llumctl.controller.dispatcher import Dispatcher, ModelNotFound
from llumctl.controller.events import EventLog
from llumctl.controller.metrics import Metrics
from llumctl.controller.openai_api import ParamError
from llumctl.controller.openai_shapes import error_body
from llumctl.controller.policy_loop import PolicyLoop
from llumctl.controller.state import ClusterState, InstanceEntry, RequestRecord
from llumctl.errors import AuthError, InputError, LlumctlError, MigrationError, NotFoundError
from llumctl.policy import Policy, get_policy

log = logging.getLogger("llumctl.controller")

# Finished requests kept for `GET /api/requests`.
MAX_NUM_FINISHED_REQUESTS = 1000


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.state = ClusterState(config.report_timeout_s)
        self.events = EventLog(config.max_events)
        self.metrics = Metrics()
        self.policy: Policy = get_policy(config.policy, config.params)
        self.policy_period_s = config.policy_period_s
        self.instance_client = InstanceClient(config.secret)
        self.agent_client = AgentClient(config.secret)
        self.dispatcher = Dispatcher(
            self.state, lambda: self.policy, self.events, self.metrics, config
        )
        self.actuator = Actuator(
            self.state, self.instance_client, self.agent_client, self.events, self.metrics, config
        )
        self.loop = PolicyLoop(
            self.state, lambda: self.policy, self.actuator, lambda: self.policy_period_s
        )
        self._finished: list[str] = []

    def score(self, entry: InstanceEntry) -> float:
        """The current policy's freeness of an instance, pending dispatches included."""
        view = self.state.view(by_group=False)
        load = next((i for i in view.instances if i.instance_id == entry.id), None)
        if load is None:
            return float("-inf")
        return self.policy.score(load, tuple(view.pending.get(entry.id, ())))

    def on_move(self, record: RequestRecord, src: str, dst: str, at: int) -> None:
        """A relayed stream followed its request to another instance."""
        record.history.append({"instance": dst, "from_index": at, "time": time.time()})

    def finish(self, record: RequestRecord, status: str) -> None:
        """Account a request that left the controller (finished, failed or aborted)."""
        if record.state in ("queued", "running"):
            record.state = status
        self.state.drop_pending(record.id)
        if record.instance:
            self.state.note_departed(record.instance, record.id)
        priority = "high" if int(record.priority) else "normal"
        self.metrics.requests.labels(record.model, record.state).inc()
        ttft = tpot = None
        if record.first_token_time is not None:
            ttft = record.first_token_time - record.arrival
            if record.num_tokens > 1 and record.last_token_time is not None:
                tpot = (record.last_token_time - record.first_token_time) / (record.num_tokens - 1)
        if record.state == "finished":
            self.metrics.observe_request(priority, ttft, tpot)
        self._finished.append(record.id)
        while len(self._finished) > MAX_NUM_FINISHED_REQUESTS:
            self.state.requests.pop(self._finished.pop(0), None)

    async def close(self) -> None:
        await self.loop.stop()
        await self.instance_client.close()
        await self.agent_client.close()


def create_app(config: ControllerConfig) -> AsgiFront:
    """The controller's ASGI app: FastAPI behind a plain ASGI front for the hot routes
    (`.app` is the FastAPI app, `.app.state.controller` the `Controller`)."""
    from llumctl.controller import routes_control, routes_internal, routes_openai

    controller = Controller(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(controller.loop.run())
        controller.events.add(ev.POLICY, action="start", policy=controller.policy.name)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await controller.close()

    app = FastAPI(title="llumctl controller", lifespan=lifespan)
    app.state.controller = controller
    routes_openai.register(app, controller)
    routes_control.register(app, controller)
    routes_internal.register(app, controller)
    _install_error_handlers(app)
    return AsgiFront(app, routes_openai.front_routes(controller), error_response)


def error_response(exc: Exception) -> JSONResponse:
    """Any error as OpenAI's JSON shape (also used by the control API)."""
    if isinstance(exc, LlumctlError):
        status, message = exc.http_status, str(exc)
    else:
        status, message = 500, "internal error"
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        409: "conflict_error",
    }.get(status, "server_error")
    code: Any = "model_not_found" if isinstance(exc, ModelNotFound) else None
    body = error_body(message, kind, getattr(exc, "param", None), code)
    if isinstance(exc, MigrationError):
        body["error"]["reason"] = exc.reason
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LlumctlError)
    async def _ours(request: Request, exc: LlumctlError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(ParamError(f"{where}: {first.get('msg', 'invalid')}", where))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err: LlumctlError = NotFoundError(str(exc.detail))
        if exc.status_code != 404:
            err = InputError(str(exc.detail))
            err.http_status = exc.status_code
        return error_response(err)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The caller gave up before its body was read (e.g. a load report timing out on a
        # stalled controller): nobody to answer and nothing was done. Its own handler, not
        # the catch-all below: Starlette re-raises what the catch-all handles, and the
        # server then logs a traceback per disconnect.
        log.info("client left before %s was read", request.url.path)
        return error_response(InputError("client disconnected"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(exc)
