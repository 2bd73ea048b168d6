"""Per-request token buffers: every output token keeps its index, readers attach anywhere.

An instance keeps one `RequestStream` per request it serves. The request's runner appends
tokens as the engine yields them; any number of readers iterate `events(from_index)` and
get the tokens from that index on (replayed, then live) and finally the end event
(`finished`, `migrated` or `error`). A migrated-in request's stream starts at the index where
the source stopped (`first_index`), so the controller splices the two streams without a gap
or a duplicate.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from llumctl.errors import InputError, NotFoundError
from llumctl.protocol import EventType, StreamEvent

# Finished streams kept for late readers (attach after the end still replays them).
MAX_NUM_FINISHED_STREAMS = 1000


class RequestStream:
    """Token events of one request on this instance, from `first_index` on."""

    def __init__(self, request_id: str, *, first_index: int = 0, num_prompt_tokens: int = 0):
        self.request_id = request_id
        self.first_index = first_index
        self.num_prompt_tokens = num_prompt_tokens
        self._tokens: list[tuple[int, str]] = []
        self.end: StreamEvent | None = None
        self._changed = asyncio.Event()

    @property
    def next_index(self) -> int:
        """Index the next appended token gets (= output tokens produced so far)."""
        return self.first_index + len(self._tokens)

    @property
    def is_ended(self) -> bool:
        return self.end is not None

    def token_ids(self) -> list[int]:
        return [t for t, _ in self._tokens]

    def append(self, token_id: int, text: str) -> None:
        assert self.end is None, f"append after end on {self.request_id}"
        self._tokens.append((token_id, text))
        self._wake()

    def finish(self, reason: str) -> None:
        self._end(
            StreamEvent(
                EventType.FINISHED,
                finish_reason=reason,
                num_prompt_tokens=self.num_prompt_tokens,
                num_output_tokens=self.next_index,
            )
        )

    def migrated(self, to_instance: str, to_url: str) -> None:
        self._end(
            StreamEvent(
                EventType.MIGRATED, to_instance=to_instance, to_url=to_url, at=self.next_index
            )
        )

    def fail(self, message: str, status: int = 500) -> None:
        self._end(StreamEvent(EventType.ERROR, message=message, status=status))

    def _end(self, event: StreamEvent) -> None:
        if self.end is None:
            self.end = event
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def events(self, from_index: int = 0) -> AsyncIterator[StreamEvent]:
        """Token events with index >= from_index, then the end event."""
        async for batch in self.batches(from_index):
            for event in batch:
                yield event

    async def batches(self, from_index: int = 0) -> AsyncIterator[list[StreamEvent]]:
        """`events`, grouped: every event already there comes in one list, so a reader
        that fell behind catches up with one write instead of one per token."""
        if from_index < self.first_index:
            raise InputError(
                f"request {self.request_id}: tokens before index {self.first_index} "
                "are not on this instance"
            )
        index = from_index
        while True:
            batch = [
                StreamEvent(EventType.TOKEN, index=i, token_id=token_id, text=text)
                for i, (token_id, text) in enumerate(
                    self._tokens[index - self.first_index :], start=index
                )
            ]
            index += len(batch)
            if self.end is not None:
                yield [*batch, self.end]
                return
            if batch:
                yield batch
                continue  # tokens may have come while the reader had the batch
            await self._changed.wait()


class StreamRegistry:
    """All streams of an instance by request id; finished ones are kept for a while.

    `on_forget(request_id)` is called when a finished stream is dropped, so what the
    instance keeps beside it (the request's record) goes with it.
    """

    def __init__(
        self,
        on_forget: Callable[[str], object] | None = None,
        max_num_finished: int = MAX_NUM_FINISHED_STREAMS,
    ) -> None:
        self._streams: OrderedDict[str, RequestStream] = OrderedDict()
        self._on_forget = on_forget
        self.max_num_finished = max_num_finished

    def create(self, stream: RequestStream) -> RequestStream:
        old = self._streams.get(stream.request_id)
        if old is not None and not old.is_ended:
            raise InputError(f"request {stream.request_id} is already running here")
        self._streams[stream.request_id] = stream
        self._streams.move_to_end(stream.request_id)
        self._trim()
        return stream

    def get(self, request_id: str) -> RequestStream:
        stream = self._streams.get(request_id)
        if stream is None:
            raise NotFoundError(f"unknown request {request_id!r}")
        return stream

    def find(self, request_id: str) -> RequestStream | None:
        return self._streams.get(request_id)

    def all(self) -> list[RequestStream]:
        return list(self._streams.values())

    def _trim(self) -> None:
        ended = [rid for rid, s in self._streams.items() if s.is_ended]
        for rid in ended[: max(0, len(ended) - self.max_num_finished)]:
            del self._streams[rid]
            if self._on_forget is not None:
                self._on_forget(rid)
