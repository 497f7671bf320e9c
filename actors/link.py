"""The shard link: how a gateway hands a SessionShard its batches, over a plain TCP socket.

Why not a Ray actor call: a call costs ~1.2-1.8 ms of CPU (depending on
the machine) between the caller, Ray's threads and the actor, against
~0.15 ms over this link (``loadtests/bench_stages.py``), and a gateway
calls each shard as soon as its previous call returns, so spare CPU turned
into more, smaller calls: at 1,000 events/s each shard burned a third of a
core. Over this link a call is one write and one read on each side.

The shard is still a Ray actor: Ray places it, restarts it when it dies and
shows it on the dashboard. A gateway learns the link's address, and a token
the shard made up at start, through a Ray call (``link_address``), so only
a client of the Ray cluster can use the link; after a restart the old
connection is gone and the next call asks Ray again.

Wire (both directions, big-endian): a header, then ``length`` bytes.

* request: ``length u32, call id u32, sent_at f64`` (the gateway's
  ``time.time()``), then a packed batch (:func:`actors.host.pack_batch`);
  the first message of a connection has call id 0 and carries
  ``msgpack([token, gateway id])`` instead;
* reply: ``length u32, call id u32, status u8``, then the shard's packed
  results (status 0) or an error message (status 1).

The server handles one batch at a time, in arrival order, on a thread of
its own: a batch blocks that thread, never the shard's I/O loop. Limits:
one connection per gateway and shard; a frame over ``MAX_FRAME`` closes the
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import msgpack

log = logging.getLogger("lifeline.link")

REQUEST = struct.Struct("!IId")
REPLY = struct.Struct("!IIB")
OK, FAILED = 0, 1
MAX_FRAME = 64 * 1024 * 1024

Handler = Callable[[bytes, str, float], bytes]


class LinkDown(ConnectionError):
    """The link closed before the reply came: the shard may be restarting; call again."""


class ShardFailed(RuntimeError):
    """The shard raised while handling the batch (a bug, not bad input: input is validated)."""


def messages(buf: bytearray, header: struct.Struct) -> Iterator[tuple[tuple, bytes]]:
    """The complete messages at the front of ``buf`` (removed as they are read).

    Raises ValueError for a length over ``MAX_FRAME``, before waiting for its bytes.
    """
    size = header.size
    while len(buf) >= size:
        fields = header.unpack_from(buf)
        length = fields[0]
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes refused")
        if len(buf) < size + length:
            return
        payload = bytes(buf[size : size + length])
        del buf[: size + length]
        yield fields, payload


# -- the shard's end ------------------------------------------------------------------


class LinkServer:
    """Listens for gateways on behalf of one shard and runs ``handler`` for each batch."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host
        self.token = secrets.token_hex(16)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._conns: set[_ServerSide] = set()
        self._listening = threading.Event()
        threading.Thread(target=self._serve, name="shard-link", daemon=True).start()
        if not self._listening.wait(30.0):
            raise RuntimeError("shard link did not start listening")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            self._loop.create_server(lambda: _ServerSide(self), self.host, 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._listening.set()
        self._loop.run_forever()

    def close(self) -> None:
        """Stop listening and drop every connection (as a dying shard would)."""

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                conn.close()

        self._loop.call_soon_threadsafe(stop)

    def address(self) -> tuple[str, int, str]:
        """(host, port, token): what a gateway needs to connect."""
        return self.host, self.port, self.token


class _ServerSide(asyncio.Protocol):
    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.gateway: str | None = None  # set by a hello with the right token
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            for (_, call, sent_at), payload in messages(self.buf, REQUEST):
                if not self._request(call, sent_at, payload):
                    return
        except ValueError as exc:  # a frame over the limit
            log.error("shard link: %s; closing", exc)
            self.close()

    def _request(self, call: int, sent_at: float, payload: bytes) -> bool:
        """Handle one message; False when it closed the connection (a wrong hello)."""
        if self.gateway is not None:
            self._reply(call, payload, sent_at)
            return True
        if self._hello(call, payload):
            return True
        self.close()
        return False

    def _hello(self, call: int, payload: bytes) -> bool:
        try:
            token, gateway = msgpack.unpackb(payload)
        except (ValueError, TypeError, msgpack.ExtraData):
            return False
        if call != 0 or not secrets.compare_digest(str(token), self.server.token):
            log.warning("shard link: a connection without the right token, closed")
            return False
        self.gateway = str(gateway)
        return True

    def _reply(self, call: int, batch: bytes, sent_at: float) -> None:
        assert self.gateway is not None and self.transport is not None
        try:
            out, status = self.server.handler(batch, self.gateway, sent_at), OK
        except Exception as exc:  # a bug in the shard: the gateway logs it, the link stays up
            log.exception("shard link: batch %d failed", call)
            out, status = f"{type(exc).__name__}: {exc}".encode(), FAILED
        self.transport.write(REPLY.pack(len(out), call, status) + out)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# -- the gateway's end ------------------------------------------------------------------


class ShardLink:
    """One gateway's connection to one shard, made on first use and again after a drop.

    ``call`` runs on the gateway's event loop. Connection failures and drops
    raise :class:`LinkDown` (as do Ray's errors while it restarts the actor,
    which the caller handles as before); the caller decides about retrying.
    """

    def __init__(self, shard: Any, gateway_id: str) -> None:
        self.shard = shard
        self.gateway_id = gateway_id
        self._side: _ClientSide | None = None
        self._last_call = 0

    async def call(self, batch: bytes, sent_at: float) -> bytes:
        side = self._side
        if side is None or side.closed:
            side = await self._connect()
        # 1 .. 2**32-1, then 1 again: a u32 on the wire, and 0 is the hello.
        call = self._last_call = self._last_call % 0xFFFFFFFF + 1
        fut = asyncio.get_running_loop().create_future()
        side.pending[call] = fut
        side.transport.write(REQUEST.pack(len(batch), call, sent_at) + batch)
        return await fut

    async def _connect(self) -> _ClientSide:
        host, port, token = await self.shard.link_address.remote()
        loop = asyncio.get_running_loop()
        try:
            _, side = await loop.create_connection(_ClientSide, host, port)
        except OSError as exc:
            raise LinkDown(f"cannot connect to the shard at {host}:{port}: {exc}") from exc
        hello = msgpack.packb([token, self.gateway_id])
        side.transport.write(REQUEST.pack(len(hello), 0, 0.0) + hello)
        self._side = side
        return side

    def close(self) -> None:
        if self._side is not None:
            self._side.transport.close()
            self._side = None


class _ClientSide(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.closed = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for (_, call, status), payload in messages(self.buf, REPLY):
            fut = self.pending.pop(call, None)
            if fut is None or fut.done():
                continue
            if status == OK:
                fut.set_result(payload)
            else:
                fut.set_exception(ShardFailed(payload.decode(errors="replace")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(LinkDown(f"shard link closed: {exc or 'by the shard'}"))
        self.pending.clear()
        with contextlib.suppress(Exception):
            self.transport.close()
