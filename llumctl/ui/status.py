"""Renderers for `llumctl status` (instances, requests) and the summary table of `up`."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "started": "green",
    "restarted": "yellow",
    "updated": "yellow",
    "unchanged": "cyan",
    "failed": "red",
}


def render_status(data: dict[str, Any]) -> RenderableType:
    """The `/api/status` object as two tables."""
    inst = Table(
        title=f"controller {data.get('controller', '?')}", box=box.SIMPLE_HEAD, title_justify="left"
    )
    for col in ("instance", "host", "engine", "state", "run/queued", "kv blocks", "freeness"):
        inst.add_column(
            col,
            no_wrap=True,
            justify="right" if col in ("run/queued", "kv blocks", "freeness") else "left",
        )
    for i in data.get("instances", []):
        inst.add_row(
            str(i.get("id")),
            str(i.get("host", "")),
            str(i.get("engine", "")),
            str(i.get("state", "")),
            f"{i.get('running', 0)}/{i.get('queued', 0)}",
            f"{i.get('kv_used_blocks', 0)}/{i.get('kv_total_blocks', 0)}",
            _free(i.get("freeness")),
        )
    reqs = Table(box=box.SIMPLE_HEAD)
    for col in ("request", "instance", "state", "tokens"):
        reqs.add_column(col, no_wrap=True)
    for r in data.get("requests", []):
        reqs.add_row(
            str(r.get("id")), str(r.get("instance")), str(r.get("state")), str(r.get("tokens"))
        )
    parts: list[RenderableType] = [inst]
    for f in data.get("failed_instances", []):
        parts.append(Text(f"failed: {f.get('id')} ({f.get('agent')}): {f.get('reason')}"))
    num = len(data.get("requests", []))
    parts.append(Text(f"{num} request(s) in flight"))
    if num:
        parts.append(reqs)
    return Group(*parts)


def _free(value: Any) -> str:
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return str(value)


def render_up_summary(result: Any) -> RenderableType:
    """One row per host (status, agent, instances, reason) after `llumctl up`."""
    ctrl = result.controller
    title = (
        f"controller {ctrl.url} on {ctrl.host}: {ctrl.status}"
        if ctrl
        else "no host reachable: nothing started"
    )
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for col in ("host", "status", "agent", "instances", "reason"):
        table.add_column(col, overflow="fold")
    for h in result.hosts:
        style = STATUS_STYLE.get(h.status, "")
        table.add_row(
            h.name,
            Text(h.status, style=style),
            f"{h.agent_url} pid {h.agent_pid}" if h.agent_pid else h.agent_url,
            ", ".join(h.instances),
            h.reason,
        )
    return table
