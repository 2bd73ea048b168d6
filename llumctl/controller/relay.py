"""One client request's token stream, spliced across migrations.

The controller opens `POST /generate` on the chosen instance and reads its NDJSON events.
A stream that ends with `migrated(to, at)` is continued by attaching to the destination at
the next token index the client has not seen (design.md §5), so the client gets one
stream with no duplicate and no missing token. Tokens are checked by index: a replayed
token is skipped, a gap is an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

from llumctl.controller.clients import InstanceClient, OpenStream
from llumctl.controller.state import RequestRecord
from llumctl.errors import ConnectionFailed, EngineError, InputError, LlumctlError
from llumctl.protocol import EventType, GenerateRequest, StreamEvent

# Called when the request moves: (record, from_instance, to_instance, at_index).
OnMove = Callable[[RequestRecord, str, str, int], None]


class RequestStream:
    def __init__(
        self,
        client: InstanceClient,
        record: RequestRecord,
        generate: GenerateRequest,
        url: str,
        on_move: OnMove | None = None,
    ) -> None:
        self._client = client
        self._record = record
        self._generate = generate
        self._url = url
        self._on_move = on_move
        self._stack = AsyncExitStack()
        self._resp: OpenStream | None = None
        self.next_index = 0
        self.is_finished = False

    async def open(self) -> None:
        """Start the request on its instance; an instance 4xx raises here, before tokens."""
        self._resp = await self._stack.enter_async_context(
            self._client.generate(self._url, self._generate)
        )
        self._record.state = "running"

    async def close(self) -> None:
        """Release the HTTP stream; abort the request if the client left before the end."""
        await self._stack.aclose()
        if not self.is_finished and self._record.state == "running":
            self._record.state = "aborted"
            await self._client.abort(self._url, self._record.id)

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Token events in index order, then the `finished` event."""
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        """`events`, in the groups they arrived in from the instance."""
        while True:
            assert self._resp is not None, "open() first"
            handed_on: StreamEvent | None = None
            async for arrived in self._client.batches(self._resp):
                if self.is_finished:
                    # Read the stream to its end (the instance ends it right after the
                    # finished event): only a fully read response returns its connection
                    # to the pool, and a new connection per request costs ~2 ms.
                    continue
                batch, end = self._accept(arrived)
                if batch:
                    yield batch
                if end is not None and end.type == EventType.MIGRATED:
                    handed_on = end
                    break
                if end is not None:
                    raise _stream_error(end)
            if self.is_finished:
                return
            if handed_on is None:
                raise ConnectionFailed(f"instance {self._record.instance} stream ended early")
            await self._switch(handed_on)

    def _accept(self, arrived: list[StreamEvent]) -> tuple[list[StreamEvent], StreamEvent | None]:
        """The events of `arrived` to relay, checked by index, and the event that ends
        this instance's stream without finishing the request (`migrated` or `error`):
        the tokens before it are relayed first."""
        batch: list[StreamEvent] = []
        end: StreamEvent | None = None
        first_index = self.next_index
        for event in arrived:
            if event.type == EventType.TOKEN:
                if event.index < self.next_index:
                    continue  # replayed after a re-attach
                if event.index > self.next_index:
                    raise EngineError(f"token {self.next_index} missing from the stream")
                self.next_index += 1
                batch.append(event)
            elif event.type == EventType.FINISHED:
                self.is_finished = True
                batch.append(event)
                break
            else:
                end = event
                break
        if self.next_index > first_index:
            self._note_token()
        return batch, end

    async def _switch(self, event: StreamEvent) -> None:
        if not event.to_url or not event.to_instance:
            raise EngineError("migrated event without a destination")
        await self._stack.aclose()
        self._stack = AsyncExitStack()
        src = self._record.instance
        self._url = event.to_url
        self._record.instance = event.to_instance
        if self._on_move is not None:
            self._on_move(self._record, src, event.to_instance, self.next_index)
        # Attach at the first token the client has not seen (== event.at normally).
        self._resp = await self._stack.enter_async_context(
            self._client.attach(self._url, self._record.id, self.next_index)
        )

    def _note_token(self) -> None:
        now = time.monotonic()
        if self._record.first_token_time is None:
            self._record.first_token_time = now
        self._record.last_token_time = now
        self._record.num_tokens = self.next_index


def _stream_error(event: StreamEvent) -> LlumctlError:
    message = event.message or "instance reported an error"
    if 400 <= event.status < 500:
        return InputError(message)
    return EngineError(message)
