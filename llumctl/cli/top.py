"""`llumctl top`: the cluster live (rich Live, refreshed every --interval ≤ 1 s).

Keys: `s` cycles the sort key, `q` quits (Ctrl-C works too). The screen itself is the pure
`llumctl.ui.top.render_top`; this module only polls the controller and reads keys.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live

from llumctl.client import ControllerClient, controller_from_state
from llumctl.errors import InputError, LlumctlError
from llumctl.ui.snapshot import SORT_KEYS, TopSnapshot, build_snapshot
from llumctl.ui.top import render_top

CLUSTER_HELP = "State file of the cluster (default: $LLUMCTL_HOME/state.json, written by `up`)."
MAX_EVENTS = 500


class Poller:
    """Polls the control API and keeps the recent events between polls."""

    def __init__(self, client: ControllerClient) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        self.last_seq = 0

    def snapshot(self, sort_key: str) -> TopSnapshot:
        try:
            status = self.client.status()
            instances = self._optional("/api/instances")
            new = self.client.events(self.last_seq)
        except LlumctlError as exc:
            return TopSnapshot(controller=self.client.url, sort_key=sort_key, error=str(exc))
        if isinstance(new, dict):
            new = new.get("events", [])
        for e in new if isinstance(new, list) else []:
            self.last_seq = max(self.last_seq, int(e.get("seq", 0)))
            self.events.append(e)
        self.events = self.events[-MAX_EVENTS:]
        inst_list = instances.get("instances", []) if isinstance(instances, dict) else instances
        return build_snapshot(self.client.url, status, inst_list or [], self.events, sort_key)

    def _optional(self, path: str) -> Any:
        try:
            return self.client.request("GET", path)
        except LlumctlError:
            return []


@contextlib.contextmanager
def _cbreak() -> Iterator[bool]:
    """Single-key input when stdin is a terminal; yields whether keys can be read."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _sleep(seconds: float) -> str:
    """No keyboard (not a terminal): just wait; no key pressed."""
    time.sleep(seconds)
    return ""


def _read_key(timeout_s: float) -> str:
    ready, _, _ = select.select([sys.stdin], [], [], timeout_s)
    return os.read(sys.stdin.fileno(), 1).decode(errors="ignore") if ready else ""


def top(
    sort: str = typer.Option("id", "--sort", help=f"Sort instances by: {', '.join(SORT_KEYS)}."),
    interval: float = typer.Option(0.5, "--interval", help="Refresh period in seconds (<= 1)."),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Live view: instances, load, migrations (with downtime), latency, scaling."""
    if sort not in SORT_KEYS:
        raise InputError(f"unknown sort key {sort!r} (one of {', '.join(SORT_KEYS)})")
    if not 0.05 <= interval <= 1.0:
        raise InputError("--interval must be between 0.05 and 1 second")
    console = Console()
    with controller_from_state(cluster) as client:
        poller = Poller(client)
        if once:
            console.print(
                render_top(poller.snapshot(sort), console.size.width, console.size.height)
            )
            return
        _live(console, poller, sort, interval)


def _live(console: Console, poller: Poller, sort: str, interval: float) -> None:
    with _cbreak() as has_keys, Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            started = time.monotonic()
            size = console.size
            live.update(render_top(poller.snapshot(sort), size.width, size.height), refresh=True)
            wait = max(0.0, interval - (time.monotonic() - started))
            key = _read_key(wait) if has_keys else _sleep(wait)
            if key in ("q", "Q"):
                return
            if key in ("s", "S"):
                sort = SORT_KEYS[(SORT_KEYS.index(sort) + 1) % len(SORT_KEYS)]


def register(app: typer.Typer) -> None:
    app.command("top")(top)
