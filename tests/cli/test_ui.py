"""The rich renderers, rendered to text at fixed terminal sizes."""

from __future__ import annotations

import io

from rich.console import Console

from llumctl.ui.snapshot import build_snapshot
from llumctl.ui.status import render_status
from llumctl.ui.top import render_top


def status_fixture(num: int = 4) -> dict:
    instances = [
        {
            "id": f"host{i % 2}-{i}",
            "host": f"host{i % 2}",
            "engine": "vllm" if i == 0 else "sim",
            "device": "cpu",
            "state": "running",
            "running": i,
            "queued": 1 if i == 3 else 0,
            "kv_used_blocks": 10 * i,
            "kv_total_blocks": 100,
            "freeness": 50.0 - 10 * i,
            "tokens_per_s": 12.5 * i,
        }
        for i in range(num)
    ]
    return {
        "controller": "http://127.0.0.1:8000",
        "instances": instances,
        "requests": [{"id": "cmpl-1", "instance": "host1-1", "state": "running", "tokens": 7}],
        "latency": {
            "ttft_ms": {"p50": 12.0, "p90": 30.5, "p99": 41.0},
            "tpot_ms": {"p50": 5.0, "p90": None, "p99": None},
        },
    }


EVENTS = [
    {
        "seq": 1,
        "kind": "migration",
        "request": "cmpl-1",
        "src": "host0-0",
        "dst": "host1-1",
        "status": "committed",
        "downtime_ms": 23.4,
    },
    {
        "seq": 2,
        "kind": "migration",
        "request": "cmpl-2",
        "src": "host0-2",
        "dst": "host1-3",
        "status": "aborted",
        "reason": "src-finished",
    },
    {"seq": 3, "kind": "scale-up", "instance": "host1-5"},
]


def render(renderable, width: int, height: int) -> str:  # type: ignore[no-untyped-def]
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, color_system=None
    )
    console.print(renderable)
    return console.export_text()


def test_top_fits_80x24_and_shows_everything() -> None:
    snap = build_snapshot("http://x", status_fixture(), [], EVENTS)
    text = render(render_top(snap, 80, 24), 80, 24)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines)
    for i in range(4):
        assert f"host{i % 2}-{i}" in text
    assert "cmpl-1 host0-0→host1-1 done, downtime 23.4 ms" in text
    assert "TTFT p50 12.0 p90 30.5 p99 41.0 ms" in text
    assert "scale-up host1-5" in text
    assert "[sim: simulated engines]" in text


def test_top_wide_has_separate_columns() -> None:
    snap = build_snapshot("http://x", status_fixture(), [], EVENTS)
    text = render(render_top(snap, 160, 48), 160, 48)
    assert "DEVICE" in text and "KV USED" in text
    assert "30/100" in text
    assert "src-finished" in text  # wide screens keep more history


def test_top_counts_rows_that_do_not_fit() -> None:
    snap = build_snapshot("http://x", status_fixture(40), [], [])
    text = render(render_top(snap, 80, 24), 80, 24)
    assert len(text.rstrip("\n").splitlines()) <= 24
    assert "more" in text


def test_sort_keys() -> None:
    status = status_fixture()
    ids = lambda key: [r.id for r in build_snapshot("u", status, [], [], key).instances]  # noqa: E731
    assert ids("freeness") == ["host1-3", "host0-2", "host1-1", "host0-0"]
    assert ids("running")[0] == "host1-3"
    assert ids("id") == sorted(ids("id"))


def test_instances_endpoint_fills_device_and_rate() -> None:
    status = status_fixture(1)
    del status["instances"][0]["device"]
    snap = build_snapshot(
        "u", status, [{"id": "host0-0", "device": "cuda:3", "tokens_per_s": 99.0}], []
    )
    assert snap.instances[0].device == "cuda:3"


def test_status_render() -> None:
    text = render(render_status(status_fixture()), 100, 40)
    assert "host1-3" in text and "30/100" in text and "cmpl-1" in text
    assert "1 request(s) in flight" in text


def test_status_render_says_why_an_instance_failed() -> None:
    status = status_fixture()
    assert "failed:" not in render(render_status(status), 100, 40)
    status["failed_instances"] = [
        {"id": "host0-9", "agent": "agent-0", "reason": "engine process exited with code 6"}
    ]
    text = render(render_status(status), 120, 40)
    assert "failed: host0-9 (agent-0): engine process exited with code 6" in text
