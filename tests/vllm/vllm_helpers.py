"""Helpers for tests against real vLLM instance processes (instance API over HTTP)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

GREEDY = {"temperature": 0.0, "ignore_eos": True}


def prompt_ids(n: int, seed: int) -> list[int]:
    """A distinct prompt of n token ids (no prefix-cache sharing between tests)."""
    rng = random.Random(seed)
    return [rng.randrange(3, 500) for _ in range(n)]


def body(rid: str, prompt: list[int], max_tokens: int, **sampling: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "prompt_token_ids": prompt,
        "sampling": {**GREEDY, "max_tokens": max_tokens, **sampling},
    }


@dataclass
class Trace:
    """Everything a client read from a request's stream(s)."""

    indexes: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)

    @property
    def end(self) -> dict[str, Any]:
        return self.ends[-1]


async def _read(resp: httpx.Response, trace: Trace) -> dict[str, Any]:
    assert resp.status_code == 200, (await resp.aread()).decode()
    async for line in resp.aiter_lines():
        if line.strip():
            event = json.loads(line)
            if event["type"] == "token":
                trace.indexes.append(event["index"])
                trace.tokens.append(event["token_id"])
            else:
                trace.ends.append(event)
                return event
    raise AssertionError("stream closed without an end event")


async def follow(http: httpx.AsyncClient, url: str, req: dict[str, Any]) -> Trace:
    """Generate on `url` and follow the stream across migrations (like the controller)."""
    trace = Trace()
    async with http.stream("POST", f"{url}/generate", json=req) as resp:
        end = await _read(resp, trace)
    while end["type"] == "migrated":
        path = f"{end['to_url']}/requests/{req['request_id']}/stream"
        async with http.stream("GET", path, params={"from": end["at"]}) as resp:
            end = await _read(resp, trace)
    return trace


async def wait_tokens(
    http: httpx.AsyncClient, url: str, rid: str, n: int, timeout_s: float = 120
) -> None:
    """Until request `rid` on `url` produced at least n tokens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = (await http.get(f"{url}/requests")).json()
        if any(r["request_id"] == rid and r["num_output_tokens"] >= n for r in rows):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{rid} did not reach {n} tokens")


async def wait_until(check: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def load_of(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    return (await http.get(f"{url}/load")).json()["load"]


async def migrate(
    http: httpx.AsyncClient, src: Any, dst: Any, rids: list[str], mode: str = "live", **extra: Any
) -> httpx.Response:
    req = {
        "dst_url": dst.url,
        "dst_instance_id": dst.instance_id,
        "request_ids": rids,
        "mode": mode,
        **extra,
    }
    return await http.post(f"{src.url}/migrate", json=req)


def results_of(resp: httpx.Response) -> list[dict[str, Any]]:
    """The per-request results of a migrate call, failing with the body on any other answer."""
    assert resp.status_code == 200, f"migrate answered {resp.status_code}: {resp.text}"
    results: list[dict[str, Any]] = resp.json()["results"]
    return results


def outcome(result: dict[str, Any]) -> str:
    """`status (reason)` first, so a truncated assertion message still shows why."""
    return f"{result['status']} ({result.get('reason')}): {result}"


def assert_contiguous(trace: Trace, n: int) -> None:
    assert trace.indexes == list(range(n)), "gap or duplicate index in the stream"
