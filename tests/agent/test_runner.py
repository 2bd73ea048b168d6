"""The instance's runner: what it does with an engine's output iterator (agent/runtime.py).

The seam is the iterator itself (`Instance.start_runner` takes any async iterator of
`EngineOutput`); the instance around it is the real one, on the sim engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agent.engines.base import EngineOutput
from agent.engines.sim import SimEngine
from agent.runtime import Instance
from agent.streams import RequestStream
from llumctl.protocol import EventType


async def test_the_engine_iterator_is_closed_before_the_stream_ends() -> None:
    # Until an engine's generator runs its code after the last output, the engine counts
    # the request as live; a migration stopping it then would resume a finished request.
    # So by the time anyone sees the stream end, the generator must have been closed.
    closed: list[str] = []

    async def outputs() -> AsyncIterator[EngineOutput]:
        try:
            yield EngineOutput((5,), "a")
            yield EngineOutput((6,), "b", finish_reason="length")
            yield EngineOutput((7,), "c")  # never asked for
        finally:
            closed.append("closed")

    inst = Instance("i0", SimEngine("i0", "m", {"speedup": 50.0}), "secret")
    stream = inst.streams.create(RequestStream("r1"))
    inst.start_runner("r1", outputs())
    events = [event async for event in stream.events()]
    assert closed == ["closed"]  # checked with no await since the reader woke
    assert [e.token_id for e in events[:-1]] == [5, 6]
    assert events[-1].finish_reason == "length"


async def test_a_failure_while_closing_does_not_fail_a_finished_request(caplog) -> None:
    async def outputs() -> AsyncIterator[EngineOutput]:
        try:
            yield EngineOutput((5,), "a", finish_reason="stop")
        finally:
            raise RuntimeError("engine bookkeeping broke")

    inst = Instance("i0", SimEngine("i0", "m", {"speedup": 50.0}), "secret")
    stream = inst.streams.create(RequestStream("r1"))
    inst.start_runner("r1", outputs())
    events = [event async for event in stream.events()]
    assert events[-1].type == EventType.FINISHED and events[-1].finish_reason == "stop"
    assert "closing an engine's outputs" in caplog.text
