"""The TCP KV transport on loopback: chunks delivered and acknowledged, secret enforced."""

from __future__ import annotations

import pytest

from agent.engines.base import KvChunk
from agent.transfer import TcpTransport
from llumctl.errors import AuthError, MigrationError


async def test_chunks_arrive_in_order_and_are_acknowledged():
    received: list[tuple[str, KvChunk]] = []

    async def on_chunk(mid: str, chunk: KvChunk) -> None:
        received.append((mid, chunk))

    server = TcpTransport("s3cret")
    address = await server.serve(on_chunk)
    client = TcpTransport("s3cret")
    sender = await client.connect(address)
    chunks = [KvChunk(0, 3, bytes(range(256)) * 3), KvChunk(3, 1, b"x" * 100_000)]
    for chunk in chunks:
        await sender.send("m1", chunk)
    await sender.close()
    await server.close()
    assert received == [("m1", c) for c in chunks]
    assert client.stats.num_bytes == sum(len(c.payload) for c in chunks)


async def test_wrong_secret_is_rejected():
    server = TcpTransport("right")
    address = await server.serve(lambda mid, chunk: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(AuthError):
        await TcpTransport("wrong").connect(address)
    await server.close()


async def test_receiver_refusal_reaches_the_sender():
    async def on_chunk(mid: str, chunk: KvChunk) -> None:
        raise MigrationError("no reservation", "no-room")

    server = TcpTransport("s")
    sender = await TcpTransport("s").connect(await server.serve(on_chunk))
    with pytest.raises(MigrationError) as err:
        await sender.send("m", KvChunk(0, 1, b"abc"))
    assert err.value.reason == "dst-failed"
    await sender.close()
    await server.close()
