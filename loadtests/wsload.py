"""A lean WebSocket load client: ``websockets`` for the handshake, hand-made frames after it.

The load generator shares the two cores with the server, so every microsecond
it spends is taken from the system under test. ``websockets``' asyncio client
costs a reader task per socket and an async generator per send; this client
has neither: frames are parsed in ``data_received`` and written at once. Once
the socket is open it also leaves the sans-I/O protocol: building a frame
through it (and drawing its mask from ``secrets``, a system call per frame)
and parsing replies with its generator-based reader were ~25 % of a load
generator's CPU (py-spy, 2026-11-21); here frames are built by
:func:`serve.edge.wire.frame` (a header, a mask from ``random`` and
``websockets``' C ``apply_mask``). Both the echo ceiling and the
Lifeline runs use it, so the ratio compares servers, not clients.

Limits: a load tool, not a general client: no TLS, no fragmented messages
(the servers it talks to send none), no reconnection, masks from a
non-cryptographic generator (RFC 6455 wants unpredictable ones; they only
matter against proxies, and there are none here), pings answered, a close
frame just closes the socket.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri

from serve.edge import wire


class WsClient(asyncio.Protocol):
    """One client socket; ``on_message`` gets each text or binary message's payload."""

    def __init__(self, uri: str, origin: str | None, on_message: Callable[[bytes], None]) -> None:
        self.proto = ClientProtocol(
            parse_uri(uri), origin=Origin(origin) if origin else None, max_size=2**22
        )
        self.on_message = on_message
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf: bytearray | None = None  # set once open: frames are parsed here from then on

    @classmethod
    async def connect(
        cls, uri: str, origin: str | None, on_message: Callable[[bytes], None]
    ) -> WsClient:
        wsuri = parse_uri(uri)
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: cls(uri, origin, on_message), wsuri.host, wsuri.port
        )
        await asyncio.wait_for(client.opened, 30)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())  # no extensions: no compression
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.buf is not None:
            self.buf += data
            self._frames()
            return
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Response):
                if proto.state is State.OPEN:
                    # Open: what the reader holds past the response is the first frames.
                    self.buf = bytearray(proto.reader.buffer)
                    self.opened.set_result(None)
                elif not self.opened.done():
                    self.opened.set_exception(proto.handshake_exc or ConnectionError("refused"))
        self._flush()
        if self.buf:
            self._frames()

    def _frames(self) -> None:
        """Deliver every whole frame in the buffer (server frames are unmasked)."""
        buf = self.buf
        assert buf is not None
        while len(buf) >= 2:
            n, pos = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, pos = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < pos + n:
                return
            op = buf[0] & 0x0F
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            if op == 1 or op == 2:
                self.on_message(payload)
            elif op == 9:  # ping: answer with the same payload
                self._write(0x8A, payload)
            elif op == 8:  # close: no closing handshake, just go
                if self.transport is not None:
                    self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.proto.receive_eof()
        self.buf = None
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> bool:
        """Send one binary message; False once the socket is no longer open."""
        if self.buf is None or self.transport is None or self.transport.is_closing():
            return False
        self._write(0x82, data)
        return True

    def _write(self, head: int, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(wire.frame(head, data, masked=True))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.buf is not None:
                self._write(0x88, struct.pack("!H", 1000))
            self.transport.close()
        self.buf = None

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.proto.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
