"""`llumctl up`, `down`, `status`, `logs`: bring a cluster up over SSH, inspect it, take it down.

Exit codes: 0 everything done; 1 partial failure (some hosts failed, the rest proceeded);
the exception tree's codes for errors that stop the whole command (bad file: 2, ...).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import typer
from rich.console import Console

from llumctl.client import AgentClient, controller_from_state
from llumctl.config import default_local_cluster, load_cluster
from llumctl.errors import InputError, LlumctlError
from llumctl.provision.down import cluster_down, host_spec
from llumctl.provision.service import Service
from llumctl.provision.state import default_state_path, load_state, remove_state
from llumctl.provision.up import cluster_up, connector
from llumctl.ui.status import render_status, render_up_summary

EXIT_PARTIAL = 1
CLUSTER_HELP = "State file of the cluster (default: $LLUMCTL_HOME/state.json, written by `up`)."

_print_lock = threading.Lock()


def _progress(console: Console):  # type: ignore[no-untyped-def]
    def report(who: str, message: str) -> None:
        with _print_lock:
            console.print(f"[bold]{who}[/bold]: {message}", highlight=False, soft_wrap=True)

    return report


def _state_path(cluster: Path | None) -> Path:
    return cluster.expanduser() if cluster else default_state_path()


def up(
    cluster_file: Path | None = typer.Argument(
        None, help="cluster.toml (default: a local cluster on this machine)."
    ),
    accept_new_host_keys: bool = typer.Option(
        False, "--accept-new-host-keys", help="Trust and record unknown SSH host keys."
    ),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for instances to run."),
    port: int | None = typer.Option(None, "--port", help="Without a file: controller port (8000)."),
    agent_port: int | None = typer.Option(
        None, "--agent-port", help="Without a file: agent port (7100)."
    ),
) -> None:
    """Start (or update) a cluster: controller, one agent per host, the configured instances."""
    console = Console(highlight=False)
    if cluster_file is None:
        has_vllm = importlib.util.find_spec("vllm") is not None
        cfg = default_local_cluster(has_vllm, port or 8000, agent_port or 7100)
        console.print(
            f"no cluster file: local cluster, 2 {'vllm-cpu' if has_vllm else 'sim'} instances of the tiny model"
        )
    else:
        if port or agent_port:
            raise InputError(
                "--port/--agent-port apply to the default cluster; set them in the file"
            )
        cfg = load_cluster(cluster_file)
    result = cluster_up(
        cfg, _progress(console), accept_new_host_keys, _state_path(cluster), timeout
    )
    console.print(render_up_summary(result))
    if result.controller and (cluster_file is None or cfg.hosts[0].is_local):
        _print_how_to(console, result.controller.url, cfg.model.name)
    if not result.is_complete:
        raise typer.Exit(EXIT_PARTIAL)


def _print_how_to(console: Console, url: str, model: str) -> None:
    console.print(f"\nOpenAI endpoint: {url}/v1   (state file: {default_state_path()})")
    console.print("send a request:", highlight=False)
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 16})
    console.print(
        f"  curl {url}/v1/completions -H 'Content-Type: application/json' -d '{body}'",
        soft_wrap=True,
    )
    console.print(
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='none'); "
        f"print(c.completions.create(model='{model}', prompt='Hello', max_tokens=16).choices[0].text)\"",
        soft_wrap=True,
    )
    console.print("watch it: llumctl top      stop it: llumctl down")


def down(
    force: bool = typer.Option(False, "--force", help="Do not drain: stop everything now."),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
    accept_new_host_keys: bool = typer.Option(False, "--accept-new-host-keys"),
) -> None:
    """Drain and stop every instance, agent and the controller; check no process is left."""
    console = Console(highlight=False)
    path = _state_path(cluster)
    state = load_state(path)
    assert state is not None
    try:
        outcomes = cluster_down(state, _progress(console), force, accept_new_host_keys)
    except LlumctlError as exc:
        if force:
            raise
        raise type(exc)(f"{exc} (use --force to stop without draining)") from None
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        console.print(f"[red]{o.name}: {o.reason}[/red]")
    if failed:
        raise typer.Exit(EXIT_PARTIAL)
    remove_state(path)
    console.print("cluster stopped; no process left")


def status(
    as_json: bool = typer.Option(False, "--json", help="Print the status object as JSON."),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Instances and requests of the cluster."""
    with controller_from_state(cluster) as controller:
        data = controller.status()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    Console(highlight=False).print(render_status(data))


def logs(
    host: str = typer.Argument(..., help="Host name (as in the cluster file)."),
    instance: str | None = typer.Argument(None, help="Instance id; without it, the agent's log."),
    tail: int = typer.Option(200, "--tail", "-n", help="Number of lines."),
    cluster: Path | None = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Show the log of a host's agent, or of one of its instances."""
    state = load_state(_state_path(cluster))
    assert state is not None
    h = state.host(host)
    if instance:
        with AgentClient(h.agent_url, state.secret) as agent:
            typer.echo(agent.logs(instance, tail), nl=False)
        return
    runner = connector(False)(host_spec(h))
    try:
        typer.echo(Service(runner, h.workdir, "agent").log_tail(tail), nl=False)
    finally:
        runner.close()


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("logs")(logs)
