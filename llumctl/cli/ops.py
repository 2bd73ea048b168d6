"""`llumctl migrate`, `drain`, `scale`, `policy`: operate a running cluster by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from llumctl.client import controller_from_state
from llumctl.errors import InputError

CLUSTER_HELP = "State file of the cluster (default: $LLUMCTL_HOME/state.json, written by `up`)."


def _echo_results(data: Any) -> None:
    """One line per migration result, or the controller's answer as it is."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        typer.echo(json.dumps(data) if not isinstance(data, str) else data)
        return
    for r in results:
        line = f"{r.get('request_id')}: {r.get('src')} -> {r.get('dst')} {r.get('status')}"
        if r.get("status") == "committed":
            line += f" (downtime {float(r.get('downtime_ms', 0.0)):.1f} ms, at token {r.get('at')})"
        elif r.get("reason"):
            line += f" ({r['reason']})"
        typer.echo(line)


def migrate(
    request: str | None = typer.Argument(None, help="Request id (the `id` its client sees)."),
    to: str | None = typer.Option(None, "--to", help="Destination instance (default: the freest)."),
    src: str | None = typer.Option(None, "--from", help="Move requests away from this instance."),
    count: int = typer.Option(1, "--count", min=1, help="With --from: how many requests."),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Live-migrate a running request (REQUEST --to B), or N requests (--from A --to B)."""
    if (request is None) == (src is None):
        raise InputError("give either a REQUEST id or --from INSTANCE (not both)")
    with controller_from_state(cluster) as controller:
        if request is not None:
            data = controller.migrate_request(request, to)
        else:
            assert src is not None
            data = controller.migrate_some(src, to, count)
    results = data.get("results", []) if isinstance(data, dict) else []
    if isinstance(data, dict) and isinstance(results, list) and not results:
        typer.echo(
            f"nothing migrated: no eligible running request on {data.get('src', src)}", err=True
        )
        raise typer.Exit(1)
    _echo_results(data)
    if results and all(r.get("status") != "committed" for r in results):
        raise typer.Exit(1)


def drain(
    instance: str = typer.Argument(..., help="Instance id."),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Drain an instance: its requests migrate away and it takes no new ones."""
    with controller_from_state(cluster) as controller:
        controller.drain(instance)
    typer.echo(f"{instance}: draining")


def scale(
    instances: int = typer.Argument(..., min=0, help="Target number of instances."),
    model: str | None = typer.Option(
        None, "--model", help="Model (default: the cluster's only one)."
    ),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Scale the number of instances (scale-down drains first)."""
    with controller_from_state(cluster) as controller:
        data = controller.scale(instances, model)
    if isinstance(data, dict) and "started" in data:
        typer.echo(f"started: {', '.join(data['started']) or '-'}")
        typer.echo(f"draining (stopped when empty): {', '.join(data.get('draining', [])) or '-'}")
        return
    typer.echo(json.dumps(data) if not isinstance(data, str) else data)


def _parse_value(text: str) -> Any:
    """TOML-like scalars: numbers and booleans as such, anything else as a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def policy(
    action: str = typer.Argument("get", help="get | set"),
    key: str | None = typer.Argument(None, help="With set: `name` or a parameter name."),
    value: str | None = typer.Argument(None, help="With set: the new value."),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Show the scheduling policy and its parameters, or change one at run time."""
    if action not in ("get", "set"):
        raise InputError(f"unknown action {action!r}: use `policy get` or `policy set KEY VALUE`")
    if action == "set" and (key is None or value is None):
        raise InputError("usage: llumctl policy set KEY VALUE")
    with controller_from_state(cluster) as controller:
        if action == "get":
            data = controller.policy()
        elif key == "name":
            data = controller.set_policy(name=value)
        else:
            assert key is not None and value is not None
            data = controller.set_policy(params={key: _parse_value(value)})
    typer.echo(json.dumps(data, indent=2) if not isinstance(data, str) else data)


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)
    app.command("drain")(drain)
    app.command("scale")(scale)
    # Negative values (`policy set migrate_out_threshold -5`) are values, not options.
    app.command("policy", context_settings={"ignore_unknown_options": True})(policy)
