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


async def test_a_reader_behind_gets_every_ready_token_in_one_batch_then_live_ones():
    stream = RequestStream("r")
    for t in range(3):
        stream.append(t, "x")
    batches = stream.batches(0)
    first = await anext(batches)
    assert [e.index for e in first] == [0, 1, 2]
    waiting = asyncio.create_task(anext(batches))
    await asyncio.sleep(0)
    assert not waiting.done()  # nothing new: the reader waits, it gets no empty batch
    stream.append(3, "y")
    stream.append(4, "z")
    stream.finish("length")
    last = await waiting
    assert [(e.type.value, e.index) for e in last] == [("token", 3), ("token", 4), ("finished", -1)]
    assert [e.token_id for e in last[:2]] == [3, 4]


async def test_tokens_appended_while_the_reader_holds_a_batch_are_not_missed():
    stream = RequestStream("r")
    stream.append(0, "a")
    batches = stream.batches(0)
    assert [e.index for e in await anext(batches)] == [0]
    stream.append(1, "b")  # while the reader is busy with batch 0: no one is waiting yet
    nxt = await asyncio.wait_for(anext(batches), timeout=1.0)
    assert [e.index for e in nxt] == [1]


def test_registry_forgets_the_oldest_finished_streams_and_says_which():
    forgotten: list[str] = []
    registry = StreamRegistry(on_forget=forgotten.append, max_num_finished=2)
    running = registry.create(RequestStream("running"))
    for rid in ("a", "b", "c", "d"):
        registry.create(RequestStream(rid)).finish("stop")
    registry.create(RequestStream("e"))
    assert forgotten == ["a", "b"]
    assert [s.request_id for s in registry.all()] == ["running", "c", "d", "e"]
    assert registry.get("running") is running and registry.find("a") is None
