"""Send a workload to an OpenAI-compatible endpoint and time every request.

Prompts are token-id lists (the completions API accepts them), drawn from a seeded RNG, so
prompt lengths are exact whatever the model's tokenizer; `ignore_eos` (a vLLM extension that
peers pass through) makes output lengths exact too.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import httpx

from llumctl.bench.lines import iter_lines
from llumctl.bench.records import BenchRequest, RequestRecord
from llumctl.errors import ConnectionFailed

# Token ids used in prompts: clear of the special ids at the bottom of small vocabularies.
PROMPT_TOKEN_RANGE = (16, 500)


def prompt_token_ids(num_tokens: int, rng: random.Random) -> list[int]:
    low, high = PROMPT_TOKEN_RANGE
    return [rng.randrange(low, high) for _ in range(max(1, num_tokens))]


class LoadGenerator:
    """Runs one workload against one endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        seed: int = 0,
        extra_body: dict[str, object] | None = None,
        record_chunk_times: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.seed = seed
        self.extra_body = dict(extra_body or {})
        # Keep every text chunk's arrival in the records (`chunk_times_s`): the profiler
        # reads step times off them; a long benchmark would only pay memory for them.
        self.record_chunk_times = record_chunk_times
        # `time.perf_counter()` when the last run started: records' `arrival_s` (when each
        # request left) counts from it.
        self.run_started_at = 0.0

    async def run(
        self,
        requests: Sequence[BenchRequest],
        on_done: Callable[[RequestRecord], None] | None = None,
    ) -> tuple[list[RequestRecord], float]:
        """Send every request at its arrival time; return records (in workload order)
        and the run's wall duration."""
        rng = random.Random(self.seed)
        prompts = [prompt_token_ids(r.num_prompt_tokens, rng) for r in requests]
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        timeout = httpx.Timeout(self.timeout_s, connect=10.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            start = self.run_started_at = time.perf_counter()

            async def one(i: int) -> RequestRecord:
                delay = start + requests[i].arrival_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                record = await self._send(client, i, requests[i], prompts[i], start)
                if on_done is not None:
                    on_done(record)
                return record

            records = await asyncio.gather(*(one(i) for i in range(len(requests))))
            duration = time.perf_counter() - start
        return list(records), duration

    async def check(self) -> None:
        """Fail early, with one clear line, if the endpoint does not answer."""
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.get(f"{self.base_url}/models", headers=self.headers)
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise ConnectionFailed(
                f"{self.base_url}/models answered {response.status_code}: {response.text[:200]}"
            )

    async def _send(
        self,
        client: httpx.AsyncClient,
        index: int,
        request: BenchRequest,
        prompt: list[int],
        run_start: float,
    ) -> RequestRecord:
        body: dict[str, object] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": request.num_output_tokens,
            "temperature": 0.0,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
            **self.extra_body,
        }
        headers = dict(self.headers)
        if request.priority > 0:
            headers["X-Priority"] = "high"
        sent = time.perf_counter()
        arrival = sent - run_start
        first = last = -1.0
        chunk_times: list[float] = []
        num_chunks = 0
        usage_tokens = -1
        response_id = ""
        error = ""
        try:
            async with client.stream(
                "POST", f"{self.base_url}/completions", json=body, headers=headers
            ) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode(errors="replace")
                    raise _HttpFailure(f"HTTP {response.status_code}: {text[:200]}")
                async for line in iter_lines(response.aiter_bytes()):
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    response_id = response_id or str(chunk.get("id", ""))
                    if chunk.get("usage"):
                        usage_tokens = int(chunk["usage"].get("completion_tokens", -1))
                    if chunk.get("choices") and chunk["choices"][0].get("text") is not None:
                        now = time.perf_counter()
                        first = now if first < 0 else first
                        last = now
                        num_chunks += 1
                        if self.record_chunk_times:
                            chunk_times.append(now - sent)
        except (httpx.HTTPError, _HttpFailure, json.JSONDecodeError) as exc:
            error = str(exc) or type(exc).__name__
        received = usage_tokens if usage_tokens >= 0 else num_chunks
        record = _record(index, request, arrival, sent, first, last, received, response_id, error)
        return replace(record, chunk_times_s=tuple(chunk_times)) if chunk_times else record


class _HttpFailure(Exception):
    pass


def _record(
    index: int,
    request: BenchRequest,
    arrival: float,
    sent: float,
    first: float,
    last: float,
    received: int,
    response_id: str,
    error: str,
) -> RequestRecord:
    if not error and first < 0:
        error = "no tokens received"
    ttft = first - sent if first >= 0 else -1.0
    e2e = last - sent if last >= 0 else -1.0
    tpot = (last - first) / (received - 1) if received > 1 and first >= 0 else -1.0
    return RequestRecord(
        index=index,
        arrival_s=round(arrival, 6),
        num_prompt_tokens=request.num_prompt_tokens,
        num_output_tokens=request.num_output_tokens,
        num_received_tokens=received,
        priority=request.priority,
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=e2e,
        response_id=response_id,
        error=error,
    )
