"""Cluster behaviour on sim engines (simulated, labelled `sim`): auto-scaling with drain by
migration, priorities, controller restart, several models. Real controller and agent
processes, real llumlets; only the engine is simulated."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from llumctl.protocol import bearer
from tests.controller.cluster_helpers import SECRET, add_instances, api, wait_for

MODEL = "sim-model"


def _client(controller, timeout: float = 120.0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=controller.url + "/v1", api_key="unused", max_retries=0, timeout=timeout
    )


def _live(controller, model: str | None = None) -> list[dict]:
    status = api(controller, "GET", "/api/status").json()
    return [
        i
        for i in status["instances"]
        if i["state"] == "running" and (model is None or i["model"] == model)
    ]


def _events(controller, kind: str) -> list[dict]:
    return api(controller, "GET", "/api/events", params={"kind": kind}).json()["events"]


SCALING_PROFILE = {"num_total_blocks": 200, "watermark_blocks": 0}
SCALING_ARGS = {"speedup": 2.0, "profile": SCALING_PROFILE}


def test_autoscaling_grows_under_load_and_shrinks_by_draining(controller_factory, agent_factory):
    params = {
        "is_scaling_enabled": True,
        "scale_up_below": 10,
        "scale_down_above": 60,
        "scale_cooldown_s": 1.0,
        "min_instances": 1,
        "max_instances": 4,
    }
    models = [{"name": MODEL, "engine": "sim", "engine_args": SCALING_ARGS}]
    controller = controller_factory(models=models, params=params, policy="llumnix")
    agent = agent_factory(controller.url, max_instances=4)
    add_instances(agent, MODEL, 1, **SCALING_ARGS)
    wait_for(lambda: len(_live(controller)) == 1, what="first instance")
    client = _client(controller)
    prompt = " ".join(["w"] * 100)

    def burst(i: int):
        return client.completions.create(model=MODEL, prompt=f"{i} {prompt}", max_tokens=100)

    def tail(i: int):
        return client.completions.create(model=MODEL, prompt=f"tail {i}", max_tokens=800)

    sizes: list[int] = []
    done = threading.Event()
    with ThreadPoolExecutor(44) as pool:
        sampler = pool.submit(_sample_sizes, controller, sizes, done)
        try:
            bursts = [pool.submit(burst, i) for i in range(40)]
            with _dump_on_failure(controller, sizes):
                wait_for(lambda: len(_live(controller)) >= 3, timeout_s=120, what="growth")
            burst_results = [b.result() for b in bursts]
            # Long requests sent once the burst is over: the grown cluster is idle, so they
            # spread over its instances (sent during the burst they would all go to the one
            # new, empty instance) and are still running when the cluster shrinks, so the
            # drained instances must migrate them out.
            tails = [pool.submit(tail, i) for i in range(3)]
            tail_results = [t.result() for t in tails]
        finally:
            # Set on every path: the pool's exit waits for the sampler, which runs until
            # this is set (a failed wait here once hung a whole CI run).
            done.set()
        sampler.result()
    peak = max(sizes)
    assert all(r.usage.completion_tokens == 100 for r in burst_results)
    assert all(r.usage.completion_tokens == 800 for r in tail_results)
    ups = _events(controller, "scale-up")
    assert ups and peak > 1, "the cluster did not grow under load"
    with _dump_on_failure(controller, sizes):
        wait_for(lambda: len(_live(controller)) == 1, timeout_s=90, what="scale back to one")
    downs = _events(controller, "scale-down")
    stopped = [e for e in downs if e["phase"] == "stopped"]
    assert len(stopped) == len(ups), "every instance started was drained and stopped"
    drained = {e["instance"] for e in stopped}
    moved = [e for e in _events(controller, "migration") if e["src"] in drained]
    assert any(e["status"] == "committed" and e["trigger"] == "drain" for e in moved), (
        "no request was migrated out of a draining instance"
    )
    health = httpx.get(agent.url + "/health", headers=bearer(SECRET)).json()
    assert len(health["instances"]) == 1


@contextlib.contextmanager
def _dump_on_failure(controller, sizes: list[int]) -> Iterator[None]:
    """A failed wait prints what the cluster did (its sizes over time, instances, requests,
    scaling and the last migrations), so a rare failure explains itself in the CI log."""
    try:
        yield
    except AssertionError:
        status = api(controller, "GET", "/api/status").json()
        print("cluster sizes sampled every 0.2 s:", sizes)
        print(json.dumps([status["instances"], status["requests"]], indent=1))
        kinds = ("scale-up", "scale-down")
        events = [e for kind in kinds for e in _events(controller, kind)]
        print(json.dumps(events + _events(controller, "migration")[-10:], indent=1))
        raise


def _sample_sizes(controller, sizes: list[int], done: threading.Event) -> None:
    while not done.wait(0.2):
        sizes.append(len(_live(controller)))


def test_high_priority_requests_get_lower_ttft(controller_factory, agent_factory):
    controller = controller_factory(models=[{"name": MODEL, "engine": "sim"}], policy="llumnix")
    agent = agent_factory(controller.url)
    # Few sequences per step: requests queue on the instances, as on a loaded cluster.
    # Real-time steps (33 ms) so the engines, not the controller, are the bottleneck.
    args = {"speedup": 1.0, "profile": {"max_num_seqs": 3}}
    add_instances(agent, MODEL, 2, **args)
    wait_for(lambda: len(_live(controller)) == 2, what="instances")
    client = _client(controller)
    prompt = " ".join(["w"] * 60)

    def one(i: int) -> None:
        high = i % 5 == 0
        client.completions.create(
            model=MODEL,
            prompt=f"{i} {prompt}",
            max_tokens=60,
            extra_body={"priority": "high" if high else "normal"},
        )

    with ThreadPoolExecutor(30) as pool:
        list(pool.map(one, range(30)))
    metrics = httpx.get(controller.url + "/metrics").text
    mean = {p: _mean(metrics, "llumctl_ttft_seconds", p) for p in ("high", "normal")}
    print("ttft mean (s):", mean)
    assert mean["high"] < mean["normal"], mean


def _mean(metrics: str, name: str, priority: str) -> float:
    values = {}
    for line in metrics.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith(f'{name}{suffix}{{priority="{priority}"}}'):
                values[suffix] = float(line.split()[-1])
    return values["_sum"] / values["_count"]


def test_controller_restart_keeps_the_cluster(controller_factory, agent_factory):
    controller = controller_factory(models=[{"name": MODEL, "engine": "sim"}])
    agent = agent_factory(controller.url)
    ids = add_instances(agent, MODEL, 4, speedup=20.0)
    wait_for(lambda: len(_live(controller)) == 4, what="four instances")
    client = _client(controller)
    assert client.completions.create(model=MODEL, prompt="before", max_tokens=5).choices
    with ThreadPoolExecutor(8) as pool:
        # Requests in flight while the controller dies: their client connections break,
        # the instances are untouched.
        inflight = [
            pool.submit(
                lambda i=i: client.completions.create(model=MODEL, prompt=f"x {i}", max_tokens=2000)
            )
            for i in range(8)
        ]
        wait_for(lambda: api(controller, "GET", "/api/status").json()["requests"], what="load")
        controller.kill()
        for future in inflight:
            with pytest.raises(openai.APIError):
                future.result()
    controller.restart()
    # New requests are served within 5 s of the restart (the dispatcher waits for the
    # first load reports; the client gives up after 5 s).
    fast = _client(controller, timeout=5.0)
    reply = fast.completions.create(model=MODEL, prompt="after", max_tokens=5)
    assert reply.usage.completion_tokens == 5
    wait_for(lambda: len(_live(controller)) == 4, timeout_s=5, what="all instances back")
    assert sorted(i["id"] for i in _live(controller)) == sorted(ids)
    health = httpx.get(agent.url + "/health", headers=bearer(SECRET)).json()
    assert sorted(i["instance_id"] for i in health["instances"]) == sorted(ids)
    assert {i["state"] for i in health["instances"]} == {"running"}


def test_several_models_dispatch_and_migrate_within_their_own_group(
    controller_factory, agent_factory
):
    controller = controller_factory(
        models=[{"name": "a", "engine": "sim"}, {"name": "b", "engine": "sim"}]
    )
    agent = agent_factory(controller.url)
    ids_a = add_instances(agent, "a", 2, speedup=20.0)
    ids_b = add_instances(agent, "b", 2, speedup=20.0, profile={"max_model_len": 2048})
    wait_for(lambda: len(_live(controller)) == 4, what="instances")
    # /v1/models says each model's context length as vLLM does (clients size requests by it).
    listed = httpx.get(controller.url + "/v1/models").json()["data"]
    assert {m["id"]: m["max_model_len"] for m in listed} == {"a": 12288, "b": 2048}
    client = _client(controller)
    with ThreadPoolExecutor(12) as pool:
        replies = list(
            pool.map(
                lambda i: client.completions.create(
                    model="ab"[i % 2], prompt=f"p {i}", max_tokens=30
                ),
                range(12),
            )
        )
    assert [r.model for r in replies] == ["ab"[i % 2] for i in range(12)]
    for event in _events(controller, "dispatch"):
        assert event["instance"] in (ids_a if event["model"] == "a" else ids_b)
    stream = client.completions.create(model="a", prompt="long", max_tokens=3000, stream=True)
    first = next(iter(stream))
    src = next(
        r["instance"] for r in api(controller, "GET", "/api/requests").json() if r["id"] == first.id
    )
    refused = api(controller, "POST", "/api/migrate", json={"request_id": first.id, "to": ids_b[0]})
    assert refused.status_code == 409 and refused.json()["error"]["reason"] == "incompatible"
    # Without a destination the controller picks the freest instance of the same model.
    moved = api(controller, "POST", "/api/migrate", json={"request_id": first.id})
    assert moved.status_code == 200, moved.text
    assert moved.json()["dst"] == next(i for i in ids_a if i != src)
    stream.close()


def test_sixteen_sim_instances_on_two_agents(controller_factory, agent_factory):
    controller = controller_factory(models=[{"name": MODEL, "engine": "sim"}], policy="llumnix")
    agents = [agent_factory(controller.url, agent_id=f"host{i}") for i in range(2)]
    for agent in agents:
        add_instances(agent, MODEL, 8, speedup=10.0)
    wait_for(lambda: len(_live(controller)) == 16, what="sixteen instances")
    client = _client(controller)
    with ThreadPoolExecutor(32) as pool:
        replies = list(
            pool.map(
                lambda i: client.completions.create(model=MODEL, prompt=f"q {i}", max_tokens=40),
                range(64),
            )
        )
    assert all(r.usage.completion_tokens == 40 for r in replies)
    used = {e["instance"] for e in _events(controller, "dispatch")}
    assert len(used) == 16
    status = api(controller, "GET", "/api/status").json()
    assert {i["engine"] for i in status["instances"]} == {"sim"}
    assert sorted({i["agent"] for i in status["instances"]}) == ["host0", "host1"]
