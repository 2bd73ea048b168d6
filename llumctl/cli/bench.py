"""`llumctl bench` (load generator) and `llumctl profile` (measure an engine for the simulator).

Both talk to any OpenAI-compatible endpoint: a llumctl controller, a peer router, or one
vLLM server. See docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llumctl.bench.loadgen import LoadGenerator
from llumctl.bench.records import BenchRequest, RequestRecord
from llumctl.bench.report import plot_cdfs, summary_table
from llumctl.bench.stats import summarize
from llumctl.bench.workload import from_trace, generated, write_log
from llumctl.errors import InputError
from llumctl.sim.workload import WorkloadSpec


def bench(
    url: str = typer.Option(..., "--url", help="OpenAI base URL, e.g. http://127.0.0.1:8000/v1"),
    model: str = typer.Option(
        "", "--model", help="Model name to send (default: the first served)."
    ),
    requests: int = typer.Option(100, "--requests", "-n", help="Number of requests."),
    rate: float = typer.Option(1.0, "--rate", help="Mean arrival rate (requests/s)."),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson or gamma."),
    cv: float = typer.Option(1.0, "--cv", help="Coefficient of variation of Gamma arrivals."),
    input_len: str = typer.Option("M", "--input", help="Prompt lengths: S, M, L or a count."),
    output_len: str = typer.Option("M", "--output", help="Output lengths: S, M, L or a count."),
    priority_ratio: float = typer.Option(0.0, "--priority-ratio", help="Share of high priority."),
    seed: int = typer.Option(0, "--seed", help="Seed of the workload and the prompts."),
    trace: Path | None = typer.Option(None, "--trace", help="JSONL trace to replay instead."),
    api_key: str = typer.Option("", "--api-key", envvar="OPENAI_API_KEY", help="Bearer key."),
    timeout: float = typer.Option(600.0, "--timeout", help="Per-request timeout (s)."),
    log: Path | None = typer.Option(None, "--log", help="Write per-request JSONL here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write latency CDFs (PNG) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Send a workload to an OpenAI-compatible endpoint; report TTFT, TPOT, latency, errors."""
    if trace is not None:
        workload = from_trace(trace)
    else:
        spec = WorkloadSpec(
            requests, rate, arrival, cv, input_len, output_len, priority_ratio, seed
        )
        workload = generated(spec)
    if timeout <= 0:
        raise InputError(f"--timeout must be positive, got {timeout}")
    gen = LoadGenerator(url, model, api_key=api_key or None, timeout_s=timeout, seed=seed)
    records, duration = asyncio.run(_run(gen, workload, show_progress=not as_json))
    summary = summarize(records, duration)
    if log is not None:
        _write(log, lambda: write_log(log, records, workload))
    plotted = plot is not None and plot_cdfs(records, plot, f"llumctl bench: {url}")
    if as_json:
        result = {"url": url, "model": gen.model, "summary": summary, "errors": _errors(records)}
        typer.echo(json.dumps(_finite(result), indent=2))
    else:
        console = Console()
        console.print(summary_table(summary, f"{gen.model} @ {url}"))
        for error in _errors(records)[:5]:
            console.print(f"[red]error[/red]: {error}")
        if plot is not None and not plotted:
            console.print("no plot: matplotlib is not installed (pip install matplotlib)")
    if records and summary["errors"] == len(records):
        raise typer.Exit(1)


async def _run(
    gen: LoadGenerator, workload: list[BenchRequest], show_progress: bool
) -> tuple[list[RequestRecord], float]:
    await gen.check()
    if not gen.model:
        gen.model = await first_model(gen)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=True,
    ) as progress:
        task = progress.add_task("requests", total=len(workload))
        return await gen.run(workload, on_done=lambda _r: progress.advance(task))


async def first_model(gen: LoadGenerator) -> str:
    import httpx

    async with httpx.AsyncClient(timeout=10.0) as client:
        data = (await client.get(f"{gen.base_url}/models", headers=gen.headers)).json()
    models = data.get("data") or []
    if not models:
        raise InputError(f"{gen.base_url} serves no models; pass --model")
    return str(models[0]["id"])


def _errors(records: list[RequestRecord]) -> list[str]:
    return [f"request {r.index}: {r.error}" for r in records if r.error]


def _finite(obj: Any) -> Any:
    """JSON has no NaN: metrics with no samples become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _write(path: Path, action: Any) -> None:
    try:
        action()
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def profile(
    url: str = typer.Option(
        ...,
        "--url",
        help="OpenAI base URL of ONE engine, or of a llumctl controller with one instance "
        "taking requests (not a router spreading them).",
    ),
    out: Path = typer.Option(..., "--out", help="Profile file to write (.toml or .json)."),
    model: str = typer.Option("", "--model", help="Model name (default: the first served)."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Checkpoint (KV size)."),
    name: str = typer.Option("measured", "--name", help="Profile name."),
    quick: bool = typer.Option(False, "--quick", help="Fewer points (tests, smoke runs)."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="The engine's max_num_seqs."),
    max_batched: int = typer.Option(
        2048, "--max-num-batched-tokens", help="The engine's max_num_batched_tokens."
    ),
    dtype: str = typer.Option("", "--dtype", help="The engine's --dtype, if not the model's."),
    kv_blocks: int = typer.Option(
        0, "--kv-blocks", help="KV blocks per instance, if /metrics is not vLLM's (0: read)."
    ),
    block_size: int = typer.Option(0, "--block-size", help="KV block size, with --kv-blocks."),
    max_model_len: int = typer.Option(
        0, "--max-model-len", help="Context length, if /v1/models does not say (0: read)."
    ),
    co_located_url: str = typer.Option(
        "",
        "--co-located-url",
        help="OpenAI base URL spreading requests over the --co-located instances that share "
        "the engine's host (e.g. a llumctl controller with all of them serving).",
    ),
    co_located: int = typer.Option(
        0,
        "--co-located",
        help="How many instances share the host (CPU hosts): measures "
        "how busy neighbours slow a step (co_located_slowdown) and a first token "
        "(co_located_first_token_ms).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print every measurement as JSON."),
) -> None:
    """Measure one engine (prefill, decode, KV capacity, transfer rate); write a sim profile."""
    from llumctl.profile.measure import ProfileSettings, measure_engine
    from llumctl.profile.output import profile_text

    if out.suffix not in (".toml", ".json"):
        raise InputError(f"--out must end in .toml or .json, got {out.name!r}")
    if dtype and dtype not in ("float32", "float16", "bfloat16"):
        raise InputError(f"--dtype must be float32, float16 or bfloat16, got {dtype!r}")
    if min(kv_blocks, block_size) < 0 or bool(kv_blocks) != bool(block_size):
        raise InputError("--kv-blocks and --block-size go together, as positive numbers")
    if max_model_len < 0:
        raise InputError(f"--max-model-len must be positive, got {max_model_len}")
    if bool(co_located_url) != bool(co_located) or co_located == 1 or co_located < 0:
        raise InputError("--co-located N (2 or more) and --co-located-url go together")
    settings = ProfileSettings(
        url,
        model,
        model_dir,
        name,
        quick,
        max_num_seqs,
        max_batched,
        dtype,
        num_blocks=kv_blocks,
        block_size=block_size,
        max_model_len=max_model_len,
        co_located_url=co_located_url,
        co_located=co_located,
    )
    result = asyncio.run(measure_engine(settings, progress=None if as_json else typer.echo))
    _write(out, lambda: out.write_text(profile_text(result, out.suffix)))
    if as_json:
        typer.echo(json.dumps(_finite(result), indent=2))
    else:
        typer.echo(f"wrote profile {name!r} to {out}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
    app.command("profile")(profile)
