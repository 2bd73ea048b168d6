"""Internal endpoints agents and llumlets push to (cluster secret required).

- `POST /internal/agents`: an agent's registration, repeated as its heartbeat, with the
  instances it hosts (a crashed one reported `failed`);
- `POST /internal/load`: a llumlet's `LoadReport`.
Both upsert: this is how a restarted controller rebuilds the whole cluster.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request

from llumctl.controller import events as ev
from llumctl.controller.app import Controller
from llumctl.controller.openai_api import decode_body
from llumctl.controller.routes_control import require_secret
from llumctl.controller.state import AgentEntry
from llumctl.errors import InputError
from llumctl.protocol import InstanceInfo, LoadReport, from_json_dict


def register(app: FastAPI, ctrl: Controller) -> None:
    auth = [Depends(require_secret(ctrl))]

    @app.post("/internal/agents", dependencies=auth)
    async def agent(request: Request) -> dict[str, Any]:
        body = decode_body(await request.body())
        try:
            agent = AgentEntry(
                agent_id=str(body["agent_id"]),
                url=str(body["url"]),
                host=str(body.get("host", "")),
                devices=tuple(str(d) for d in body.get("devices", ())),
                max_instances=int(body.get("max_instances", 1)),
            )
            infos = [from_json_dict(InstanceInfo, i) for i in body.get("instances", ())]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"bad agent registration: {exc}") from None
        _note_failures(ctrl, infos)  # before register_agent updates `state.failed`
        if ctrl.state.register_agent(agent, infos):
            ctrl.events.add(ev.INSTANCE_UP, agent=agent.agent_id, url=agent.url, what="agent")
        return {"registered": True, "controller": ctrl.config.url}

    @app.post("/internal/load", dependencies=auth)
    async def load(request: Request) -> dict[str, Any]:
        try:
            report = from_json_dict(LoadReport, decode_body(await request.body()))
        except ValueError as exc:
            raise InputError(f"bad load report: {exc}") from None
        if report.info.state in ("failed", "stopped"):
            return {"ok": True}
        if ctrl.state.apply_load(
            report.info, report.load, report.tokens_per_s, report.num_preemptions_total
        ):
            ctrl.events.add(
                ev.INSTANCE_UP,
                instance=report.info.instance_id,
                model=report.info.model,
                engine=report.info.engine,
                url=report.info.url,
            )
        return {"ok": True}


def _note_failures(ctrl: Controller, infos: list[InstanceInfo]) -> None:
    """Drop failed and stopped instances; a failure is an event once, with its reason
    (also for an instance that failed before it ever reported, e.g. at engine start)."""
    for info in infos:
        if info.state == "failed":
            reason = info.failure or "engine process died (agent report)"
            is_new = info.instance_id not in ctrl.state.failed
            if ctrl.state.remove_instance(info.instance_id) or is_new:
                ctrl.events.add(ev.FAILURE, instance=info.instance_id, reason=reason)
        elif info.state == "stopped":
            ctrl.state.remove_instance(info.instance_id)
