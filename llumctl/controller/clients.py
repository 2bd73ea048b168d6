"""HTTP seams to instances and agents (the only places the controller talks out).

Foreign httpx errors are translated here into `llumctl.errors`; callers never see httpx.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from llumctl.errors import (
    AuthError,
    ConnectionFailed,
    EngineError,
    InputError,
    InstanceDraining,
    LlumctlError,
    MigrationError,
    NotFoundError,
)
from llumctl.protocol import (
    GenerateRequest,
    InstanceInfo,
    StreamEvent,
    bearer,
    from_json_dict,
    to_json_dict,
)

_STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)
_CALL_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Every running request holds one connection to its instance. httpx keeps only 20 idle
# ones by default: past 20 streams at once, each finished one closed its connection and the
# next request paid a new one (seen in a profile of a loaded controller).
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=512)


def error_message(resp: httpx.Response) -> str:
    """The one-line message of an error response, whatever shape its body has."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or f"HTTP {resp.status_code}"
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            return str(err.get("message") or err.get("reason") or err)
        return str(err)
    return str(body)


def raise_for(resp: httpx.Response, what: str) -> None:
    """Map an instance/agent error status to our exception tree."""
    if resp.status_code < 400:
        return
    message = f"{what}: {error_message(resp)}"
    if resp.status_code == 401:
        raise AuthError(f"{what}: cluster secret refused")
    if resp.status_code == 404:
        raise NotFoundError(message)
    if resp.status_code == 409:
        raise MigrationError(message, reason=_reason(resp) or "refused")
    if resp.status_code < 500:
        raise InputError(message)
    if _reason(resp) == InstanceDraining.reason:
        raise InstanceDraining(message)
    raise EngineError(message)


def _reason(resp: httpx.Response) -> str | None:
    """The named reason of an error body (`{"reason"}` or `{"error": {"reason"}}`)."""
    try:
        body = resp.json()
        reason = body.get("reason") or body.get("error", {}).get("reason")
    except (ValueError, AttributeError):
        return None
    return str(reason) if reason else None


class InstanceClient:
    """Calls the instance API (docs/architecture.md) of any instance by its base URL."""

    def __init__(self, secret: str) -> None:
        self._http = httpx.AsyncClient(
            headers=bearer(secret), timeout=_CALL_TIMEOUT, limits=_LIMITS
        )

    async def close(self) -> None:
        await self._http.aclose()

    @asynccontextmanager
    async def generate(self, url: str, req: GenerateRequest) -> AsyncIterator[httpx.Response]:
        """Open a request's token stream; a 4xx raises before any token is read."""
        async with self._stream("POST", f"{url}/generate", json=to_json_dict(req)) as resp:
            yield resp

    @asynccontextmanager
    async def attach(self, url: str, rid: str, from_index: int) -> AsyncIterator[httpx.Response]:
        path = f"{url}/requests/{rid}/stream"
        async with self._stream("GET", path, params={"from": from_index}) as resp:
            yield resp

    @asynccontextmanager
    async def _stream(self, method: str, url: str, **kw: Any) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http.stream(method, url, timeout=_STREAM_TIMEOUT, **kw) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise_for(resp, "instance")
                yield resp
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"instance {url}: {exc.__class__.__name__}: {exc}") from None

    async def batches(self, resp: httpx.Response) -> AsyncIterator[list[StreamEvent]]:
        """The stream's events, a list per network read: what arrived together is relayed
        together (a relay that falls behind catches up in fewer, larger writes)."""
        rest = ""
        try:
            async for text in resp.aiter_text():
                *lines, rest = (rest + text).split("\n")
                batch = [from_json_dict(StreamEvent, json.loads(x)) for x in lines if x.strip()]
                if batch:
                    yield batch
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"instance stream broke: {exc.__class__.__name__}") from None
        if rest.strip():
            yield [from_json_dict(StreamEvent, json.loads(rest))]

    async def call(self, method: str, url: str, body: Any = None) -> Any:
        try:
            resp = await self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"{url}: {exc.__class__.__name__}: {exc}") from None
        raise_for(resp, url)
        return resp.json() if resp.content else None

    async def abort(self, url: str, rid: str) -> None:
        try:
            await self.call("POST", f"{url}/requests/{rid}/abort")
        except LlumctlError:
            pass  # already finished or gone: nothing left to stop

    async def migrate(self, src_url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        result = await self.call("POST", f"{src_url}/migrate", body)
        return list((result or {}).get("results", []))

    async def drain(self, url: str, is_draining: bool = True) -> None:
        await self.call("POST", f"{url}/drain", {"draining": is_draining})

    async def requests(self, url: str) -> list[dict[str, Any]]:
        return list(await self.call("GET", f"{url}/requests") or [])


class AgentClient:
    """Calls the agent API: start and stop instances."""

    def __init__(self, secret: str) -> None:
        self._http = httpx.AsyncClient(
            headers=bearer(secret), timeout=_CALL_TIMEOUT, limits=_LIMITS
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def start_instance(self, agent_url: str, body: dict[str, Any]) -> InstanceInfo:
        resp = await self._request("POST", f"{agent_url}/instances", body)
        return from_json_dict(InstanceInfo, resp.json())

    async def stop_instance(self, agent_url: str, instance_id: str) -> None:
        await self._request("DELETE", f"{agent_url}/instances/{instance_id}")

    async def _request(self, method: str, url: str, body: Any = None) -> httpx.Response:
        try:
            resp = await self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"agent {url}: {exc.__class__.__name__}") from None
        raise_for(resp, "agent")
        return resp
