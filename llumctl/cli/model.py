"""`llumctl model gen`: write a random-weight Llama checkpoint (tests, demos, benchmarks).

The generator lives in `agent.models` (it needs torch); it is imported only when the
command runs, so the rest of the CLI stays free of torch.
"""

from __future__ import annotations

from pathlib import Path

import typer

model_app = typer.Typer(help="Generate test/benchmark models.", no_args_is_help=True)


@model_app.command("gen")
def gen(
    size: str = typer.Option("tiny", "--size", help="tiny (tests) or bench (>=100M params)."),
    seed: int = typer.Option(0, "--seed", help="Seed for weights and tokenizer."),
    out: Path = typer.Option(..., "--out", help="Directory to write (HF layout)."),
) -> None:
    """Write a random-weight Llama checkpoint in Hugging Face layout."""
    from agent.models import SIZES, generate_model, num_parameters
    from llumctl.errors import InputError

    if size not in SIZES:
        raise InputError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    path = generate_model(size, seed, out)
    typer.echo(f"wrote {size} model ({num_parameters(SIZES[size]):,} parameters) to {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
