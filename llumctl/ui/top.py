"""The `llumctl top` screen: a pure function of a `TopSnapshot` and the terminal size.

Fits 80×24 (compact columns: host and device share one; fewer recent migrations) and uses
the room of wide terminals (separate columns, more history). Rows that do not fit are
counted, never silently dropped.
"""

from __future__ import annotations

import math

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from llumctl.ui.snapshot import InstanceRow, MigrationRow, TopSnapshot

WIDE = 120


def _fmt_free(value: float) -> str:
    if not math.isfinite(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:.1f}"


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _instances_table(snap: TopSnapshot, width: int, max_rows: int) -> Table:
    wide = width >= WIDE
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, padding=(0, 1))
    table.add_column("INSTANCE", no_wrap=True, overflow="ellipsis", ratio=3)
    if wide:
        table.add_column("HOST", no_wrap=True, overflow="ellipsis", ratio=2)
        table.add_column("DEVICE", no_wrap=True, overflow="ellipsis", ratio=1)
    else:
        table.add_column("HOST/DEV", no_wrap=True, overflow="ellipsis", ratio=3)
    table.add_column("ENG", no_wrap=True, min_width=4)
    table.add_column("STATE", no_wrap=True, overflow="ellipsis", min_width=5)
    table.add_column("RUN/Q", justify="right", no_wrap=True)
    table.add_column("KV" if not wide else "KV USED", justify="right", no_wrap=True)
    table.add_column("FREE", justify="right", no_wrap=True)
    table.add_column("TOK/S", justify="right", no_wrap=True)
    rows = snap.instances
    shown = rows if len(rows) <= max_rows else rows[: max(1, max_rows - 1)]
    for r in shown:
        table.add_row(*_instance_cells(r, wide))
    if len(shown) < len(rows):
        table.add_row(f"… {len(rows) - len(shown)} more", *([""] * (len(table.columns) - 1)))
    return table


def _instance_cells(r: InstanceRow, wide: bool) -> list[str]:
    where = [r.host, r.device] if wide else [f"{r.host}/{r.device}" if r.device else r.host]
    kv = f"{r.kv_used_blocks}/{r.kv_total_blocks}" if wide else f"{100 * r.kv_fraction:.0f}%"
    return [
        r.id,
        *where,
        r.engine,
        r.state,
        f"{r.running}/{r.queued}",
        kv,
        _fmt_free(r.freeness),
        f"{r.tokens_per_s:.0f}",
    ]


def _migration_line(m: MigrationRow) -> Text:
    text = Text(f"{m.request_id} {m.src}→{m.dst} ")
    if m.status == "in-flight":
        text.append("in flight", style="yellow")
    elif m.status == "committed":
        text.append(f"done, downtime {_fmt_ms(m.downtime_ms)} ms", style="green")
    else:
        text.append(f"{m.status} ({m.reason or '?'})", style="red")
    return text


def _latency_line(snap: TopSnapshot) -> Text:
    parts = []
    for name in ("ttft", "tpot"):
        p = snap.latency_ms.get(name) or snap.latency_ms.get(f"{name}_ms") or {}
        parts.append(
            f"{name.upper()} p50 {_fmt_ms(p.get('p50'))} p90 {_fmt_ms(p.get('p90'))} p99 {_fmt_ms(p.get('p99'))} ms"
        )
    return Text("  ".join(parts), no_wrap=True, overflow="ellipsis")


def render_top(snap: TopSnapshot, width: int = 80, height: int = 24) -> RenderableType:
    """The whole screen for a terminal of `width` × `height`."""
    header = Text(no_wrap=True, overflow="ellipsis")
    header.append("llumctl top", style="bold")
    if any(r.engine == "sim" for r in snap.instances):
        header.append("  [sim: simulated engines]", style="magenta")
    header.append(f"  {snap.controller}  inst {len(snap.instances)}  req {snap.num_requests}")
    header.append(f"  sort {snap.sort_key}")
    parts: list[RenderableType] = [header]
    if snap.error:
        parts.append(Text(f"! {snap.error}", style="red", no_wrap=True, overflow="ellipsis"))
    # Fixed lines: header, error, table head (2) + bottom, latency, section titles.
    num_recent = 2 if height < 30 else 8
    num_flying = min(len(snap.migrations_in_flight), 3 if height < 30 else 8)
    budget = (
        height
        - 9
        - num_flying
        - min(num_recent, len(snap.migrations_recent))
        - (1 if snap.error else 0)
    )
    budget -= min(len(snap.scaling_events), 1 if height < 30 else 4)
    parts.append(_instances_table(snap, width, max(1, budget)))
    parts.append(_latency_line(snap))
    title = Text(
        f"migrations: {len(snap.migrations_in_flight)} in flight", style="bold", no_wrap=True
    )
    parts.append(title)
    parts.extend(_migration_line(m) for m in snap.migrations_in_flight[:num_flying])
    parts.extend(_migration_line(m) for m in snap.migrations_recent[:num_recent])
    if snap.scaling_events:
        limit = 1 if height < 30 else 4
        parts.append(
            Text(
                "scaling: " + "; ".join(snap.scaling_events[:limit]),
                no_wrap=True,
                overflow="ellipsis",
            )
        )
    parts.append(Text("q quit  s sort (id/freeness/running/kv/tokens)", style="dim", no_wrap=True))
    return Group(*parts)
