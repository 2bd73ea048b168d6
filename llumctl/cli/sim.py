"""`llumctl sim`: run a workload through the simulator under one or more policies.

Prints a rich table (each policy's metrics and its ratio to the first policy), or with
`--json` one object (the contract in docs/simulator.md). Flags override the workload file.
Every output is labelled as a simulation.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llumctl.errors import ConfigError, InputError
from llumctl.policy import POLICY_NAMES
from llumctl.sim import Experiment, WorkloadError, experiment_from_dict, parse_trace, run_experiment

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_POLICIES = ("llumnix", "infaas++")
# (column title, result key, seconds?) shown in the table.
COLUMNS = (
    ("prefill mean", "prefill_mean"),
    ("prefill P99", "prefill_p99"),
    ("decode P99", "decode_p99"),
    ("request mean", "request_mean"),
    ("request P99", "request_p99"),
    ("preempt loss", "preemption_loss"),
    ("migrations", "migrations"),
    ("avg inst", "avg_instances"),
    ("frag", "fragmentation"),
)


def load_workload_file(path: Path) -> dict[str, Any]:
    """Parse a workload TOML file; unreadable or malformed files raise ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read workload file {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_trace(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_trace(handle, source=path)
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {exc.strerror}") from None
    except WorkloadError as exc:
        raise InputError(str(exc)) from None


def build_experiment(file: Path | None, flags: dict[str, Any], policies: list[str]) -> Experiment:
    """The file's settings, then the flags that were given, checked."""
    try:
        exp = experiment_from_dict(load_workload_file(file)) if file else Experiment()
        workload = {k: v for k, v in flags.items() if v is not None and k != "instances"}
        exp = replace(exp, workload=replace(exp.workload, **workload))
        if flags.get("instances") is not None:
            exp = replace(exp, config=replace(exp.config, num_instances=flags["instances"]))
        exp.workload.validate()
        exp.config.validate()
    except WorkloadError as exc:
        raise ConfigError(str(exc)) from None
    names = tuple(policies) or exp.policies or DEFAULT_POLICIES
    for name in names:
        if name not in POLICY_NAMES:
            raise InputError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return replace(exp, policies=names)


def _cell(value: Any, base: Any) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if isinstance(base, int | float) and base and value != base:
        text += f" ({value / base:.2f}x)"
    return text


def render_table(result: dict[str, Any], console: Console) -> None:
    """One row per policy; each cell also shows its ratio to the first policy."""
    wl = result["workload"]
    title = (
        f"SIMULATED: {wl['num_requests']} requests on {wl['instances']} instances ({wl['profile']})"
    )
    for scope, label in (("all", "all requests"), ("high", "high-priority requests")):
        rows = result["results"]
        if scope == "high" and not wl.get("num_high_priority"):
            continue
        table = Table(title=f"{title}: {label}, times in s")
        table.add_column("policy")
        for column, _ in COLUMNS:
            table.add_column(column, justify="right")
        first = next(iter(rows.values()))
        for name, metrics in rows.items():
            own = metrics if scope == "all" else metrics["high"]
            base = first if scope == "all" else first["high"]
            table.add_row(name, *(_cell(own.get(k), base.get(k)) for _, k in COLUMNS))
        console.print(table)


def _progress_factory(console: Console) -> tuple[Progress, Callable[[str], Any]]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )

    def for_policy(name: str) -> Callable[[int, int], None]:
        task = bar.add_task(f"simulating {name}", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return update

    return bar, for_policy


def sim(
    workload: Annotated[Path | None, typer.Argument(help="Workload TOML file.")] = None,
    policy: Annotated[list[str] | None, typer.Option("--policy", help="Policy (repeat).")] = None,
    instances: Annotated[int | None, typer.Option(help="Instances at start.")] = None,
    requests: Annotated[int | None, typer.Option(help="Requests to generate.")] = None,
    rate: Annotated[float | None, typer.Option(help="Arrival rate, req/s.")] = None,
    arrival: Annotated[str | None, typer.Option(help="poisson or gamma.")] = None,
    cv: Annotated[float | None, typer.Option(help="Gamma coefficient of variation.")] = None,
    input: Annotated[str | None, typer.Option("--input", help="S, M, L or tokens.")] = None,
    output: Annotated[str | None, typer.Option(help="S, M, L or tokens.")] = None,
    priority_ratio: Annotated[float | None, typer.Option(help="High-priority share.")] = None,
    trace: Annotated[str | None, typer.Option(help="JSONL trace to replay.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Simulate a workload under one or more policies (no GPUs; results are simulated)."""
    flags = {
        "instances": instances,
        "num_requests": requests,
        "rate": rate,
        "arrival": arrival,
        "cv": cv,
        "input": input,
        "output": output,
        "priority_ratio": priority_ratio,
        "trace": trace,
        "seed": seed,
    }
    exp = build_experiment(workload, flags, policy or [])
    reqs = read_trace(exp.workload.trace) if exp.workload.trace else None
    err = Console(file=sys.stderr)
    show_progress = not as_json and err.is_terminal
    bar, factory = _progress_factory(err)
    try:
        if show_progress:
            with bar:
                result = run_experiment(exp, reqs, factory)
        else:
            result = run_experiment(exp, reqs)
    except WorkloadError as exc:
        raise InputError(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        render_table(result, Console(width=max(Console().width, 160)))


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)
