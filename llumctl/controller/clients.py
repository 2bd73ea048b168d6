"""HTTP seams to instances and agents (the only places the controller talks out).

The controller talks out with aiohttp, where the CLI and the agents use httpx: every client
request costs the controller one streamed call to an instance, and on this project's 2-core
machine an httpx stream of a one-token request cost 2.3-2.5 ms of CPU against aiohttp's
0.9 ms (same instance, same request). Foreign errors are translated here into
`llumctl.errors`; callers never see aiohttp.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

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

# A token stream may wait on a queued request for as long as it takes; a call may not.
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
_CALL_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=30.0)
_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)

# An open token stream (read it with `InstanceClient.batches`).
OpenStream = aiohttp.ClientResponse


def error_message(status: int, body: bytes) -> str:
    """The one-line message of an error response, whatever shape its body has."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:300] or f"HTTP {status}"
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed.get("detail", parsed))
        if isinstance(err, dict):
            return str(err.get("message") or err.get("reason") or err)
        return str(err)
    return str(parsed)


def raise_for(status: int, body: bytes, what: str) -> None:
    """Map an instance/agent error status to our exception tree."""
    if status < 400:
        return
    message = f"{what}: {error_message(status, body)}"
    if status == 401:
        raise AuthError(f"{what}: cluster secret refused")
    if status == 404:
        raise NotFoundError(message)
    if status == 409:
        raise MigrationError(message, reason=_reason(body) or "refused")
    if status < 500:
        raise InputError(message)
    if _reason(body) == InstanceDraining.reason:
        raise InstanceDraining(message)
    raise EngineError(message)


def _reason(body: bytes) -> str | None:
    """The named reason of an error body (`{"reason"}` or `{"error": {"reason"}}`)."""
    try:
        parsed = json.loads(body)
        reason = parsed.get("reason") or parsed.get("error", {}).get("reason")
    except (ValueError, AttributeError):
        return None
    return str(reason) if reason else None


def _failure(what: str, exc: BaseException) -> ConnectionFailed:
    detail = str(exc) or ("timed out" if isinstance(exc, asyncio.TimeoutError) else "")
    return ConnectionFailed(f"{what}: {exc.__class__.__name__}: {detail}".rstrip(": "))


class _Session:
    """One keep-alive session, opened in the event loop that first uses it (a controller
    may be built in one thread and served from another's loop)."""

    def __init__(self, secret: str) -> None:
        self._headers = bearer(secret)
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No cap on connections: every running request holds one to its instance.
            connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(headers=self._headers, connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, url: str, body: Any, what: str) -> Any:
        """One request and its JSON answer; an error status raises."""
        try:
            async with self.get().request(method, url, json=body, timeout=_CALL_TIMEOUT) as r:
                data = await r.read()
        except _ERRORS as exc:
            raise _failure(f"{what} {url}", exc) from None
        raise_for(r.status, data, f"{what} {url}")
        return json.loads(data) if data else None


class InstanceClient:
    """Calls the instance API (docs/architecture.md) of any instance by its base URL."""

    def __init__(self, secret: str) -> None:
        self._session = _Session(secret)

    async def close(self) -> None:
        await self._session.close()

    @asynccontextmanager
    async def generate(self, url: str, req: GenerateRequest) -> AsyncIterator[OpenStream]:
        """Open a request's token stream; a 4xx raises before any token is read."""
        async with self._stream("POST", f"{url}/generate", json=to_json_dict(req)) as resp:
            yield resp

    @asynccontextmanager
    async def attach(self, url: str, rid: str, from_index: int) -> AsyncIterator[OpenStream]:
        path = f"{url}/requests/{rid}/stream"
        async with self._stream("GET", path, params={"from": from_index}) as resp:
            yield resp

    @asynccontextmanager
    async def _stream(self, method: str, url: str, **kw: Any) -> AsyncIterator[OpenStream]:
        session = self._session.get()
        try:
            resp = await session.request(method, url, timeout=_STREAM_TIMEOUT, **kw)
        except _ERRORS as exc:
            raise _failure(f"instance {url}", exc) from None
        try:
            if resp.status >= 400:
                try:
                    data = await resp.read()
                except _ERRORS as exc:
                    raise _failure(f"instance {url}", exc) from None
                raise_for(resp.status, data, "instance")
            yield resp
        finally:
            # Only a response read to its end goes back to the pool; one left unread
            # closes its connection.
            resp.release()

    async def batches(self, resp: OpenStream) -> AsyncIterator[list[StreamEvent]]:
        """The stream's events, a list per network read: what arrived together is relayed
        together (a relay that falls behind catches up in fewer, larger writes)."""
        rest = b""
        try:
            async for data in resp.content.iter_any():
                *lines, rest = (rest + data).split(b"\n")
                batch = [from_json_dict(StreamEvent, json.loads(x)) for x in lines if x.strip()]
                if batch:
                    yield batch
        except _ERRORS as exc:
            raise ConnectionFailed(f"instance stream broke: {exc.__class__.__name__}") from None
        if rest.strip():
            yield [from_json_dict(StreamEvent, json.loads(rest))]

    async def call(self, method: str, url: str, body: Any = None) -> Any:
        return await self._session.call(method, url, body, "instance")

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
        self._session = _Session(secret)

    async def close(self) -> None:
        await self._session.close()

    async def start_instance(self, agent_url: str, body: dict[str, Any]) -> InstanceInfo:
        answer = await self._session.call("POST", f"{agent_url}/instances", body, "agent")
        return from_json_dict(InstanceInfo, answer)

    async def stop_instance(self, agent_url: str, instance_id: str) -> None:
        await self._session.call("DELETE", f"{agent_url}/instances/{instance_id}", None, "agent")
