"""The control API (cluster secret required): status, requests, events, migrate, drain,
scale, policy. A call without the right secret is refused with 401 before anything runs."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from llumctl.controller import events as ev
from llumctl.controller.app import Controller
from llumctl.controller.metrics import percentiles
from llumctl.controller.openai_api import decode_body
from llumctl.controller.state import InstanceEntry, group_key
from llumctl.errors import AuthError, InputError, MigrationError, NotFoundError
from llumctl.policy import POLICY_NAMES, get_policy


def require_secret(ctrl: Controller):  # type: ignore[no-untyped-def]
    # async: a sync dependency would cost a thread-pool hop on every call (load reports).
    async def check(request: Request) -> None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not ctrl.config.secret or not hmac.compare_digest(given, ctrl.config.secret):
            raise AuthError("missing or wrong cluster secret")

    return check


def register(app: FastAPI, ctrl: Controller) -> None:
    auth = [Depends(require_secret(ctrl))]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # policy_ticks: the policy loop runs (it lives in the app's lifespan, which a
        # server could skip); a monitor sees it grow once per policy period.
        return {
            "status": "ok",
            "instances": len(ctrl.state.live()),
            "policy": ctrl.policy.name,
            "policy_ticks": ctrl.loop.num_ticks,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        body = ctrl.metrics.render(ctrl.state, ctrl.score)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/status", dependencies=auth)
    async def status() -> dict[str, Any]:
        return status_body(ctrl)

    @app.get("/api/instances", dependencies=auth)
    async def instances() -> list[dict[str, Any]]:
        return [instance_json(ctrl, e) for e in sorted(ctrl.state.instances.values(), key=_id)]

    @app.get("/api/requests", dependencies=auth)
    async def requests() -> list[dict[str, Any]]:
        return [r.to_json() for r in ctrl.state.requests.values()]

    @app.get("/api/events", dependencies=auth)
    async def events(since: int = 0, kind: str | None = None) -> dict[str, Any]:
        return {"last_seq": ctrl.events.last_seq, "events": ctrl.events.since(since, kind)}

    _action_routes(app, ctrl, auth)


def _action_routes(app: FastAPI, ctrl: Controller, auth: list[Any]) -> None:
    @app.post("/api/migrate", dependencies=auth)
    async def migrate(request: Request) -> dict[str, Any]:
        return await _migrate(ctrl, decode_body(await request.body()))

    @app.post("/api/drain", dependencies=auth)
    async def drain(request: Request) -> dict[str, Any]:
        body = decode_body(await request.body())
        instance = _str(body, "instance")
        await ctrl.actuator.drain(instance, stop_when_empty=bool(body.get("stop", False)))
        return {"instance": instance, "draining": True}

    @app.post("/api/scale", dependencies=auth)
    async def scale(request: Request) -> dict[str, Any]:
        body = decode_body(await request.body())
        target = body.get("instances")
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            raise InputError("'instances' must be a non-negative integer")
        return await ctrl.actuator.scale_to(_model(ctrl, body.get("model")), target)

    @app.get("/api/policy", dependencies=auth)
    async def policy() -> dict[str, Any]:
        return policy_body(ctrl)

    @app.put("/api/policy", dependencies=auth)
    async def set_policy(request: Request) -> dict[str, Any]:
        body = decode_body(await request.body())
        name = body.get("name") or ctrl.policy.name
        if name not in POLICY_NAMES:
            raise InputError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
        params = body.get("params") or {}
        period = params.pop("policy_period_s", None) if isinstance(params, dict) else None
        if not isinstance(params, dict):
            raise InputError("'params' must be an object")
        try:
            new_params = ctrl.policy.params.with_updates(params)
            period_s = float(period) if period is not None else ctrl.policy_period_s
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if period_s <= 0:
            raise InputError("policy_period_s must be positive")
        ctrl.policy = get_policy(name, new_params)
        ctrl.policy_period_s = period_s
        ctrl.events.add(ev.POLICY, action="set", policy=name, params=params)
        return policy_body(ctrl)


def _id(entry: InstanceEntry) -> str:
    return entry.id


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"'{key}' is required (a string)")
    return value


def _model(ctrl: Controller, model: Any) -> str:
    if model is not None:
        if not isinstance(model, str):
            raise InputError("'model' must be a string")
        return model
    models = sorted(ctrl.state.models() | {m.name for m in ctrl.config.models})
    if len(models) != 1:
        raise InputError(f"several models are served ({', '.join(models)}): name one")
    return models[0]


async def _migrate(ctrl: Controller, body: dict[str, Any]) -> dict[str, Any]:
    to = body.get("to")
    if to is not None and not isinstance(to, str):
        raise InputError("'to' must be an instance id")
    request_ids: tuple[str, ...] = ()
    if body.get("request_id") is not None:
        rid = _str(body, "request_id")
        record = ctrl.state.requests.get(rid)
        if record is None or record.state not in ("queued", "running"):
            raise NotFoundError(f"no running request {rid!r}")
        src, count = record.instance, 1
        request_ids = (rid,)
    else:
        src = _str(body, "from")
        count = body.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InputError("'count' must be a positive integer")
    dst = to or _freest_peer(ctrl, src)
    results = await ctrl.actuator.migrate(
        src, dst, request_ids=request_ids, count=count, trigger="operator"
    )
    return {"src": src, "dst": dst, "results": results}


def _freest_peer(ctrl: Controller, src: str) -> str:
    """Default destination: the freest other instance of the source's serving group."""
    source = ctrl.actuator.entry(src)
    peers = [
        e
        for e in ctrl.state.live()
        if e.id != src and not e.is_draining and group_key(e.info) == group_key(source.info)
    ]
    if not peers:
        raise MigrationError(f"no other instance can take requests from {src}", "no-destination")
    return max(peers, key=lambda e: (ctrl.score(e), e.id)).id


def instance_json(ctrl: Controller, entry: InstanceEntry) -> dict[str, Any]:
    load = entry.load
    freeness = ctrl.score(entry) if load is not None else None
    state = "draining" if entry.is_draining and entry.info.state == "running" else entry.info.state
    return {
        "id": entry.id,
        "host": entry.info.host,
        "engine": entry.info.engine,
        "model": entry.info.model,
        "url": entry.info.url,
        "agent": entry.info.agent_id,
        "device": entry.info.device,
        "state": state,
        "running": len(load.running) if load else 0,
        "queued": len(load.queued) if load else 0,
        "preempted": load.num_preempted if load else 0,
        "preemptions_observed": entry.num_preemptions_observed,
        "kv_used_blocks": load.num_used_blocks if load else 0,
        "kv_total_blocks": load.num_total_blocks if load else 0,
        "freeness": _finite(freeness),
        "tokens_per_s": entry.tokens_per_s,
        "fingerprint": entry.info.fingerprint,
    }


def _finite(value: float | None) -> float | str | None:
    if value is None or value == value and abs(value) != float("inf"):
        return value
    return str(value)


def status_body(ctrl: Controller) -> dict[str, Any]:
    active = [r for r in ctrl.state.requests.values() if r.state in ("queued", "running")]
    return {
        "controller": ctrl.config.url,
        "policy": ctrl.policy.name,
        "instances": [
            instance_json(ctrl, e) for e in sorted(ctrl.state.instances.values(), key=_id)
        ],
        "requests": [r.to_json() for r in active],
        # Listed as failed by their agents: never took (or no longer take) requests.
        "failed_instances": [
            {"id": iid, "agent": agent, "reason": reason}
            for iid, (agent, reason) in sorted(ctrl.state.failed.items())
        ],
        "agents": [
            {"id": a.agent_id, "url": a.url, "host": a.host, "max_instances": a.max_instances}
            for a in ctrl.state.agents.values()
        ],
        "migrations": ctrl.events.recent((ev.MIGRATION,)),
        "migrations_in_flight": list(ctrl.actuator.inflight.values()),
        "scaling": ctrl.events.recent((ev.SCALE_UP, ev.SCALE_DOWN)),
        "latency": {
            "ttft_ms": percentiles(ctrl.metrics.recent_ttft),
            "tpot_ms": percentiles(ctrl.metrics.recent_tpot),
        },
        "last_event_seq": ctrl.events.last_seq,
    }


def policy_body(ctrl: Controller) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "name": ctrl.policy.name,
        "params": {**asdict(ctrl.policy.params), "policy_period_s": ctrl.policy_period_s},
        "choices": list(POLICY_NAMES),
    }
