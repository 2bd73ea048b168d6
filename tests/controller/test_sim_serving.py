"""The whole path on sim engines (a simulated engine, labelled `sim`; it is not evidence
that the vLLM path works): the official openai client against a controller process,
an agent process hosting sim instances, their llumlets reporting, a forced migration."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from llumctl.protocol import bearer
from tests.controller.cluster_helpers import SECRET, add_instances, api, wait_for

MODEL = "sim-model"
# The paper's 7B profile, 20x faster than real time.
FAST = {"speedup": 20.0}
_ENDED = ("finished", "aborted", "failed")


@pytest.fixture
def cluster(controller_factory, agent_factory):
    controller = controller_factory(models=[{"name": MODEL, "engine": "sim"}], policy="infaas++")
    agent = agent_factory(controller.url)
    ids = add_instances(agent, MODEL, 2, **FAST)
    wait_for(lambda: _num_live(controller) == 2, what="two instances reporting")
    return controller, agent, ids


def _num_live(controller) -> int:
    status = api(controller, "GET", "/api/status").json()
    return sum(1 for i in status["instances"] if i["state"] == "running")


def _client(controller) -> openai.OpenAI:
    return openai.OpenAI(base_url=controller.url + "/v1", api_key="unused", max_retries=0)


def test_openai_client_gets_completions_streaming_and_not(cluster):
    controller, _, ids = cluster
    client = _client(controller)
    text = client.completions.create(model=MODEL, prompt="one two three", max_tokens=7)
    assert text.usage.completion_tokens == 7 and text.usage.prompt_tokens == 3
    assert len(text.choices[0].text.split()) == 7 and text.choices[0].finish_reason == "length"
    streamed = client.completions.create(
        model=MODEL, prompt="one two three", max_tokens=7, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text.choices[0].text
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        chat.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == 5
    status = api(controller, "GET", "/api/status").json()
    assert {i["engine"] for i in status["instances"]} == {"sim"}
    with ThreadPoolExecutor(10) as pool:
        texts = list(
            pool.map(
                lambda i: client.completions.create(model=MODEL, prompt=f"n {i}", max_tokens=20),
                range(10),
            )
        )
    assert all(t.usage.completion_tokens == 20 for t in texts)
    dispatches = api(controller, "GET", "/api/events", params={"kind": "dispatch"}).json()
    # A concurrent batch spreads over both instances (pending dispatches count as load).
    assert {e["instance"] for e in dispatches["events"][-10:]} == set(ids)


def test_prompt_longer_than_context_is_a_400(controller_factory, agent_factory):
    controller = controller_factory(models=[{"name": MODEL, "engine": "sim"}])
    agent = agent_factory(controller.url)
    add_instances(agent, MODEL, 1, speedup=20.0, profile={"max_model_len": 16})
    wait_for(lambda: _num_live(controller) == 1, what="instance")
    client = _client(controller)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="w " * 40, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="w " * 40, max_tokens=4, stream=True)


def test_forced_migration_mid_stream_keeps_the_text(cluster):
    controller, _, ids = cluster
    client = _client(controller)
    prompt, max_tokens = "migrate this request please", 1500
    reference = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens)
    stream = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, stream=True
    )
    pieces, results = [], []
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
        if len(pieces) == 10:
            rid = chunk.id
            src = _instance_of(controller, rid)
            dst = next(i for i in ids if i != src)
            # Migrate from another thread: the stream keeps being read meanwhile.
            body = {"request_id": rid, "to": dst}
            worker = threading.Thread(
                target=lambda b=body: results.append(
                    api(controller, "POST", "/api/migrate", json=b)
                )
            )
            worker.start()
    worker.join()
    assert results[0].status_code == 200, results[0].text
    assert results[0].json()["results"][0]["status"] == "committed"
    assert "".join(pieces) == reference.choices[0].text
    events = api(controller, "GET", "/api/events", params={"kind": "migration"}).json()["events"]
    mine = [e for e in events if e["request"] == rid]
    assert mine and mine[0]["status"] == "committed" and mine[0]["downtime_ms"] > 0
    assert (mine[0]["src"], mine[0]["dst"]) == (src, dst)
    record = next(r for r in api(controller, "GET", "/api/requests").json() if r["id"] == rid)
    assert [h["instance"] for h in record["history"]] == [src, dst]
    metrics = httpx.get(controller.url + "/metrics").text
    assert "llumctl_migration_downtime_seconds_count 1.0" in metrics


def _instance_of(controller, rid: str) -> str:
    status = api(controller, "GET", "/api/status").json()
    return next(r["instance"] for r in status["requests"] if r["id"] == rid)


def test_status_has_the_cli_shape(cluster):
    controller, _, _ = cluster
    _client(controller).completions.create(model=MODEL, prompt="a b", max_tokens=3)
    status = api(controller, "GET", "/api/status").json()
    assert status["controller"] == controller.url
    keys = {"id", "host", "engine", "state", "running", "queued", "kv_used_blocks"}
    keys |= {"kv_total_blocks", "freeness"}
    assert all(keys <= set(i) for i in status["instances"])
    assert status["latency"]["ttft_ms"]["p50"] is not None


def test_client_hanging_up_aborts_the_request_on_its_instance(cluster):
    controller, agent, _ = cluster
    body = {"model": MODEL, "prompt": "long one", "max_tokens": 5000, "stream": True}
    with httpx.stream("POST", controller.url + "/v1/completions", json=body, timeout=30) as resp:
        lines = resp.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
    rid = first["id"]
    record = wait_for(
        lambda: next(
            (
                r
                for r in api(controller, "GET", "/api/requests").json()
                if r["id"] == rid and r["state"] == "aborted"
            ),
            None,
        ),
        what="the request aborted",
    )
    rows = api(controller, "GET", "/api/status").json()["instances"]
    url = next(i["url"] for i in rows if i["id"] == record["instance"])
    on_instance = httpx.get(f"{url}/requests", headers=bearer(SECRET)).json()
    row = next(r for r in on_instance if r["request_id"] == rid)
    assert row["state"] == "finished" and row["num_output_tokens"] < 5000


def test_client_hanging_up_on_a_non_streamed_request_aborts_it(cluster):
    controller, _, _ = cluster
    body = {"model": MODEL, "prompt": "long one", "max_tokens": 5000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(controller.url + "/v1/completions", json=body, timeout=1.5)
    record = wait_for(
        lambda: next(
            (r for r in api(controller, "GET", "/api/requests").json() if r["state"] in _ENDED),
            None,
        ),
        what="the request to end",
    )
    assert record["state"] == "aborted"
    rows = api(controller, "GET", "/api/status").json()["instances"]
    url = next(i["url"] for i in rows if i["id"] == record["instance"])
    on_instance = httpx.get(f"{url}/requests", headers=bearer(SECRET)).json()
    row = next(r for r in on_instance if r["request_id"] == record["id"])
    assert row["state"] == "finished" and row["num_output_tokens"] < 5000


def _num_closed_connections(port: int) -> int:
    """Loopback TCP connections to or from `port` in TIME_WAIT (closed, not reused)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, remote, state = row.split()[1:4]
            ports = {int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)}
            count += state == "06" and port in ports
    return count


def test_sequential_requests_reuse_the_controllers_connection_to_the_instance(cluster):
    """The relay reads each instance stream to its end, so the connection goes back to
    the pool instead of being closed and reopened per request (~2 ms each here)."""
    controller, agent, _ = cluster
    agent_port = int(agent.url.rsplit(":", 1)[1].split("/")[0])
    client = _client(controller)
    before = _num_closed_connections(agent_port)
    for i in range(20):
        for kind in ("stream", "whole"):
            out = client.completions.create(
                model=MODEL, prompt=f"r{i}", max_tokens=3, stream=kind == "stream"
            )
            if kind == "stream":
                assert sum(1 for c in out if c.choices and c.choices[0].text) == 3
    assert _num_closed_connections(agent_port) - before <= 4


def test_a_request_goes_on_when_its_first_instance_is_unreachable(cluster):
    # An instance that reports as the freest but whose API does not answer (its process
    # died after its last report): the request is served by another instance, not lost.
    from llumctl.policy.views import InstanceLoad
    from llumctl.protocol import InstanceInfo, LoadReport, to_json_dict
    from tests.conftest import free_port

    controller, _, ids = cluster
    dead = f"http://127.0.0.1:{free_port()}/instances/dead"
    info = InstanceInfo("dead", dead, "sim", MODEL, fingerprint=_fingerprint(controller))
    load = InstanceLoad("dead", num_total_blocks=10**6, num_used_blocks=0, model=MODEL)
    report = to_json_dict(LoadReport(info, load))
    assert api(controller, "POST", "/internal/load", json=report).status_code == 200
    text = _client(controller).completions.create(model=MODEL, prompt="one two", max_tokens=3)
    assert text.usage.completion_tokens == 3
    events = api(controller, "GET", "/api/events", params={"kind": "dispatch"}).json()["events"]
    assert [e["instance"] for e in events[-2:]] == ["dead", events[-1]["instance"]]
    assert events[-1]["instance"] in ids
    failures = api(controller, "GET", "/api/events", params={"kind": "failure"}).json()["events"]
    assert failures[-1]["instance"] == "dead"
    assert "unreachable at dispatch" in failures[-1]["reason"]


def _fingerprint(controller) -> str:
    status = api(controller, "GET", "/api/status").json()
    return status["instances"][0].get("fingerprint", "")


def test_a_request_refused_by_a_draining_instance_goes_to_another(cluster):
    # A drain that lands between the controller's choice and the request's arrival (a
    # scale-down racing a dispatch): the instance refuses, the request is served elsewhere
    # and the client never hears of it. The race is made certain by silencing the
    # instance's reports, draining it behind the controller's back, then reporting it
    # as the freest and not draining.
    from llumctl.policy.views import InstanceLoad
    from llumctl.protocol import InstanceInfo, LoadReport, to_json_dict

    controller, _, ids = cluster
    rows = {i["id"]: i for i in api(controller, "GET", "/api/status").json()["instances"]}
    victim = rows[ids[0]]
    on_victim = {"headers": bearer(SECRET), "timeout": 10}
    assert httpx.put(f"{victim['url']}/report-target", json={"url": None}, **on_victim).is_success
    assert httpx.post(f"{victim['url']}/drain", json={"draining": True}, **on_victim).is_success
    info = InstanceInfo(
        ids[0], victim["url"], "sim", MODEL, fingerprint=victim.get("fingerprint", "")
    )
    load = InstanceLoad(ids[0], num_total_blocks=10**6, num_used_blocks=0, model=MODEL)
    report = to_json_dict(LoadReport(info, load))
    assert api(controller, "POST", "/internal/load", json=report).status_code == 200
    text = _client(controller).completions.create(model=MODEL, prompt="one two", max_tokens=3)
    assert text.usage.completion_tokens == 3
    events = api(controller, "GET", "/api/events", params={"kind": "dispatch"}).json()["events"]
    assert [e["instance"] for e in events[-2:]] == [ids[0], ids[1]]
    # Taken out of dispatch at once, before any report says it drains.
    again = _client(controller).completions.create(model=MODEL, prompt="three", max_tokens=2)
    assert again.usage.completion_tokens == 2
    events = api(controller, "GET", "/api/events", params={"kind": "dispatch"}).json()["events"]
    assert events[-1]["instance"] == ids[1]
