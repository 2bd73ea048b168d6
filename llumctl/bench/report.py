"""Presenting a bench run: the rich summary table and optional latency-CDF plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.table import Table

from llumctl.bench.records import RequestRecord
from llumctl.errors import InputError

# (summary key, label, unit): times are shown in milliseconds.
_LATENCY_ROWS = (
    ("ttft", "TTFT"),
    ("tpot", "TPOT"),
    ("e2e", "end-to-end"),
)


def summary_table(summary: Mapping[str, float | int], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("P50", justify="right")
    table.add_column("P99", justify="right")
    for key, label in _LATENCY_ROWS:
        table.add_row(
            f"{label} (ms)",
            _ms(summary.get(f"{key}_mean")),
            _ms(summary.get(f"{key}_p50")),
            _ms(summary.get(f"{key}_p99")),
        )
    table.add_section()
    table.add_row("requests / errors", f"{summary['requests']} / {summary['errors']}", "", "")
    table.add_row("throughput (req/s)", f"{summary['throughput_rps']:.3f}", "", "")
    table.add_row("output tokens/s", f"{summary['output_tokens_per_s']:.1f}", "", "")
    table.add_row("duration (s)", f"{summary['duration_s']:.1f}", "", "")
    return table


def _ms(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * 1000:.1f}"


def plot_cdfs(records: Sequence[RequestRecord], path: Path, title: str) -> bool:
    """Write TTFT/TPOT/end-to-end CDFs to a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in records if r.is_ok]
    series = {
        "TTFT": [r.ttft_s for r in ok],
        "TPOT": [r.tpot_s for r in ok if r.tpot_s >= 0],
        "end-to-end": [r.e2e_s for r in ok],
    }
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (label, values) in zip(axes, series.items(), strict=True):
        ordered = sorted(values)
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.plot([v * 1000 for v in ordered], ys)
        ax.set_xlabel(f"{label} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise InputError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return True
