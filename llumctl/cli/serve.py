"""`llumctl controller`: run the controller daemon in the foreground."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("controller")
    def controller(
        config: Path = typer.Option(None, "--config", help="controller config (TOML or JSON)"),
        host: str = typer.Option(None, help="listen address"),
        port: int = typer.Option(None, help="listen port"),
        policy: str = typer.Option(None, help="round-robin, infaas++, llumnix-base, llumnix"),
    ) -> None:
        """Run the controller daemon (OpenAI API, dispatch, policy loop) in the foreground."""
        from llumctl.controller.__main__ import main

        argv: list[str] = []
        for flag, value in (("--config", config), ("--host", host), ("--port", port)):
            if value is not None:
                argv += [flag, str(value)]
        if policy is not None:
            argv += ["--policy", policy]
        main(argv)
