"""Streamed bodies split into lines at LF/CRLF only: generated text inside a JSON chunk may
hold characters `str.splitlines` (and httpx's `aiter_lines`) would split at."""

from __future__ import annotations

import asyncio
import json

import httpx

from llumctl.bench.lines import iter_lines


async def _chunks(body: bytes, size: int):
    for i in range(0, len(body), size):
        yield body[i : i + size]


def _lines(body: bytes, size: int) -> list[str]:
    async def collect() -> list[str]:
        return [line async for line in iter_lines(_chunks(body, size))]

    return asyncio.run(collect())


def test_text_with_unicode_line_separators_stays_in_its_json_line():
    texts = ["a\u2028b", "c\x85d", "e\u2029", "é€"]
    events = [json.dumps({"choices": [{"text": t}]}, ensure_ascii=False) for t in texts]
    body = "".join(f"data: {e}\r\n\r\n" for e in events).encode() + b"data: [DONE]\n\n"
    # Every chunking, down to one byte at a time (multi-byte characters split too).
    for size in (1, 2, 3, 7, len(body)):
        lines = _lines(body, size)
        data = [line[6:] for line in lines if line.startswith("data: {")]
        assert [json.loads(d)["choices"][0]["text"] for d in data] == texts, size
        assert lines[-2:] == ["data: [DONE]", ""]
    # What httpx's own line splitting makes of the same body: the JSON cut in two.
    split = list(httpx.Response(200, content=body).iter_lines())
    assert len([line for line in split if line.startswith("data: {")]) == len(texts)
    assert any(line.startswith("b") for line in split)


def test_a_last_line_without_a_line_ending_is_kept():
    assert _lines(b'{"type": "token"}\n{"type": "finished"}', 4) == [
        '{"type": "token"}',
        '{"type": "finished"}',
    ]
