"""HTTP clients the CLI uses: the controller's control API and an agent's API.

Both carry the cluster secret and translate every httpx failure and error status into the
llumctl exception tree (one line, the server's own message when it sent one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from llumctl.errors import (
    AuthError,
    ConnectionFailed,
    InputError,
    LlumctlError,
    MigrationError,
    NotFoundError,
)
from llumctl.protocol import bearer


class _Api:
    """Base: JSON over HTTP with a bearer secret; errors become LlumctlErrors."""

    what = "server"

    def __init__(self, url: str, secret: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=bearer(secret), timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, json=body, **kw)
        except httpx.TimeoutException:
            raise ConnectionFailed(f"{self.what} at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ConnectionFailed(
                f"cannot reach {self.what} at {self.url}: {_short(exc)}"
            ) from None
        if resp.status_code >= 400:
            raise _status_error(self.what, resp)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.text


class ControllerClient(_Api):
    """The control API (docs/architecture.md, "Controller API")."""

    what = "controller"

    def status(self) -> dict[str, Any]:
        return _object(self.request("GET", "/api/status"))

    def events(self, since: int = 0) -> Any:
        return self.request("GET", "/api/events", params={"since": since})

    def migrate_request(self, request_id: str, to: str | None) -> Any:
        return self.request("POST", "/api/migrate", {"request_id": request_id, "to": to})

    def migrate_some(self, src: str, to: str | None, count: int) -> Any:
        return self.request("POST", "/api/migrate", {"from": src, "to": to, "count": count})

    def drain(self, instance: str) -> Any:
        return self.request("POST", "/api/drain", {"instance": instance})

    def scale(self, instances: int, model: str | None = None) -> Any:
        body: dict[str, Any] = {"instances": instances}
        if model:
            body["model"] = model
        return self.request("POST", "/api/scale", body)

    def policy(self) -> Any:
        return self.request("GET", "/api/policy")

    def set_policy(self, name: str | None = None, params: dict[str, Any] | None = None) -> Any:
        body: dict[str, Any] = {}
        if name:
            body["name"] = name
        if params:
            body["params"] = params
        return self.request("PUT", "/api/policy", body)

    def metrics(self) -> str:
        return str(self.request("GET", "/metrics"))


class AgentClient(_Api):
    """One host's agent (docs/architecture.md, "Agent API")."""

    what = "agent"

    def health(self) -> dict[str, Any]:
        return _object(self.request("GET", "/health"))

    def start_instance(self, body: dict[str, Any]) -> dict[str, Any]:
        return _object(self.request("POST", "/instances", body))

    def stop_instance(self, instance_id: str) -> Any:
        return self.request("DELETE", f"/instances/{instance_id}")

    def logs(self, instance_id: str, tail: int = 200) -> str:
        return str(self.request("GET", f"/instances/{instance_id}/logs", params={"tail": tail}))

    def shutdown(self) -> Any:
        return self.request("POST", "/shutdown")


def _object(data: Any) -> dict[str, Any]:
    """A JSON object answer, or LlumctlError (a proxy or wrong port answered something else)."""
    if not isinstance(data, dict):
        raise LlumctlError(f"unexpected answer (not a JSON object): {str(data)[:80]!r}")
    return data


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _status_error(what: str, resp: httpx.Response) -> LlumctlError:
    message = _server_message(resp)
    code = resp.status_code
    if code == 401:
        return AuthError(f"{what} refused the cluster secret ({message})")
    if code == 404:
        return NotFoundError(message)
    if code == 409:
        return MigrationError(message, reason=_reason(resp))
    if code < 500:
        return InputError(message)
    return LlumctlError(f"{what} error {code}: {message}")


def _server_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return (
            resp.text.strip().splitlines()[0] if resp.text.strip() else f"HTTP {resp.status_code}"
        )
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    return str(data)


def _reason(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return "failed"
    if isinstance(data, dict):
        for source in (data, data.get("error") if isinstance(data.get("error"), dict) else {}):
            if isinstance(source, dict) and source.get("reason"):
                return str(source["reason"])
    return "failed"


def controller_from_state(cluster: str | Path | None = None) -> ControllerClient:
    """A client for the cluster named by a state file (`--cluster`, or the default one)."""
    from llumctl.provision.state import load_state

    state = load_state(cluster)
    assert state is not None  # load_state raises when required and missing
    return ControllerClient(state.controller_url, state.secret)
