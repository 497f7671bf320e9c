"""The gateway's socket layer: handshakes, fragments, timeouts and keepalive, over real sockets.

A second gateway with short timers runs next to the shared stack (same shards,
same Redis), so timeouts are awaited in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from urllib.parse import urlsplit

import msgpack
import pytest
import pytest_asyncio
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from serve.dev.pyclient import LifelineClient
from serve.edge import wire
from serve.edge.gateway import Gateway
from serve.edge.protocol import CLOSE_HELLO_TIMEOUT, Limits

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"


def hello(sid: str) -> bytes:
    return msgpack.packb(
        {"t": "hello", "v": 1, "sid": sid, "consent": ["necessary", "analytics"], "now": 0}
    )


def side_gateway(stack, **options) -> Gateway:
    """Another gateway over the shared stack's shards and Redis, with its own settings."""
    return stack.side_gateway(**options)


@pytest_asyncio.fixture(loop_scope="session")
async def quick_gateway(any_stack):
    """A gateway whose hello timeout is 0.3 s and keepalive interval 0.2 s."""
    gw = side_gateway(any_stack, limits=Limits(hello_timeout_s=0.3), ping_interval_s=0.2)
    port = await gw.start("127.0.0.1", 0)
    yield gw, f"ws://127.0.0.1:{port}/ws"
    await gw.stop()


async def raw_client(
    url: str, addr: tuple[str, int], rcvbuf: int = 0
) -> tuple[ClientProtocol, asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that reads and writes only when the test says so (site demo).

    ``rcvbuf``: a small receive buffer, so what the client does not read fills it fast.
    """
    proto = ClientProtocol(parse_uri(url + "?site=demo"), origin=ORIGIN)
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, addr)
    reader, writer = await asyncio.open_connection(sock=sock)
    proto.send_request(proto.connect())
    for data in proto.data_to_send():
        writer.write(data)
    while proto.state is not State.OPEN:
        proto.receive_data(await asyncio.wait_for(reader.read(4096), 10))
        proto.events_received()
    return proto, reader, writer


async def http_get(url: str, path: str, headers: str = "") -> bytes:
    """A raw HTTP/1.1 request; returns everything the server sent before closing."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{headers}\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    writer.close()
    return data


async def test_plain_http_and_wrong_paths_get_http_errors(any_stack):
    url = any_stack.ws_url
    not_upgrade = await http_get(url, "/ws?site=demo", f"Origin: {ORIGIN}\r\n")
    assert not_upgrade.startswith(b"HTTP/1.1 426") or not_upgrade.startswith(b"HTTP/1.1 400")
    wrong_path = await http_get(url, "/other?site=demo", f"Origin: {ORIGIN}\r\n")
    assert wrong_path.startswith(b"HTTP/1.1 404")
    garbage = await http_get(url, "\x00\x01 nonsense")
    assert not garbage.startswith(b"HTTP/1.1 101")


async def test_fragmented_and_text_messages_are_assembled(any_stack):
    sid = f"t-frag-{uuid.uuid4().hex[:12]}"
    url = any_stack.ws_url + "?site=demo"
    async with websockets.connect(url, origin=ORIGIN, compression=None) as ws:
        whole = hello(sid)
        # An iterable is sent as one message in several frames.
        await ws.send([whole[:5], whole[5:11], whole[11:]])
        welcome = msgpack.unpackb(await ws.recv())
        assert welcome["t"] == "welcome" and welcome["sid"] == sid
        await ws.send('{"t":"ping"}')  # a JSON text frame: answered in JSON
        assert '"pong"' in await ws.recv()


async def test_a_socket_without_hello_is_closed(quick_gateway):
    _, url = quick_gateway
    async with websockets.connect(url + "?site=demo", origin=ORIGIN) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == CLOSE_HELLO_TIMEOUT


async def test_hello_in_time_keeps_the_socket_and_pings_are_answered(quick_gateway):
    gw, url = quick_gateway
    sid = f"t-alive-{uuid.uuid4().hex[:12]}"
    client = LifelineClient(url, "demo", sid, ORIGIN)
    assert (await client.connect())["t"] == "welcome"

    async def page_view(seq: int) -> None:
        """An event the gateway takes (current time): acknowledged, then scored."""
        ev = {"type": "page_view", "seq": seq, "ts": int(time.time() * 1000), "path": f"/{seq}"}
        await client.send_events([ev])
        await client.wait_acked(seq)
        await gw.wait_scored(sid, seq)

    await page_view(1)
    # Silent for three keepalive intervals: the gateway pings the quiet socket, and would
    # drop it at the next sweep without a pong (test_a_socket_that_answers_no_ping_is_dropped).
    # Time passing is what is tested here: there is no event to await instead.
    peer = gw.peers_by_sid[sid]
    heard = peer.last_rx  # the last frame from the client
    await asyncio.sleep(3 * gw.ping_interval_s)
    # The client sent nothing since, yet the gateway heard from it: the pong to its ping.
    assert peer.last_rx > heard
    assert client.closed is None and gw.peers_by_sid.get(sid) is peer
    # And the session still works: a new event is stored and scored.
    await page_view(2)
    assert client.of_type("error") == []
    assert [e["seq"] for e in await gw.store.read_events("demo", sid)] == [1, 2]
    await client.close()


async def test_a_socket_that_answers_no_ping_is_dropped(quick_gateway):
    """A peer that vanished without closing (no pong) is cut after two quiet intervals."""
    gw, url = quick_gateway
    parts = urlsplit(url)
    proto, reader, writer = await raw_client(url, (parts.hostname, parts.port))
    sockets = gw.stats.connections
    assert sockets >= 1
    # Say hello, then read what comes but never answer: no pong goes back.
    proto.send_binary(hello(f"t-mute-{uuid.uuid4().hex[:12]}"))
    for data in proto.data_to_send():
        writer.write(data)
    pings = 0
    while True:
        data = await asyncio.wait_for(reader.read(4096), 10)
        if not data:
            break  # the gateway closed the connection
        proto.receive_data(data)
        pings += sum(1 for e in proto.events_received() if e.opcode is Opcode.PING)
        proto.data_to_send()  # the automatic pong is thrown away, never written
    assert pings >= 1
    writer.close()
    assert gw.stats.connections == sockets - 1


async def test_a_client_that_does_not_read_is_disconnected(any_stack):
    """Frames pile up for a client that never reads; past the outbox limit the socket is cut."""
    # Every frame costs against the rate limit: lift it, so the outbox limit is what cuts.
    unlimited = Limits(events_per_s=1e9, burst=1e9)
    gw = side_gateway(any_stack, outbox_bytes=16 * 1024, limits=unlimited)
    port = await gw.start("127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        proto, reader, writer = await raw_client(url, ("127.0.0.1", port), rcvbuf=4096)
        proto.send_binary(hello(f"t-deaf-{uuid.uuid4().hex[:12]}"))
        # Unknown-session errors: each ~150 bytes out for ~100 in, none of them a bad frame.
        stray = msgpack.packb({"t": "events", "sid": "s" * 64, "events": []})
        cut = False
        for _ in range(2000):  # each round queues 100 answers the client never reads
            for _ in range(100):
                proto.send_binary(stray)
            try:
                for data in proto.data_to_send():
                    writer.write(data)
                await writer.drain()
            except ConnectionError:
                cut = True
                break
            if gw.stats.connections == 0:
                cut = True
                break
            await asyncio.sleep(0)  # let the gateway read and answer
        assert cut, "the gateway kept buffering for a client that does not read"
        assert gw.stats.connections == 0
        writer.close()
    finally:
        await gw.stop()


async def test_pings_fragments_and_close_between_plain_frames(any_stack):
    """Plain frames are parsed by the gateway itself; the first other frame hands the socket
    to websockets mid-stream, and nothing before or after it is lost or reordered."""
    url = any_stack.ws_url
    parts = urlsplit(url)
    proto, reader, writer = await raw_client(url, (parts.hostname, parts.port))
    sid = f"t-mixed-{uuid.uuid4().hex[:12]}"

    def events(seq: int) -> bytes:
        ev = {"type": "page_view", "seq": seq, "ts": int(time.time() * 1000), "path": f"/p{seq}"}
        return msgpack.packb({"t": "events", "sid": sid, "events": [ev]})

    got: list = []

    async def read_until(pred) -> None:
        while not pred():
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, f"closed early; got {got}"
            proto.receive_data(data)
            for f in proto.events_received():
                got.append(
                    (f.opcode, msgpack.unpackb(f.data) if f.opcode is Opcode.BINARY else f.data)
                )

    proto.send_binary(hello(sid))
    writer.write(b"".join(proto.data_to_send()))
    await read_until(lambda: any(m[1].get("t") == "welcome" for m in got if isinstance(m[1], dict)))
    peer = any_stack.gateway.peers_by_sid[sid]
    assert peer.rx is not None  # the gateway parses this socket's frames itself
    # One write: a plain frame, a ping, a plain frame, a message in three fragments.
    proto.send_binary(events(1))
    proto.send_ping(b"are you there")
    proto.send_binary(events(2))
    third = events(3)
    proto.send_binary(third[:4], fin=False)
    proto.send_continuation(third[4:9], fin=False)
    proto.send_continuation(third[9:], fin=True)
    writer.write(b"".join(proto.data_to_send()))
    acks = lambda: [m[1]["seq"] for m in got if isinstance(m[1], dict) and m[1].get("t") == "ack"]  # noqa: E731
    await read_until(lambda: 3 in acks())
    assert acks() == [1, 2, 3]
    assert (Opcode.PONG, b"are you there") in got
    assert peer.rx is None  # handed to websockets at the ping
    # Plain frames after the hand-over go through websockets: still acknowledged.
    proto.send_binary(events(4))
    writer.write(b"".join(proto.data_to_send()))
    await read_until(lambda: 4 in acks())
    stored = await any_stack.gateway.store.read_events("demo", sid)
    assert [(e["seq"], e["path"]) for e in stored] == [(n, f"/p{n}") for n in (1, 2, 3, 4)]
    proto.send_close(1000, "done")
    writer.write(b"".join(proto.data_to_send()))
    await read_until(lambda: any(m[0] is Opcode.CLOSE for m in got))
    assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closed TCP
    writer.close()


async def test_an_unmasked_client_frame_is_a_protocol_error(any_stack):
    url = any_stack.ws_url
    parts = urlsplit(url)
    proto, reader, writer = await raw_client(url, (parts.hostname, parts.port))
    writer.write(wire.frame(wire.BINARY, hello(f"t-unmasked-{uuid.uuid4().hex[:12]}")))
    data = b""
    while chunk := await asyncio.wait_for(reader.read(4096), 10):
        data += chunk
    proto.receive_data(data)
    closes = [f for f in proto.events_received() if f.opcode is Opcode.CLOSE]
    assert closes and int.from_bytes(closes[0].data[:2], "big") == 1002
    writer.close()


@pytest.mark.parametrize("window_ms", [0, 400])
async def test_an_append_window_gathers_frames_into_one_round(any_stack, window_ms):
    """With an append window, a frame that arrives while a round gathers goes in that round."""
    gw = side_gateway(any_stack, append_window_ms=window_ms)
    port = await gw.start("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}/ws?site=demo"
    sids = [f"t-window-{uuid.uuid4().hex[:12]}" for _ in range(2)]

    def events(sid: str) -> bytes:
        ev = {"type": "page_view", "seq": 1, "ts": int(time.time() * 1000), "path": "/"}
        return msgpack.packb({"t": "events", "sid": sid, "events": [ev]})

    try:
        async with (
            websockets.connect(url, origin=ORIGIN) as a,
            websockets.connect(url, origin=ORIGIN) as b,
        ):
            for ws, sid in zip((a, b), sids, strict=True):
                await ws.send(hello(sid))
                assert msgpack.unpackb(await ws.recv())["t"] == "welcome"
            rounds = gw.stats.append_rounds
            await a.send(events(sids[0]))
            # The first frame's round has begun (yielding, not waiting).
            while not gw.pipeline.appending:
                await asyncio.sleep(0)
            await b.send(events(sids[1]))
            for ws in (a, b):
                assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))["t"] == "ack"
            # Without a window the first round is already at Redis when the second frame comes.
            assert gw.stats.append_rounds - rounds == (1 if window_ms else 2)
    finally:
        await gw.stop()
