"""Instance processes dying mid-migration (each test starts and kills its own instance)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.conftest import kill_instance, launch_instance, stop_instance, wait_ready
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


@pytest.fixture(scope="module")
def doomed(vllm_pair, tiny_model_dir, cluster_secret, instance_log_dir):
    """Two extra instances, started together (one per kill test)."""
    procs = [
        launch_instance(tiny_model_dir, f"doomed{i}", cluster_secret, instance_log_dir)
        for i in range(2)
    ]
    try:
        yield [wait_ready(p) for p in procs]
    finally:
        for p in procs:
            stop_instance(p)


def _alive(doomed, i, tiny_model_dir, cluster_secret, instance_log_dir):
    """doomed[i], started again if an earlier attempt of its test (a CI retry) killed it."""
    if doomed[i].process.poll() is not None:
        doomed[i] = wait_ready(
            launch_instance(tiny_model_dir, f"doomed{i}", cluster_secret, instance_log_dir)
        )
    return doomed[i]


@pytest.fixture
async def http(vllm_instances):
    async with httpx.AsyncClient(headers=vllm_instances[0].headers, timeout=300) as client:
        yield client


async def _reserved(http, url) -> bool:
    return (await load_of(http, url))["num_migrating_in"] == 1


# Long enough (>= 17 s at the tests' 10 ms steps) to outlast the pre-copy pause, so the
# request is still running when the kill lands.
NUM_KILL_DST_TOKENS = 1700
# The pre-copy pause: the kill must land inside it, after the test saw the reservation,
# even if the test process goes unscheduled for seconds meanwhile (see conftest).
KILL_WINDOW_S = 8


async def test_destination_killed_mid_migration(
    vllm_instances, doomed, http, tiny_model_dir, cluster_secret, instance_log_dir
):
    src = vllm_instances[0]
    dst = _alive(doomed, 0, tiny_model_dir, cluster_secret, instance_log_dir)
    prompt = prompt_ids(300, seed=21)
    ref = await follow(http, src.url, body("kill-dst-ref", prompt, NUM_KILL_DST_TOKENS))
    rid = f"kill-dst-{uuid.uuid4().hex[:8]}"  # a retry must not meet the first attempt's
    task = asyncio.create_task(follow(http, src.url, body(rid, prompt, NUM_KILL_DST_TOKENS)))
    await wait_tokens(http, src.url, rid, 5)
    # Pre-copy pauses after its first stage; the destination dies meanwhile.
    mig = asyncio.create_task(migrate(http, src, dst, [rid], debug_pause_s=KILL_WINDOW_S))

    async def reserved_or_done() -> bool:
        return mig.done() or await _reserved(http, dst.url)

    await wait_until(reserved_or_done, "reservation on the destination")
    assert not mig.done(), (await mig).text
    kill_instance(dst)
    resp = await mig
    trace = await task
    (result,) = results_of(resp)
    assert result["status"] == "aborted", outcome(result)
    assert result["reason"] in ("transfer-failed", "dst-unreachable", "dst-failed"), outcome(result)
    assert [e["type"] for e in trace.ends] == ["finished"]
    assert_contiguous(trace, NUM_KILL_DST_TOKENS)
    assert trace.tokens == ref.tokens


async def test_source_killed_mid_migration(
    vllm_instances, doomed, http, tiny_model_dir, cluster_secret, instance_log_dir
):
    src = _alive(doomed, 1, tiny_model_dir, cluster_secret, instance_log_dir)
    dst = vllm_instances[1]
    task = asyncio.create_task(follow(http, src.url, body("kill-src", prompt_ids(300, 22), 1700)))
    await wait_tokens(http, src.url, "kill-src", 5)
    mig = asyncio.create_task(migrate(http, src, dst, ["kill-src"], debug_pause_s=60))
    await wait_until(lambda: _reserved(http, dst.url), "reservation on the destination")
    kill_instance(src)
    # The caller learns of the failure (no hang): the migrate call and the stream break.
    with pytest.raises(httpx.HTTPError):
        await asyncio.wait_for(mig, 60)
    with pytest.raises(httpx.HTTPError):
        await asyncio.wait_for(task, 60)

    # The destination drops the orphaned reservation and keeps serving.
    async def released() -> bool:
        return (await load_of(http, dst.url))["num_migrating_in"] == 0

    await wait_until(released, "destination dropping the reservation", timeout_s=60)
    trace = await follow(http, dst.url, body("after-kill", prompt_ids(20, 23), 5))
    assert trace.end["type"] == "finished"
