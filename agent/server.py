"""The agent: one per host. Starts and stops instances on the controller's instruction,
supervises them, serves their logs, and registers with the controller.

Registration is repeated every `heartbeat_s` with the full list of hosted instances, so a
restarted controller learns the cluster again within one heartbeat, and a crashed
instance (state `failed`) is reported at once. Sim instances are served by this agent's
HTTP server under `/instances/{id}`; vLLM instances run as child processes with their own
port (docs/architecture.md, "Agent API").
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from agent.agent_config import AgentConfig
from agent.hosting import Hosted, ProcessHosted, SimHosted, vllm_argv
from llumctl import __version__
from llumctl.errors import AuthError, InputError, LlumctlError, NotFoundError
from llumctl.protocol import InstanceInfo, bearer, to_json_dict

log = logging.getLogger("agent")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.instances: dict[str, Hosted] = {}
        self.num_registrations = 0
        self._http = httpx.AsyncClient(headers=bearer(config.secret), timeout=5.0)
        self._beat = asyncio.Event()
        self._reported_failures: set[str] = set()
        self.on_shutdown: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.config.advertise_host}:{self.config.port}"

    def infos(self) -> list[InstanceInfo]:
        return [h.info for h in self.instances.values()]

    # ---- instances ---------------------------------------------------------------------
    async def create(self, body: dict[str, Any]) -> InstanceInfo:
        engine = body.get("engine", "sim")
        model = body.get("model")
        if engine not in ("sim", "vllm"):
            raise InputError("engine must be 'sim' or 'vllm'")
        if not isinstance(model, str) or not model:
            raise InputError("'model' is required")
        args = body.get("engine_args") or {}
        if not isinstance(args, dict):
            raise InputError("'engine_args' must be an object")
        iid = str(body.get("instance_id") or f"{self.config.agent_id}-{uuid.uuid4().hex[:6]}")
        if iid in self.instances:
            existing = self.instances[iid]
            if existing.info.state not in ("failed", "stopped"):
                raise InputError(f"instance {iid!r} already exists")
            await self.delete(iid)
        if len(self.instances) >= self.config.max_instances:
            raise InputError(f"agent {self.config.agent_id} is full ({len(self.instances)})")
        hosted = self._hosted(iid, engine, model, args, self._device(body.get("device")))
        self.instances[iid] = hosted
        try:
            await hosted.start()
        except LlumctlError:
            self.instances.pop(iid, None)
            raise
        log.info("instance %s (%s, %s) %s", iid, engine, model, hosted.info.state)
        self._beat.set()
        return hosted.info

    def _hosted(
        self, iid: str, engine: str, model: str, args: dict[str, Any], device: str
    ) -> Hosted:
        cfg = self.config
        ctx = {
            "controller_url": cfg.controller_url,
            "secret": cfg.secret,
            "bind": cfg.bind,
            "agent_id": cfg.agent_id,
        }
        if engine == "sim":
            info = self._info(iid, "sim", model, f"{self.url}/instances/{iid}", device)
            return SimHosted(info, args, ctx)
        port = cfg.free_port()
        url = f"http://{cfg.advertise_host}:{port}/instances/{iid}"
        info = self._info(iid, "vllm", model, url, device, state="starting")
        env = {"LLUMCTL_SECRET": cfg.secret, **{str(k): str(v) for k, v in cfg.env.items()}}
        env.update({str(k): str(v) for k, v in (args.get("env") or {}).items()})
        args = {k: v for k, v in args.items() if k != "env"}
        if device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
        return ProcessHosted(
            info, vllm_argv(info, port, args, ctx), env, cfg.workdir / "logs" / f"{iid}.log"
        )

    def _info(
        self, iid: str, engine: str, model: str, url: str, device: str, state: str = "running"
    ) -> InstanceInfo:
        return InstanceInfo(
            instance_id=iid,
            url=url,
            engine=engine,
            model=model,
            host=self.config.advertise_host,
            device=device,
            agent_id=self.config.agent_id,
            state=state,
        )

    def _device(self, wanted: Any) -> str:
        if wanted:
            return str(wanted)
        used = {h.info.device for h in self.instances.values()}
        free = [d for d in self.config.devices if d not in used]
        return free[0] if free else ""

    async def delete(self, instance_id: str) -> None:
        hosted = self.instances.get(instance_id)
        if hosted is None:
            raise NotFoundError(f"unknown instance {instance_id!r}")
        await hosted.stop()
        self.instances.pop(instance_id, None)
        self._reported_failures.discard(instance_id)
        self._beat.set()

    async def shutdown(self) -> None:
        """Stop every instance (`POST /shutdown`, then again as the process exits)."""
        for iid in list(self.instances):
            with contextlib.suppress(LlumctlError):
                await self.delete(iid)

    async def close(self) -> None:
        """Last, once the registration loop is done: it may still be calling the controller
        after a `POST /shutdown` (each stopped instance wakes it), never after this."""
        await self.shutdown()
        await self._http.aclose()

    # ---- supervision and registration ------------------------------------------------------
    def supervise(self) -> None:
        """Mark crashed instances failed (kept listed, so the controller hears of it)."""
        for iid, hosted in self.instances.items():
            reason = hosted.failure()
            if reason and hosted.info.state != "failed":
                hosted.set_failed(reason)
                log.error("instance %s failed: %s", iid, reason)
                self._beat.set()

    async def register(self) -> bool:
        body = {
            "agent_id": self.config.agent_id,
            "url": self.url,
            "host": self.config.advertise_host,
            "devices": list(self.config.devices),
            "max_instances": self.config.max_instances,
            "instances": [to_json_dict(i) for i in self.infos()],
            "version": __version__,
        }
        try:
            resp = await self._http.post(f"{self.config.controller_url}/internal/agents", json=body)
        except httpx.HTTPError as exc:
            log.debug("controller unreachable: %s", exc)
            return False
        if resp.status_code == 200:
            self.num_registrations += 1
            return True
        log.warning("controller refused registration: %s %s", resp.status_code, resp.text[:200])
        return False

    async def run(self) -> None:
        while True:
            self.supervise()
            if self.config.controller_url:
                await self.register()
            self._beat.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._beat.wait(), self.config.heartbeat_s)


def create_app(config: AgentConfig) -> Any:
    """The agent's ASGI app: its API, plus the sim instances it hosts."""
    agent = Agent(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(agent.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await agent.close()

    api = FastAPI(title="llumctl agent", lifespan=lifespan)
    api.state.agent = agent
    _routes(api, agent)
    return InstanceRouter(api, agent)


def _routes(api: FastAPI, agent: Agent) -> None:
    # async: a sync dependency would cost a thread-pool hop on every call.
    async def check(request: Request) -> None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given, agent.config.secret):
            raise AuthError("missing or wrong cluster secret")

    auth = [Depends(check)]

    @api.exception_handler(LlumctlError)
    async def _error(request: Request, exc: LlumctlError) -> JSONResponse:
        body = {"error": {"message": str(exc), "type": type(exc).__name__}}
        return JSONResponse(body, status_code=exc.http_status)

    @api.get("/health", dependencies=auth)
    async def health() -> dict[str, Any]:
        return {
            "agent_id": agent.config.agent_id,
            "host": agent.config.advertise_host,
            "version": __version__,
            "instances": [to_json_dict(i) for i in agent.infos()],
        }

    @api.post("/instances", dependencies=auth)
    async def create(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise InputError("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InputError("request body must be a JSON object")
        info: dict[str, Any] = to_json_dict(await agent.create(body))
        return info

    @api.delete("/instances/{instance_id}", dependencies=auth)
    async def delete(instance_id: str) -> dict[str, Any]:
        await agent.delete(instance_id)
        return {"instance_id": instance_id, "state": "stopped"}

    @api.get("/instances/{instance_id}/logs", dependencies=auth)
    async def logs(instance_id: str, tail: int = 200) -> PlainTextResponse:
        hosted = agent.instances.get(instance_id)
        if hosted is None:
            raise NotFoundError(f"unknown instance {instance_id!r}")
        return PlainTextResponse(hosted.logs(max(1, min(tail, 100_000))))

    @api.post("/shutdown", dependencies=auth)
    async def shutdown() -> dict[str, Any]:
        await agent.shutdown()
        if agent.on_shutdown is not None:
            agent.on_shutdown()
        return {"stopped": True}


class InstanceRouter:
    """ASGI front: `/instances/{id}/...` of a hosted sim instance goes to that instance's
    app (mounted there, like a Starlette Mount); everything else to the agent API."""

    def __init__(self, api: FastAPI, agent: Agent) -> None:
        self.api = api
        self.agent = agent

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            parts = scope["path"].split("/", 4)
            if len(parts) >= 4 and parts[1] == "instances" and parts[3] != "logs":
                hosted = self.agent.instances.get(parts[2])
                asgi = getattr(hosted, "asgi", None)
                if asgi is not None:
                    prefix = f"/instances/{parts[2]}"
                    root = scope.get("root_path", "") + prefix
                    await asgi({**scope, "root_path": root}, receive, send)
                    return
        await self.api(scope, receive, send)
