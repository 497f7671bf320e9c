"""The load generator's WebSocket client against a real ``websockets`` server.

The benchmark's figures are only as good as this client's framing: every
length encoding must round-trip, pings must be answered (or the gateway's
keepalive drops the socket), and a close must end it.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets

from loadtests.wsload import WsClient

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_frames_of_every_length_encoding_round_trip_through_an_echo_server():
    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", 0, compression=None, max_size=2**20) as server:
        port = server.sockets[0].getsockname()[1]
        got: asyncio.Queue[bytes] = asyncio.Queue()
        client = await WsClient.connect(f"ws://127.0.0.1:{port}/", None, got.put_nowait)
        # 7-bit, 16-bit and 64-bit payload lengths; each byte value, so a wrong mask shows.
        sent = [bytes(range(100)), bytes(range(256)) * 4, bytes(range(256)) * 300, b""]
        for payload in sent:
            assert client.send(payload)
        for payload in sent:
            assert await asyncio.wait_for(got.get(), 10) == payload
        client.close()
        await asyncio.wait_for(client.closed, 10)
        assert not client.send(b"after close")


async def test_pings_are_answered_and_a_server_close_ends_the_socket():
    async def ping_then_close(ws) -> None:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)  # raises if the client never answers
        await ws.send(b"answered")
        await ws.close(1000, "done")

    async with websockets.serve(ping_then_close, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        got: asyncio.Queue[bytes] = asyncio.Queue()
        client = await WsClient.connect(f"ws://127.0.0.1:{port}/", None, got.put_nowait)
        assert await asyncio.wait_for(got.get(), 10) == b"answered"
        await asyncio.wait_for(client.closed, 10)
        assert not client.send(b"after the server closed")
