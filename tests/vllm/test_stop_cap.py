"""The scheduler side's stop for migration ("hold" with "cap"), on vLLM's own `Request`
and stop check (no engine started): a running request ends after the steps already
scheduled for it, like any request at its length limit, so no step's token for it is
thrown away."""

from __future__ import annotations

import pytest

from agent.engines.vllm.client import SocketClient
from agent.engines.vllm.sched_side import KEY, SchedulerSide

MAX_MODEL_LEN = 1024


def _request(vllm_id: str, key: str, max_tokens: int):
    from vllm import SamplingParams
    from vllm.v1.request import Request

    request = Request(vllm_id, [1, 2, 3, 4], SamplingParams(max_tokens=max_tokens), None)
    request.kv_transfer_params = {KEY: key}
    return request


def _decode(request, num_tokens: int, *, num_in_flight: int = 0) -> None:
    """`num_tokens` sampled tokens back, `num_in_flight` steps scheduled whose are not."""
    from vllm.v1.request import RequestStatus

    request.status = RequestStatus.RUNNING
    for token_id in range(100, 100 + num_tokens):
        request.append_output_token_ids(token_id)
    request.num_output_placeholders = num_in_flight


def _is_stopped_by_next_token(request) -> bool:
    from vllm.v1.core.sched.utils import check_stop

    request.append_output_token_ids(7)
    return check_stop(request, MAX_MODEL_LEN)


@pytest.fixture
async def sched(tmp_path):
    side = SchedulerSide(str(tmp_path / "sched.sock"), block_size=32, num_total_blocks=16)
    client = SocketClient(str(tmp_path / "sched.sock"))
    await client.connect()
    yield side, client
    await client.close()


async def _hold(client: SocketClient, key: str) -> bool:
    reply, _ = await client.call({"op": "hold", "key": key, "cap": True})
    return reply["capped"]


async def _stopped_while_decoding(sched, *, max_tokens: int, num_in_flight: int):
    """A request with 5 tokens back and `num_in_flight` steps scheduled, stopped (capped)."""
    side, client = sched
    request = _request("r@1-0a1b", "r", max_tokens=max_tokens)
    side.on_new_request(request)
    _decode(request, 5, num_in_flight=num_in_flight)
    assert await _hold(client, "r")
    return request


@pytest.mark.parametrize("num_in_flight", [0, 1])
async def test_a_running_request_ends_with_the_token_of_its_step_in_flight(sched, num_in_flight):
    """Synchronous scheduling (nothing scheduled between steps, the step in flight not
    yet counted) and async scheduling (one step scheduled ahead, as a placeholder)."""
    from vllm.v1.request import RequestStatus

    request = await _stopped_while_decoding(sched, max_tokens=100, num_in_flight=num_in_flight)
    assert _is_stopped_by_next_token(request)
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert request.num_output_tokens == 6
    # Its blocks are kept for the copy, like an aborted request's.
    side, _ = sched
    assert side.request_finished(request, [3, 4]) is True


async def test_two_steps_in_flight_both_deliver_before_the_end(sched):
    request = await _stopped_while_decoding(sched, max_tokens=100, num_in_flight=2)
    assert not _is_stopped_by_next_token(request)
    assert _is_stopped_by_next_token(request)
    assert request.num_output_tokens == 7


async def test_the_cap_never_raises_a_request_limit(sched):
    request = await _stopped_while_decoding(sched, max_tokens=6, num_in_flight=2)
    assert request.max_tokens == 6


async def test_a_request_not_running_is_not_capped(sched):
    """A waiting request has no step in flight: the stop aborts it instead."""
    side, client = sched
    waiting = _request("w@1-0a1b", "w", max_tokens=100)
    side.on_new_request(waiting)
    assert not await _hold(client, "w")
    assert not await _hold(client, "unknown")
    assert waiting.max_tokens == 100
