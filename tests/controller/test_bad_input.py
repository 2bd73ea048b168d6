"""Bad input never yields a 5xx: every mistake gets a 4xx in OpenAI's error shape, and the
control API refuses a missing or wrong secret with 401 without doing anything."""

from __future__ import annotations

import httpx
import pytest

from llumctl.controller.config import config_from_dict
from llumctl.controller.launch import free_port, spawn_controller
from tests.controller.cluster_helpers import wait_for

SECRET = "test-secret"  # the controller_factory default


MODELS = [{"name": "m", "engine": "sim"}]


@pytest.fixture
def controller(controller_factory):
    return controller_factory(models=MODELS, dispatch_timeout_s=1.0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One controller for the tests that change nothing."""
    settings = {"models": MODELS, "dispatch_timeout_s": 1.0, "secret": SECRET, "port": free_port()}
    proc = spawn_controller(config_from_dict(settings), tmp_path_factory.mktemp("shared"))
    yield proc
    proc.stop()


def _post(url: str, path: str, **kw) -> httpx.Response:
    return httpx.post(url + path, timeout=10, **kw)


def _assert_openai_error(resp: httpx.Response, status: int, needle: str) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert needle in error["message"]
    assert "\n" not in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b"[1, 2]", 400, "JSON object"),
        ("/v1/completions", b'{"prompt": "hi"}', 400, "'model' is required"),
        ("/v1/completions", b'{"model": "nope", "prompt": "hi"}', 404, "does not exist"),
        ("/v1/completions", b'{"model": "m", "prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
        ("/v1/completions", b'{"model": "m", "prompt": "hi", "max_tokens": -5}', 400, "max_tokens"),
        (
            "/v1/completions",
            b'{"model": "m", "prompt": "hi", "max_tokens": "x"}',
            400,
            "max_tokens",
        ),
        ("/v1/completions", b'{"model": "m", "prompt": "hi", "frobnicate": 1}', 400, "frobnicate"),
        ("/v1/completions", b'{"model": "m", "prompt": "hi", "logprobs": 3}', 400, "logprobs"),
        ("/v1/completions", b'{"model": "m", "prompt": "hi", "n": 2}', 400, "n=1"),
        (
            "/v1/completions",
            b'{"model": "m", "prompt": "hi", "temperature": 9}',
            400,
            "temperature",
        ),
        ("/v1/completions", b'{"model": "m", "prompt": ""}', 400, "prompt"),
        (
            "/v1/completions",
            b'{"model": "m", "prompt": "hi", "priority": "urgent"}',
            400,
            "priority",
        ),
        ("/v1/chat/completions", b'{"model": "m", "messages": []}', 400, "messages"),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "x"}]}', 400, "role"),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "tools": []}',
            400,
            "tools",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0}',
            400,
            "max_completion_tokens",
        ),
    ],
)
def test_bad_openai_requests_get_4xx(shared, path, body, status, needle):
    resp = _post(shared.url, path, content=body, headers={"Content-Type": "application/json"})
    _assert_openai_error(resp, status, needle)


def test_unknown_route_is_404_in_openai_shape(shared):
    _assert_openai_error(httpx.get(shared.url + "/v1/nothing"), 404, "Not Found")


def test_a_generating_endpoint_asked_with_the_wrong_method_is_405(shared):
    # The generating endpoints are served ahead of FastAPI, which would answer this itself.
    for path in ("/v1/completions", "/v1/chat/completions"):
        resp = httpx.get(shared.url + path)
        _assert_openai_error(resp, 405, "Method Not Allowed")
        assert resp.headers["allow"] == "POST"


def test_a_trailing_slash_names_the_same_generating_endpoint(shared):
    # Served by the same handler (before, it fell through to the app: a 404).
    for path in ("/v1/completions/", "/v1/chat/completions/"):
        resp = _post(shared.url, path, content=b"{}")
        _assert_openai_error(resp, 400, "'model' is required")
        _assert_openai_error(httpx.get(shared.url + path), 405, "Method Not Allowed")


def test_the_policy_loop_runs_behind_the_front(shared):
    # The loop lives in the app's lifespan, which the front must pass through: a front
    # that failed on the lifespan scope left a controller that served and never acted.
    def ticks() -> int:
        return int(httpx.get(shared.url + "/health").json()["policy_ticks"])

    first = ticks()
    wait_for(lambda: ticks() > first, what="a policy tick")


def test_openai_endpoints_refuse_a_missing_or_wrong_api_key(controller_factory):
    proc = controller_factory(models=MODELS, dispatch_timeout_s=1.0, api_keys=["k-1", "k-2"])
    body = {"model": "m", "prompt": "hi", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for path in ("/v1/completions", "/v1/chat/completions"):
            resp = _post(proc.url, path, json=body, headers=headers)
            _assert_openai_error(resp, 401, "API key")
            assert resp.headers["www-authenticate"] == "Bearer"
        _assert_openai_error(httpx.get(proc.url + "/v1/models", headers=headers), 401, "API key")
    # Either key passes: the request then fails on the cluster having no instance (503).
    good = {"Authorization": "Bearer k-2"}
    assert _post(proc.url, "/v1/completions", json=body, headers=good).status_code == 503
    assert httpx.get(proc.url + "/v1/models", headers=good).status_code == 200


def test_models_lists_configured_models(shared):
    data = httpx.get(shared.url + "/v1/models").json()
    assert [m["id"] for m in data["data"]] == ["m"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_control_api_without_secret_is_401_and_does_nothing(controller, headers):
    resp = httpx.put(
        controller.url + "/api/policy",
        json={"name": "infaas++", "params": {"migrate_out_threshold": -99}},
        headers=headers,
    )
    _assert_openai_error(resp, 401, "secret")
    for path in ("/api/status", "/api/instances", "/api/requests", "/api/events"):
        assert httpx.get(controller.url + path, headers=headers).status_code == 401
    for path in ("/api/migrate", "/api/drain", "/api/scale"):
        assert _post(controller.url, path, json={}, headers=headers).status_code == 401
    good = {"Authorization": f"Bearer {SECRET}"}
    policy = httpx.get(controller.url + "/api/policy", headers=good).json()
    assert policy["name"] == "llumnix"
    assert policy["params"]["migrate_out_threshold"] == -3.0
    events = httpx.get(controller.url + "/api/events", headers=good).json()["events"]
    assert not [e for e in events if e.get("action") == "set"]


def test_control_api_bad_bodies_are_4xx(shared):
    good = {"Authorization": f"Bearer {SECRET}"}
    cases = [
        ("/api/migrate", {"request_id": "nope", "to": "x"}, 404),
        ("/api/migrate", {"from": "nope", "to": "x", "count": 0}, 400),
        ("/api/migrate", {"from": "nope", "to": "x"}, 404),
        ("/api/drain", {"instance": "nope"}, 404),
        ("/api/drain", {}, 400),
        ("/api/scale", {"instances": -1}, 400),
        ("/api/scale", {"instances": 2, "model": "unknown"}, 404),
    ]
    for path, body, status in cases:
        resp = _post(shared.url, path, json=body, headers=good)
        assert resp.status_code == status, (path, body, resp.text)
    for body in (
        {"name": "fastest"},
        {"params": {"bogus": 1}},
        {"params": {"max_pairs_per_tick": "x"}},
    ):
        resp = httpx.put(shared.url + "/api/policy", json=body, headers=good)
        assert resp.status_code == 400, (body, resp.text)


def test_policy_can_be_changed_at_runtime(controller):
    good = {"Authorization": f"Bearer {SECRET}"}
    body = {"name": "infaas++", "params": {"migrate_out_threshold": -7, "policy_period_s": 0.5}}
    resp = httpx.put(controller.url + "/api/policy", json=body, headers=good)
    assert resp.status_code == 200, resp.text
    got = httpx.get(controller.url + "/api/policy", headers=good).json()
    assert got["name"] == "infaas++"
    assert got["params"]["migrate_out_threshold"] == -7.0
    assert got["params"]["policy_period_s"] == 0.5


def test_no_instance_for_a_known_model_is_503_not_a_hang(shared):
    resp = _post(shared.url, "/v1/completions", json={"model": "m", "prompt": "hi"})
    assert resp.status_code == 503
    assert resp.json()["error"]["type"] == "server_error"


def test_a_caller_leaving_before_its_body_is_read_is_logged_in_one_line(controller):
    """A load report that gives up mid-body (its llumlet timed out on a stalled controller)
    is noted once, without a traceback, and the controller keeps serving."""
    import socket
    import time

    host, port = controller.url.removeprefix("http://").split(":")
    head = (
        f"POST /internal/load HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {SECRET}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + b'{"info": {')  # 10 of the 1,000 bytes promised
        time.sleep(0.5)  # the handler is now waiting for the rest of the body
    deadline = time.monotonic() + 10
    while "client left before /internal/load" not in controller.log_path.read_text():
        assert time.monotonic() < deadline, controller.log_path.read_text()[-2000:]
        time.sleep(0.1)
    log = controller.log_path.read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-2000:]
    assert httpx.get(controller.url + "/v1/models", timeout=10).status_code == 200
