"""What `llumctl top` shows, as plain data built from the control API's JSON.

Kept apart from the renderer so both are pure: `build_snapshot` turns API answers into a
`TopSnapshot`, `render_top` (top.py) turns a snapshot into a rich renderable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SORT_KEYS = ("id", "freeness", "running", "kv", "tokens")
TERMINAL = ("committed", "aborted", "failed")


@dataclass(frozen=True)
class InstanceRow:
    id: str
    host: str = ""
    device: str = ""
    # "vllm" or "sim" (sim is shown as such, never as a real engine).
    engine: str = ""
    state: str = ""
    running: int = 0
    queued: int = 0
    kv_used_blocks: int = 0
    kv_total_blocks: int = 0
    freeness: float = 0.0
    tokens_per_s: float = 0.0

    @property
    def kv_fraction(self) -> float:
        return self.kv_used_blocks / self.kv_total_blocks if self.kv_total_blocks else 0.0


@dataclass(frozen=True)
class MigrationRow:
    request_id: str
    src: str
    dst: str
    # "in-flight", "committed", "aborted".
    status: str
    downtime_ms: float | None = None
    reason: str = ""
    time: float = 0.0


@dataclass(frozen=True)
class TopSnapshot:
    controller: str
    instances: tuple[InstanceRow, ...] = ()
    migrations_in_flight: tuple[MigrationRow, ...] = ()
    migrations_recent: tuple[MigrationRow, ...] = ()
    # "ttft"/"tpot" -> {"p50": ms, "p90": ms, "p99": ms} (None = no sample yet).
    latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    scaling_events: tuple[str, ...] = ()
    num_requests: int = 0
    sort_key: str = "id"
    error: str = ""


def _num(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out


def _instance(data: dict[str, Any], extra: dict[str, Any]) -> InstanceRow:
    merged = {**extra, **data}
    return InstanceRow(
        id=str(merged.get("id") or merged.get("instance_id", "?")),
        host=str(merged.get("host", "")),
        device=str(merged.get("device", "")),
        engine=str(merged.get("engine", "")),
        state=str(merged.get("state", "")),
        running=int(_num(merged.get("running"))),
        queued=int(_num(merged.get("queued"))),
        kv_used_blocks=int(_num(merged.get("kv_used_blocks"))),
        kv_total_blocks=int(_num(merged.get("kv_total_blocks"))),
        freeness=_num(merged.get("freeness")),
        tokens_per_s=_num(merged.get("tokens_per_s")),
    )


def _migrations(
    events: list[dict[str, Any]], limit: int
) -> tuple[list[MigrationRow], list[MigrationRow]]:
    latest: dict[str, MigrationRow] = {}
    done: list[MigrationRow] = []
    for e in events:
        if e.get("kind") != "migration":
            continue
        status = str(e.get("status", "in-flight"))
        row = MigrationRow(
            request_id=str(e.get("request_id") or e.get("request") or "?"),
            src=str(e.get("src", e.get("from", "?"))),
            dst=str(e.get("dst", e.get("to", "?"))),
            status=status if status in TERMINAL else "in-flight",
            downtime_ms=_num(e["downtime_ms"]) if e.get("downtime_ms") is not None else None,
            reason=str(e.get("reason", "")),
            time=_num(e.get("time")),
        )
        latest[row.request_id] = row
        if row.status != "in-flight":
            done.append(row)
    flying = [r for r in latest.values() if r.status == "in-flight"]
    return flying, done[-limit:][::-1]


def _flying(m: dict[str, Any]) -> MigrationRow:
    return MigrationRow(
        request_id=str(m.get("request_id") or m.get("request") or "?"),
        src=str(m.get("src", "?")),
        dst=str(m.get("dst", "?")),
        status="in-flight",
    )


def _scaling(events: list[dict[str, Any]], limit: int) -> list[str]:
    out = []
    for e in events:
        kind = str(e.get("kind", ""))
        if kind in ("scale-up", "scale-down"):
            what = e.get("instance") or e.get("instances") or e.get("n") or ""
            out.append(f"{kind} {what}".strip())
    return out[-limit:][::-1]


def build_snapshot(
    controller: str,
    status: dict[str, Any],
    instances: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None,
    sort_key: str = "id",
) -> TopSnapshot:
    """A snapshot from `/api/status`, `/api/instances` (device, tokens/s) and `/api/events`."""
    extra = {str(i.get("id") or i.get("instance_id")): i for i in (instances or [])}
    rows = [_instance(i, extra.get(str(i.get("id")), {})) for i in status.get("instances", [])]
    flying, done = _migrations(events or status.get("migrations", []), 8)
    # The controller may list migrations in flight explicitly; they win over the events.
    flying = [_flying(m) for m in status.get("migrations_in_flight", [])] or flying
    latency = status.get("latency_ms") or status.get("latency") or {}
    return TopSnapshot(
        controller=str(status.get("controller", controller)),
        instances=tuple(sort_rows(rows, sort_key)),
        migrations_in_flight=tuple(flying),
        migrations_recent=tuple(done),
        latency_ms={k: dict(v) for k, v in latency.items() if isinstance(v, dict)},
        scaling_events=tuple(_scaling(events or status.get("scaling", []), 4)),
        num_requests=len(status.get("requests", [])),
        sort_key=sort_key,
    )


def sort_rows(rows: list[InstanceRow], key: str) -> list[InstanceRow]:
    """Sort for display; "freeness" puts the most loaded (lowest freeness) first."""
    if key == "freeness":
        return sorted(
            rows, key=lambda r: (r.freeness if math.isfinite(r.freeness) else -math.inf, r.id)
        )
    if key == "running":
        return sorted(rows, key=lambda r: (-r.running, -r.queued, r.id))
    if key == "kv":
        return sorted(rows, key=lambda r: (-r.kv_fraction, r.id))
    if key == "tokens":
        return sorted(rows, key=lambda r: (-r.tokens_per_s, r.id))
    return sorted(rows, key=lambda r: r.id)
