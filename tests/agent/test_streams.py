"""Request streams: indexes, replay-then-live attach, end events, splice offsets."""

from __future__ import annotations

import asyncio

import pytest

from agent.streams import RequestStream, StreamRegistry
from llumctl.errors import InputError, NotFoundError


async def _collect(stream: RequestStream, start: int) -> list[tuple[str, int]]:
    return [(e.type.value, e.index) async for e in stream.events(start)]


async def test_late_reader_gets_replay_then_live_tokens_then_the_end():
    stream = RequestStream("r", num_prompt_tokens=4)
    for t in (10, 11, 12):
        stream.append(t, "x")
    reader = asyncio.create_task(_collect(stream, 1))
    await asyncio.sleep(0)
    stream.append(13, "y")
    stream.finish("length")
    events = await reader
    assert events == [("token", 1), ("token", 2), ("token", 3), ("finished", -1)]
    assert stream.end is not None and stream.end.num_output_tokens == 4


async def test_migrated_end_carries_the_splice_index_and_destination_starts_there():
    src = RequestStream("r")
    for t in range(5):
        src.append(t, "")
    src.migrated("b", "http://b")
    assert src.end is not None and src.end.at == 5 and src.end.to_instance == "b"
    dst = RequestStream("r", first_index=5)
    dst.append(99, "")
    dst.finish("stop")
    assert await _collect(dst, 5) == [("token", 5), ("finished", -1)]
    with pytest.raises(InputError):
        await _collect(dst, 4)


def test_registry_refuses_a_duplicate_running_request_and_unknown_ids():
    reg = StreamRegistry()
    reg.create(RequestStream("a"))
    with pytest.raises(InputError):
        reg.create(RequestStream("a"))
    with pytest.raises(NotFoundError):
        reg.get("nope")
