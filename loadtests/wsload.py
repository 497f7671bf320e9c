"""A lean WebSocket load client: ``websockets``' sans-I/O ClientProtocol on asyncio callbacks.

The load generator shares the two cores with the server, so every microsecond
it spends is taken from the system under test. ``websockets``' asyncio client
costs a reader task per socket and an async generator per send; this client
has neither: frames are parsed in ``data_received`` and written at once. Both
the echo ceiling and the Lifeline runs use it, so the ratio compares servers,
not clients.

Limits: no TLS, no fragmented messages (the servers it talks to send none),
no reconnection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri


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
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Response):
                if proto.state is State.OPEN:
                    self.opened.set_result(None)
                elif not self.opened.done():
                    self.opened.set_exception(proto.handshake_exc or ConnectionError("refused"))
            elif event.opcode is Opcode.BINARY or event.opcode is Opcode.TEXT:
                self.on_message(event.data)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proto.receive_eof()
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> bool:
        """Send one binary message; False once the socket is no longer open."""
        if self.proto.state is not State.OPEN:
            return False
        self.proto.send_binary(data)
        self._flush()
        return True

    def close(self) -> None:
        if self.proto.state is State.OPEN:
            self.proto.send_close(1000)
            self._flush()
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.proto.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
