"""The agent process: its API, the secret, supervision of instance processes."""

from __future__ import annotations

import httpx

from llumctl.protocol import bearer
from tests.controller.cluster_helpers import SECRET, api, wait_for

GOOD = bearer(SECRET)


def test_agent_api_needs_the_secret_and_checks_input(controller_factory, agent_factory):
    controller = controller_factory(models=[{"name": "m", "engine": "sim"}])
    agent = agent_factory(controller.url, max_instances=1)
    body = {"engine": "sim", "model": "m", "engine_args": {"speedup": 10}}
    assert httpx.post(agent.url + "/instances", json=body).status_code == 401
    assert httpx.get(agent.url + "/health").status_code == 401
    assert httpx.get(agent.url + "/health", headers=GOOD).json()["instances"] == []
    for bad in (
        {"engine": "tpu", "model": "m"},
        {"engine": "sim"},
        {"engine": "sim", "model": "m", "engine_args": 3},
    ):
        resp = httpx.post(agent.url + "/instances", json=bad, headers=GOOD)
        assert resp.status_code == 400, resp.text
    bad_profile = {"engine": "sim", "model": "m", "engine_args": {"profile": {"nope": 1}}}
    assert httpx.post(agent.url + "/instances", json=bad_profile, headers=GOOD).status_code == 400
    created = httpx.post(agent.url + "/instances", json=body, headers=GOOD)
    assert created.status_code == 200 and created.json()["engine"] == "sim"
    iid = created.json()["instance_id"]
    full = httpx.post(agent.url + "/instances", json=body, headers=GOOD)
    assert full.status_code == 400 and "full" in full.json()["error"]["message"]
    logs = httpx.get(f"{agent.url}/instances/{iid}/logs", headers=GOOD)
    assert "sim engine" in logs.text
    # The instance API under the agent also wants the secret.
    assert httpx.get(f"{agent.url}/instances/{iid}/load").status_code == 401
    assert (
        httpx.get(f"{agent.url}/instances/{iid}/load", headers=GOOD).json()["info"]["engine"]
        == "sim"
    )
    wait_for(lambda: api(controller, "GET", "/api/instances").json(), what="registration")
    assert httpx.delete(f"{agent.url}/instances/{iid}", headers=GOOD).status_code == 200
    assert httpx.delete(f"{agent.url}/instances/{iid}", headers=GOOD).status_code == 404
    assert httpx.get(agent.url + "/health", headers=GOOD).json()["instances"] == []


def test_a_dying_instance_process_is_reported_not_restarted(
    controller_factory, agent_factory, tmp_path
):
    controller = controller_factory()
    agent = agent_factory(controller.url)
    body = {
        "engine": "vllm",
        "model": "m",
        "instance_id": "doomed",
        "engine_args": {"model_path": str(tmp_path / "no-such-model")},
    }
    created = httpx.post(agent.url + "/instances", json=body, headers=GOOD, timeout=30)
    assert created.status_code == 200 and created.json()["state"] == "starting"

    def state() -> str:
        health = httpx.get(agent.url + "/health", headers=GOOD).json()
        return next(i["state"] for i in health["instances"] if i["instance_id"] == "doomed")

    wait_for(lambda: state() == "failed", timeout_s=180, what="the instance to fail")
    failures = wait_for(
        lambda: [
            e
            for e in api(controller, "GET", "/api/events", params={"kind": "failure"}).json()[
                "events"
            ]
            if e.get("instance") == "doomed"
        ],
        what="the failure event",
    )
    assert "exited" in failures[0]["reason"] or "died" in failures[0]["reason"]
    logs = httpx.get(agent.url + "/instances/doomed/logs", headers=GOOD).text
    assert logs.strip()
    assert state() == "failed"  # still failed: nobody restarted it
