"""Entry point of the `llumctl` command.

Each command group lives in its own module and registers itself on `app` through
`register(app)`; `main()` maps every `LlumctlError` (and a few foreign errors) to one
line on stderr and an exit code, so users never see a traceback for a known failure.
Set LLUMCTL_DEBUG=1 to get the traceback anyway.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from llumctl import __version__
from llumctl.errors import LlumctlError

app = typer.Typer(
    name="llumctl",
    help="Cluster manager for LLM serving with live migration of running requests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, each with a `register(app)` function. A module listed here that does
# not exist yet is skipped, so command groups can land one at a time.
COMMAND_MODULES = (
    "llumctl.cli.sim",
    "llumctl.cli.cluster",
    "llumctl.cli.ops",
    "llumctl.cli.top",
    "llumctl.cli.bench",
    "llumctl.cli.model",
    "llumctl.cli.serve",
)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"llumctl {__version__}")
        raise typer.Exit(0)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line on stderr; return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def main() -> None:
    _register_all()
    try:
        # Standalone mode: click prints usage errors itself (exit 2); ours arrive here.
        app()
    except LlumctlError as exc:
        if os.environ.get("LLUMCTL_DEBUG"):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
