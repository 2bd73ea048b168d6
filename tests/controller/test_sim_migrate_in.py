"""The destination's side of a migration, on sim instances hosted by a real agent process
(a simulated engine, labelled `sim`; the vLLM path has its own tests): a request still
migrating in is not moved on, and a migration the source calls off after the resume leaves
no copy of the request running on the destination."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from llumctl.protocol import bearer
from tests.controller.cluster_helpers import SECRET, add_instances, wait_for

MODEL = "sim-model"


class _Pair:
    """Instance A (fast) and B (one seat) of one agent, driven through their own APIs."""

    def __init__(self, agent) -> None:
        (self.a,) = add_instances(agent, MODEL, 1, speedup=20.0)
        (self.b,) = add_instances(agent, MODEL, 1, speedup=5.0, profile={"max_num_seqs": 1})
        self.url = {i: f"{agent.url}/instances/{i}" for i in (self.a, self.b)}
        self.http = httpx.Client(headers=bearer(SECRET), timeout=120)

    def generate(self, inst: str, rid: str, max_tokens: int, **extra: object) -> list[dict]:
        body = {
            "request_id": rid,
            "prompt": f"{rid} goes on",
            "sampling": {"max_tokens": max_tokens},
        }
        with self.http.stream("POST", f"{self.url[inst]}/generate", json={**body, **extra}) as r:
            return [json.loads(line) for line in r.iter_lines() if line.strip()]

    def row(self, inst: str, rid: str) -> dict:
        rows = self.http.get(f"{self.url[inst]}/requests").json()
        return next((r for r in rows if r["request_id"] == rid), {})

    def tokens(self, inst: str, rid: str) -> int:
        return self.row(inst, rid).get("num_output_tokens", 0)

    def engine_requests(self, inst: str) -> set[str]:
        load = self.http.get(f"{self.url[inst]}/load").json()["load"]
        return {r["request_id"] for r in load["queued"] + load["running"]}

    def queued(self, inst: str) -> set[str]:
        load = self.http.get(f"{self.url[inst]}/load").json()["load"]
        return {r["request_id"] for r in load["queued"]}

    def move(self, src: str, dst: str, **body: object) -> httpx.Response:
        body = {"dst_url": self.url[dst], "dst_instance_id": dst, **body}
        return self.http.post(f"{self.url[src]}/migrate", json=body)

    def start_on_a(self, pool: ThreadPoolExecutor, rid: str, max_tokens: int):
        """R streaming from A, once it decodes there."""
        stream = pool.submit(self.generate, self.a, rid, max_tokens)
        wait_for(lambda: self.tokens(self.a, rid) > 0, what=f"{rid} decoding on A")
        return stream

    def take_b_seat(self, pool: ThreadPoolExecutor):
        """A HIGH request (never a migration candidate) in B's only seat."""
        seat = pool.submit(self.generate, self.b, "seat", 12_000, priority=1)
        wait_for(lambda: self.tokens(self.b, "seat") > 0, what="B's seat taken")
        return seat


@pytest.fixture
def pair(controller_factory, agent_factory) -> _Pair:
    controller = controller_factory(models=[{"name": MODEL, "engine": "sim"}], policy="round-robin")
    return _Pair(agent_factory(controller.url))


def _is_whole(events: list[dict], max_tokens: int) -> bool:
    indexes = [e["index"] for e in events if e["type"] == "token"]
    return events[-1]["type"] == "finished" and indexes == list(range(max_tokens))


def test_a_request_still_migrating_in_is_not_moved_on(pair):
    # R migrates from A to B (recompute: the sim engine queues it like a new request) and
    # waits in B's queue: its migration in has not committed (A waits for its first token
    # on B), so B must neither pick R nor accept a request to move it.
    a, b = pair.a, pair.b
    with ThreadPoolExecutor(3) as pool:
        seat = pair.take_b_seat(pool)
        r_on_a = pair.start_on_a(pool, "r", 3000)
        moving = pool.submit(pair.move, a, b, request_ids=["r"], mode="recompute")
        wait_for(lambda: "r" in pair.queued(b), what="R queued on B")
        picked = pair.move(b, a, num_requests=1)
        asked = pair.move(b, a, request_ids=["r"])
        pair.http.post(f"{pair.url[b]}/requests/seat/abort")
        result = moving.result(timeout=60)
        events = r_on_a.result(timeout=60)
        seat.result(timeout=60)
    assert picked.status_code == 200 and picked.json()["results"] == [], picked.text
    assert asked.status_code == 409 and asked.json()["error"]["reason"] == "already-migrating"
    assert result.json()["results"][0]["status"] == "committed", result.text
    assert events[-1]["type"] == "migrated" and events[-1]["to_instance"] == b


def test_a_resume_that_brings_no_token_in_time_leaves_the_request_at_its_source(pair):
    # R moves from A to B, where it waits behind B's seat past the time A allows for its
    # first token there: B gives up and drops its copy, A goes on with R, and R's stream
    # on A has every token once.
    a, b = pair.a, pair.b
    with ThreadPoolExecutor(3) as pool:
        seat = pair.take_b_seat(pool)
        r_on_a = pair.start_on_a(pool, "r", 1500)
        moving = pair.move(a, b, request_ids=["r"], mode="recompute", resume_timeout_s=1.0)
        on_b = pair.engine_requests(b)
        events = r_on_a.result(timeout=60)
        pair.http.post(f"{pair.url[b]}/requests/seat/abort")
        seat.result(timeout=60)
    assert moving.status_code == 200, moving.text
    result = moving.json()["results"][0]
    assert (result["status"], result["reason"]) == ("aborted", "dst-failed"), result
    assert on_b == {"seat"}, on_b
    assert pair.row(b, "r")["state"] != "running"
    assert _is_whole(events, 1500), events[-3:]


def test_a_migration_called_off_after_the_resume_aborts_the_copy_on_the_destination(pair):
    # The source's half of the protocol played by hand: reserve on B, resume (R queues
    # behind B's seat), then cancel as a source does when its resume call fails.
    b, http = pair.b, pair.http
    url = pair.url[b]
    request = {"request_id": "x", "prompt_token_ids": [5, 6, 7], "sampling": {"max_tokens": 40}}
    with ThreadPoolExecutor(2) as pool:
        seat = pair.take_b_seat(pool)
        reserve = {"migration_id": "m-x", "request_id": "x", "num_blocks": 1}
        assert http.post(f"{url}/migrate-in/reserve", json=reserve).status_code == 200
        body = {"request": request, "previous_output_ids": [9], "timeout_s": 60}
        resume = pool.submit(http.post, f"{url}/migrate-in/m-x/resume", json=body)
        wait_for(lambda: "x" in pair.queued(b), what="X queued on B")
        cancelled = http.post(f"{url}/migrate-in/m-x/cancel")
        resumed = resume.result(timeout=30)
        on_b = pair.engine_requests(b)
        http.post(f"{url}/requests/seat/abort")
        seat.result(timeout=60)
    assert cancelled.status_code == 200, cancelled.text
    assert resumed.status_code == 409 and resumed.json()["error"]["reason"] == "dst-failed"
    assert on_b == {"seat"}, on_b


@pytest.mark.parametrize(
    "bad",
    [{"num_staged_tokens": "many"}, {"timeout_s": -1}, {"previous_output_ids": ["x"]}],
    ids=["staged", "timeout", "outputs"],
)
def test_a_bad_resume_is_a_400_and_the_reservation_still_resumes(pair, bad):
    url, http = pair.url[pair.b], pair.http
    reserve = {"migration_id": "m-y", "request_id": "y", "num_blocks": 1}
    assert http.post(f"{url}/migrate-in/reserve", json=reserve).status_code == 200
    request = {"request_id": "y", "prompt_token_ids": [5, 6, 7], "sampling": {"max_tokens": 4}}
    body = {"request": request, "previous_output_ids": [9], "timeout_s": 30}
    refused = http.post(f"{url}/migrate-in/m-y/resume", json={**body, **bad})
    assert refused.status_code == 400, refused.text
    assert "\n" not in refused.json()["error"]["message"]
    assert pair.row(pair.b, "y") == {}  # nothing of the request was started
    resumed = http.post(f"{url}/migrate-in/m-y/resume", json=body)
    assert resumed.status_code == 200 and resumed.json()["ok"], resumed.text
    wait_for(lambda: pair.row(pair.b, "y").get("state") == "finished", what="Y finished on B")
    assert pair.tokens(pair.b, "y") == 4
