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
  ``time.time()``), then a packed batch (:func:`actors.core.host.pack_batch`:
  its items, and the W3C ``traceparent`` of each item whose frame is traced);
  the first message of a connection has call id 0 and carries
  ``msgpack([token, gateway id])`` instead;
* reply: ``length u32, call id u32, status u8``, then the shard's packed
  results (status 0: per session its scores and interventions, and the
  ``traceparent`` of each item that triggered a decision, see
  :meth:`actors.shard.actor.ShardCore.handle`) or an error message (status 1).

The server handles one batch at a time, in arrival order, on a thread of
its own: a batch blocks that thread, never the shard's I/O loop. Limits:
one connection per gateway and shard; a frame over ``MAX_FRAME`` closes the
connection.

Encryption follows Ray's: with ``RAY_USE_TLS=1`` the link is mutual TLS
with the same certificate, key and CA as Ray's own connections
(``RAY_TLS_SERVER_CERT``, ``RAY_TLS_SERVER_KEY``, ``RAY_TLS_CA_CERT``), see
:class:`LinkTLS`; without it the link is plain TCP, as Ray's gRPC is then,
and the token is what keeps strangers out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LinkTLS:
    """Mutual TLS for the link: both ends show a certificate signed by ``ca``.

    The files are Ray's own (one certificate and key per node, used as
    server and client certificate alike). The host name is not checked:
    shards move between nodes and are reached by IP, and the CA already
    proves the peer is part of the cluster (Ray's gRPC checks no more).
    """

    cert: str
    key: str
    ca: str

    ENV = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LinkTLS | None:
        """The cluster's TLS settings, or None when Ray runs without TLS.

        Raises ValueError when ``RAY_USE_TLS`` is on but a file is not named:
        a link that silently fell back to plain TCP would be worse.
        """
        if env.get("RAY_USE_TLS", "0").strip().lower() not in ("1", "true"):
            return None
        missing = [name for name in cls.ENV if not env.get(name)]
        if missing:
            raise ValueError(f"RAY_USE_TLS is on but {', '.join(missing)} not set")
        return cls(*(env[name] for name in cls.ENV))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.check_hostname = False
        return ctx


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

    def __init__(
        self, handler: Handler, host: str = "127.0.0.1", tls: LinkTLS | None = None
    ) -> None:
        self.handler = handler
        self.host = host
        self._ssl = tls.server_context() if tls is not None else None
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
            self._loop.create_server(lambda: _ServerSide(self), self.host, 0, ssl=self._ssl)
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

    def __init__(self, shard: Any, gateway_id: str, tls: LinkTLS | None = None) -> None:
        self.shard = shard
        self.gateway_id = gateway_id
        self._ssl = tls.client_context() if tls is not None else None
        self._side: _ClientSide | None = None
        self._last_call = 0
        self._token: str | None = None
        # Restarts of the shard this link has seen: a shard makes up a new token at every
        # start, so a new token on a reconnect means Ray restarted it (a series in /metrics).
        self.restarts = 0

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
        # No retries inside Ray: while the shard's node is being declared dead, Ray's own
        # retries back off and held a gateway seconds past the restarted shard being ready.
        # The caller polls instead; once Ray knows the actor is restarting, a call waits for
        # it and returns as soon as it is up.
        host, port, token = await self.shard.link_address.options(max_task_retries=0).remote()
        if self._token is not None and token != self._token:
            self.restarts += 1
        self._token = token
        loop = asyncio.get_running_loop()
        try:
            _, side = await loop.create_connection(_ClientSide, host, port, ssl=self._ssl)
        except OSError as exc:  # ssl.SSLError included: a certificate the other end refused
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
