"""The shard link over real TCP sockets: calls, refusals, failures, drops and reconnects.

The shard's Ray handle is replaced by an object with the same ``link_address.remote()``
(the link learns its address from it and nothing else); the Ray side, a shard killed
and restarted by Ray mid-stream, is tested in ``test_spine.py``.
"""

from __future__ import annotations

import asyncio
import threading

import msgpack
import pytest

from actors.link import MAX_FRAME, REQUEST, LinkDown, LinkServer, ShardFailed, ShardLink


class _Address:
    def __init__(self, shard: FakeShard) -> None:
        self.shard = shard

    async def remote(self) -> tuple[str, int, str]:
        self.shard.asked += 1
        return self.shard.address


class FakeShard:
    """Stands in for the actor handle: hands out the current server's address."""

    def __init__(self, server: LinkServer) -> None:
        self.address = server.address()
        self.asked = 0
        self.link_address = _Address(self)


def echo(batch: bytes, gateway: str, sent_at: float) -> bytes:
    if batch == b"boom":
        raise ValueError("a bug")
    return msgpack.packb([batch, gateway, sent_at, threading.current_thread().name])


async def test_calls_carry_the_batch_the_gateway_and_the_send_time():
    server = LinkServer(echo)
    link = ShardLink(FakeShard(server), "gw-1")
    try:
        replies = [msgpack.unpackb(await link.call(b"batch-%d" % i, 100.0 + i)) for i in range(3)]
        big = b"x" * 300_000  # more than one read on either side
        assert msgpack.unpackb(await link.call(big, 1.0))[0] == big
    finally:
        link.close()
        server.close()
    assert replies == [
        [b"batch-%d" % i, "gw-1", 100.0 + i, "shard-link"] for i in range(3)
    ]  # handled on the link's own thread


async def test_a_wrong_token_is_refused():
    server = LinkServer(echo)
    shard = FakeShard(server)
    host, port, _ = shard.address
    shard.address = (host, port, "not-the-token")
    link = ShardLink(shard, "gw-1")
    try:
        with pytest.raises(LinkDown):
            await link.call(b"batch", 1.0)
    finally:
        link.close()
        server.close()


async def test_a_failing_batch_is_reported_and_the_link_stays_up():
    server = LinkServer(echo)
    shard = FakeShard(server)
    link = ShardLink(shard, "gw-1")
    try:
        with pytest.raises(ShardFailed, match="ValueError: a bug"):
            await link.call(b"boom", 1.0)
        assert msgpack.unpackb(await link.call(b"next", 2.0))[0] == b"next"
    finally:
        link.close()
        server.close()
    assert shard.asked == 1  # one connection served both calls


async def test_a_dropped_link_fails_the_call_and_the_next_call_finds_the_new_shard():
    first = LinkServer(echo)
    second: LinkServer | None = None
    shard = FakeShard(first)
    link = ShardLink(shard, "gw-1")
    try:
        assert msgpack.unpackb(await link.call(b"a", 1.0))[0] == b"a"
        first.close()  # the shard dies
        with pytest.raises(LinkDown):
            await link.call(b"b", 2.0)
        second = LinkServer(echo)  # Ray restarted it, elsewhere
        shard.address = second.address()
        assert msgpack.unpackb(await link.call(b"b", 2.0))[0] == b"b"
        assert shard.asked >= 2
    finally:
        link.close()
        first.close()
        if second is not None:
            second.close()


async def test_an_oversized_frame_closes_the_connection():
    server = LinkServer(echo)
    host, port, token = server.address()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        hello = msgpack.packb([token, "gw-1"])
        writer.write(REQUEST.pack(len(hello), 0, 0.0) + hello)
        writer.write(REQUEST.pack(MAX_FRAME + 1, 1, 0.0))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing answered
    finally:
        writer.close()
        server.close()
