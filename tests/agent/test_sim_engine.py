"""The simulated engine on its own: determinism, validation, capacity, migration primitives."""

from __future__ import annotations

import asyncio

import pytest

from agent.engines.sim import SimEngine
from llumctl.errors import InputError, MigrationError
from llumctl.policy import Priority
from llumctl.protocol import GenerateRequest, SamplingParams

FAST = {"speedup": 50.0}
SMALL = {"speedup": 50.0, "profile": {"num_total_blocks": 40, "watermark_blocks": 0}}


async def _started(args=FAST, iid="s0") -> SimEngine:
    engine = SimEngine(iid, "m", args)
    spec = await engine.start()
    assert spec.kind == "sim" and spec.fingerprint.startswith("sim|")
    return engine


async def _run(engine: SimEngine, rid: str, prompt: str, max_tokens: int, **kw):
    req = GenerateRequest(rid, prompt=prompt, sampling=SamplingParams(max_tokens=max_tokens, **kw))
    prepared = await engine.prepare(req)
    ids, text, reason = [], "", None
    async for out in engine.generate(prepared):
        ids.extend(out.token_ids)
        text += out.text
        reason = out.finish_reason or reason
    return ids, text, reason


async def test_tokens_are_deterministic_and_counted():
    a, b = await _started(), await _started(iid="s1")
    try:
        first = await _run(a, "r1", "hello there world", 12)
        second = await _run(b, "r9", "hello there world", 12)
        other = await _run(a, "r2", "a different prompt", 12)
    finally:
        await a.shutdown()
        await b.shutdown()
    assert first[2] == "length" and len(first[0]) == 12
    assert first[:2] == second[:2]
    assert other[0] != first[0]


async def test_stop_string_ends_the_request():
    engine = await _started()
    try:
        ids, text, _ = await _run(engine, "r1", "x y z", 50)
        stop_word = text.split()[3]
        ids2, text2, reason = await _run(engine, "r2", "x y z", 50, stop=(stop_word,))
    finally:
        await engine.shutdown()
    assert reason == "stop" and stop_word in text2 and len(ids2) < len(ids)


async def test_prompt_longer_than_context_is_refused():
    engine = await _started({"profile": {"max_model_len": 8}})
    try:
        with pytest.raises(InputError, match="exceeds the model context"):
            await engine.prepare(
                GenerateRequest("r", prompt="a b c d e f g", sampling=SamplingParams(max_tokens=4))
            )
    finally:
        await engine.shutdown()


async def test_small_kv_preempts_and_still_completes_everything():
    engine = await _started(SMALL)
    try:
        prompt = " ".join(["w"] * 100)  # 100 tokens = 7 blocks, growing to 10
        results = await asyncio.gather(*(_run(engine, f"r{i}", prompt, 60) for i in range(5)))
        assert engine._sim.num_preempted_total > 0
    finally:
        await engine.shutdown()
    assert all(len(ids) == 60 and reason == "length" for ids, _, reason in results)
    assert len({tuple(ids) for ids, _, _ in results}) == 1


async def test_migration_primitives_keep_the_output():
    src, dst = await _started(iid="src"), await _started(iid="dst")
    try:
        reference = await _run(src, "ref", "migrate me please", 40)
        req = GenerateRequest("r1", prompt="migrate me please", sampling=SamplingParams(40))
        prepared = await src.prepare(req)
        ids: list[int] = []
        text = ""
        async for out in src.generate(prepared):
            ids.extend(out.token_ids)
            text += out.text
            if len(ids) >= 10:
                break
        full = await src.num_full_blocks("r1")
        chunk = await src.read_kv("r1", 0, full)
        stopped = await src.stop("r1")
        assert stopped.output_token_ids == tuple(ids)
        await dst.reserve("m1", full)
        await dst.write_kv("m1", chunk)
        prep2 = await dst.prepare(
            GenerateRequest(
                "r1", prompt_token_ids=stopped.prompt_token_ids, sampling=SamplingParams(40)
            )
        )
        async for out in dst.resume(
            "m1",
            prep2,
            previous_output_ids=stopped.output_token_ids,
            num_staged_tokens=stopped.num_kv_tokens,
        ):
            ids.extend(out.token_ids)
            text += out.text
        await src.release("r1")
        assert src.load().num_used_blocks == 0
    finally:
        await src.shutdown()
        await dst.shutdown()
    assert ids == reference[0] and text == reference[1]


async def test_a_stop_cuts_at_what_the_reader_took_not_at_what_steps_produced():
    # A busy instance's reader lags its engine: tokens wait unread when the stop comes.
    # The stop must cut at the tokens the reader took (the stream's), or the destination
    # would resume past tokens the client never got (the migration asserted and the
    # request hung).
    engine = await _started()
    try:
        prepared = await engine.prepare(
            GenerateRequest("r1", prompt="lag", sampling=SamplingParams(200))
        )
        outputs = engine.generate(prepared)
        taken = list((await outputs.__anext__()).token_ids)
        while len(taken) < 3:
            taken += (await outputs.__anext__()).token_ids
        await asyncio.sleep(0.1)  # ~150 steps at 50x: produced, not read
        stopped = await engine.stop("r1")
        assert stopped.output_token_ids == tuple(taken)
        assert [out async for out in outputs] == []  # the unread tokens are dropped
        await engine.release("r1")
        assert engine.load().num_used_blocks == 0
    finally:
        await engine.shutdown()


async def test_reserve_without_room_is_refused():
    engine = await _started(SMALL)
    try:
        with pytest.raises(MigrationError) as info:
            await engine.reserve("m", 1000)
        assert info.value.reason == "no-room"
    finally:
        await engine.shutdown()


async def test_high_priority_is_admitted_first():
    engine = await _started({"speedup": 20.0, "profile": {"max_num_seqs": 1}})
    order: list[str] = []

    async def one(rid: str, priority: Priority) -> None:
        req = GenerateRequest(rid, prompt="p q", sampling=SamplingParams(5), priority=priority)
        prepared = await engine.prepare(req)
        async for out in engine.generate(prepared):
            if out.finish_reason:
                order.append(rid)

    try:
        first = asyncio.create_task(one("n0", Priority.NORMAL))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, one("n1", Priority.NORMAL), one("h1", Priority.HIGH))
    finally:
        await engine.shutdown()
    assert order.index("h1") < order.index("n1")


async def test_a_queued_request_stops_without_kv_and_resumes_elsewhere_unchanged():
    one_at_a_time = {"speedup": 10.0, "profile": {"max_num_seqs": 1}}
    src, dst = await _started(one_at_a_time, "src"), await _started(iid="dst")
    try:
        reference = await _run(dst, "ref", "wait your turn", 20)
        first = asyncio.ensure_future(_run(src, "first", "hogging the only seat", 400))
        await asyncio.sleep(0.05)
        prepared = await src.prepare(
            GenerateRequest("r1", prompt="wait your turn", sampling=SamplingParams(20))
        )
        outputs = src.generate(prepared)
        waiting = asyncio.ensure_future(outputs.__anext__())
        await asyncio.sleep(0.05)
        assert [r.request_id for r in src.load().queued] == ["r1"]
        stopped = await src.stop("r1")
        assert (stopped.output_token_ids, stopped.num_kv_tokens) == ((), 0)
        assert src.load().queued == ()
        with pytest.raises(StopAsyncIteration):
            await waiting  # the queued request's stream here ends, unfinished
        await src.release("r1")
        await dst.reserve("m1", 2)
        ids, text = [], ""
        async for out in dst.resume("m1", prepared, previous_output_ids=(), num_staged_tokens=0):
            ids.extend(out.token_ids)
            text += out.text
        assert (ids, text) == reference[:2]
        assert (await first)[2] == "length"  # the one running was never disturbed
    finally:
        await src.shutdown()
        await dst.shutdown()
