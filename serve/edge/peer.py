"""One WebSocket connection: the handshake, frames in, frames out, its timers.

Each socket is a :class:`Peer`: the ``websockets`` library's sans-I/O
``ServerProtocol`` driven straight from asyncio's protocol callbacks. Frames
are handled in ``data_received`` and replies are written to the transport at
once; there is no task per socket. (The library's own asyncio layer, with a
reader task, a message assembler and an async generator per send, cost
37-56 us per echoed frame against 19 us for this shape; BENCHMARKS.md.)

Once open, plain frames are parsed here (:mod:`serve.edge.wire`); the first
frame that is not plain hands the socket to the library's parser for good.
What a message means is not decided here: the peer hands each one to its
host (:class:`PeerHost`, the gateway), and writes what it is told to send.
While a hello or consent change awaits Redis, the socket's reading is
paused so its later frames wait in the kernel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from actors.core.sites import Site
from serve.edge import wire
from serve.edge.ip_limits import IpLimits
from serve.edge.protocol import CLOSE_HELLO_TIMEOUT, Connection, Limits, TokenBucket, error
from serve.edge.stats import Stats

log = logging.getLogger("lifeline.gateway")

CLOSE_TIMEOUT_S = 5.0  # how long a closing handshake may take before the socket is cut
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_KEEPALIVE = 1011


def _http_429(code: str, detail: str) -> bytes:
    body = json.dumps({"code": code, "detail": detail}).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# IpLimits' refusals as the raw HTTP response a socket gets before its handshake.
_TOO_MANY = {
    "connections": _http_429("too_many_connections", "too many open sockets from this address"),
    "handshake_rate": _http_429("handshake_rate", "too many new sockets from this address"),
}


class PeerHost(Protocol):
    """What a socket needs of the gateway that accepted it (:class:`serve.edge.gateway.Gateway`).

    Stated here so that this module does not import the gateway, which
    imports it.
    """

    limits: Limits
    stats: Stats
    secret: bytes
    outbox_bytes: int
    handshake_timeout_s: float

    def site_for(self, query: str, origin: str | None) -> Site | str: ...

    ip_limits: IpLimits

    def site_bucket(self, site: str) -> TokenBucket | None: ...

    def half_open_take(self, ip: str) -> bool: ...

    def half_open_release(self, ip: str) -> None: ...

    def attach(self, peer: Peer) -> None: ...

    def detach(self, peer: Peer) -> None: ...

    def on_message(self, peer: Peer, message: str | bytes) -> Any: ...


class Peer(asyncio.Protocol):
    """One socket: the WebSocket protocol state, the Lifeline protocol state, the transport.

    A beacon request uses a Peer without a transport: the same protocol
    checks, nothing to write to.
    """

    def __init__(self, gateway: PeerHost | None, conn: Connection | None = None) -> None:
        self.gw = gateway
        self.conn = conn  # set once the handshake names the site
        self.ws: ServerProtocol | None = None
        self.transport: asyncio.Transport | None = None
        self.backlog: deque[str | bytes] = deque()  # frames that wait for a hello or consent
        self.busy = False
        self.fragments: list[bytes] = []
        self.fragments_text = False
        # Once open, plain frames are parsed here (serve.edge.wire); the first frame
        # that is not plain hands the socket to websockets' parser for good.
        self.rx: bytearray | None = None
        self.last_rx = 0.0
        self.pinged = False
        self.hello_timer: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.half_open_ip: str | None = None  # counted among its address's half-open sockets
        self.open_ip: str | None = None  # counted among its address's open sockets (IpLimits)

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert self.gw is not None
        self.transport = transport  # type: ignore[assignment]
        self.ws = ServerProtocol(
            max_size=self.gw.limits.hard_frame_bytes, logger=logging.getLogger("websockets.server")
        )
        self.last_rx = time.monotonic()
        # Until its upgrade request is complete, a socket holds a slot of its
        # address, for at most HANDSHAKE_TIMEOUT_S: a client that trickles its
        # request (or opens thousands and says nothing) cannot hold sockets open.
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else "?"
        refused = self.gw.ip_limits.admit(ip)
        if refused is not None:
            # Machine-readable before any WebSocket exists: a 429 with the limit's code.
            self.gw.stats.ip_refused += 1
            transport.write(_TOO_MANY[refused])  # type: ignore[attr-defined]
            transport.close()
            return
        self.open_ip = ip
        if not self.gw.half_open_take(ip):
            self.gw.stats.half_open_refused += 1
            transport.abort()
            return
        self.half_open_ip = ip
        self.handshake_timer = asyncio.get_running_loop().call_later(
            self.gw.handshake_timeout_s, self._handshake_timeout
        )

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.pinged = False
        rx = self.rx
        if rx is None:
            self._receive(data)
            return
        rx += data
        assert self.gw is not None and self.ws is not None
        frames, used, other = wire.plain_frames(rx, self.gw.limits.hard_frame_bytes)
        ws = self.ws
        for head, payload in frames:
            # A pong needs no answer; data after our close frame is not read.
            if head != wire.PONG and ws.state is State.OPEN:
                self._message(payload, head == wire.TEXT)
        if other:
            # Close, ping, fragments, protocol errors: websockets takes over. Its
            # parser has seen nothing since the handshake, so it starts at this frame.
            rest = bytes(rx[used:])
            self.rx = None
            self._receive(rest)
        else:
            del rx[:used]

    def _receive(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        ws.receive_data(data)
        events = ws.events_received()
        for event in events:
            if isinstance(event, Request):
                # Parsing frames here is safe only if the library's parser is
                # between frames: nothing came after the request (a client must
                # wait for the 101 before sending frames, RFC 6455 4.1).
                self._handshake(event, len(events) == 1 and data.endswith(b"\r\n\r\n"))
            elif ws.state is State.OPEN:
                self._frame(event)
        self.flush()

    def eof_received(self) -> bool:
        assert self.ws is not None
        self.ws.receive_eof()
        self.flush()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ws is not None:
            self.ws.receive_eof()
        for timer in (self.hello_timer, self.close_timer, self.handshake_timer):
            if timer is not None:
                timer.cancel()
        self._handshake_over()
        if self.open_ip is not None and self.gw is not None:
            self.gw.ip_limits.release(self.open_ip)
            self.open_ip = None
        if self.gw is not None and self.conn is not None:
            self.gw.detach(self)

    # -- frames ---------------------------------------------------------------

    def _handshake_over(self) -> None:
        """The upgrade request is complete (or the socket gone): free the address's slot."""
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if self.half_open_ip is not None and self.gw is not None:
            self.gw.half_open_release(self.half_open_ip)
            self.half_open_ip = None

    def _handshake_timeout(self) -> None:
        self.handshake_timer = None
        if self.ws is not None and self.ws.state is State.CONNECTING:
            assert self.gw is not None
            self.gw.stats.handshake_timeouts += 1
            self._handshake_over()
            self.abort()

    def _handshake(self, request: Request, between_frames: bool) -> None:
        ws, gw = self.ws, self.gw
        assert ws is not None and gw is not None
        self._handshake_over()
        parts = urlsplit(request.path)
        if parts.path != "/ws":
            ws.send_response(ws.reject(404, "not found: the WebSocket endpoint is /ws\n"))
            return
        site = gw.site_for(parts.query, request.headers.get("Origin"))
        if isinstance(site, str):
            log.warning("refused handshake: %s", site)
            ws.send_response(ws.reject(403, site + "\n"))
            return
        response = ws.accept(request)
        ws.send_response(response)
        if ws.state is not State.OPEN:  # not a valid WebSocket upgrade: answered and closed
            log.info("failed handshake: %s", ws.handshake_exc)
            return
        self.conn = Connection(site.key, gw.secret, gw.limits, site_bucket=gw.site_bucket(site.key))
        if between_frames:
            self.rx = bytearray()  # frames are parsed here until one is not plain
        gw.attach(self)
        self.hello_timer = asyncio.get_running_loop().call_later(
            gw.limits.hello_timeout_s, self._hello_timeout
        )

    def _frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if frame.fin:
                self._message(frame.data, op is Opcode.TEXT)
                return
            self.fragments, self.fragments_text = [bytes(frame.data)], op is Opcode.TEXT
        elif op is Opcode.CONT and self.fragments:
            self.fragments.append(bytes(frame.data))  # the protocol enforces max_size overall
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), []
                self._message(data, self.fragments_text)
        elif (
            op is Opcode.PING
            and self.conn is not None
            and not self.conn.control_frame()  # over the limit: a strike
            and self.conn.close
        ):
            # The library has queued its pong; a flood of pings still ends in a close.
            self.close(*self.conn.close)
        # Ping, pong and close frames are answered by the protocol itself.

    def _message(self, data: bytes | bytearray | memoryview, text: bool) -> None:
        message: str | bytes
        if text:
            try:
                message = bytes(data).decode()
            except UnicodeDecodeError:
                self.send(error("bad_frame", "a text frame must be UTF-8"))
                return
        else:
            message = data if isinstance(data, bytes) else bytes(data)
        if self.busy:
            self.backlog.append(message)
        else:
            self._dispatch(message)

    def _dispatch(self, message: str | bytes) -> None:
        assert self.gw is not None and self.conn is not None
        if self.conn.close:
            return  # closing: frames after the one that closed it are not read
        slow = self.gw.on_message(self, message)
        if slow is not None:
            # A hello or consent change awaits Redis: later frames wait behind it.
            self.busy = True
            if self.transport is not None:
                self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._finish(slow))
        if self.conn.close:
            self.close(*self.conn.close)

    async def _finish(self, slow: Any) -> None:
        try:
            await slow
        except Exception:  # e.g. Redis unreachable: the client hears nothing and retries
            log.exception("handling a frame failed")
        finally:
            self.busy = False
            while self.backlog and not self.busy:
                self._dispatch(self.backlog.popleft())
            if not self.busy and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
            self.flush()
        if self.conn is not None and self.conn.sessions and self.hello_timer is not None:
            self.hello_timer.cancel()  # said hello: the hello timeout is over
            self.hello_timer = None

    # -- writing --------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the client and write it (unless the client is too slow to read).

        Every error frame is counted by its code here, the one place they all pass.
        """
        if frame["t"] == "error" and self.gw is not None:
            self.gw.stats.error(frame["code"])
        ws, transport = self.ws, self.transport
        if ws is None or transport is None or ws.state is not State.OPEN:
            return
        assert self.conn is not None
        data = self.conn.encode(frame)
        # Written directly (serve.edge.wire), not through ws.send_binary: the library
        # flushes its own frames as it makes them, so none can be overtaken.
        if isinstance(data, bytes):
            transport.write(wire.frame(wire.BINARY, data))
        else:
            transport.write(wire.frame(wire.TEXT, data.encode()))
        assert self.gw is not None
        if transport.get_write_buffer_size() > self.gw.outbox_bytes:
            # A client that does not read is dropped, not buffered without bound.
            self.conn.close = (CLOSE_POLICY, "client too slow to read its frames")
            transport.abort()

    def flush(self) -> None:
        """Write what the protocol has to send; its end-of-stream closes the socket."""
        ws, transport = self.ws, self.transport
        if ws is None or transport is None:
            return
        for data in ws.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()  # the server closes TCP first (RFC 6455, 7.1.1)
        if ws.close_expected() and self.close_timer is None:
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.abort)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; queued frames (the error that explains it) go first."""
        ws = self.ws
        if ws is None or ws.state is not State.OPEN:
            return
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        ws.send_close(code, reason)
        self.flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def ping(self) -> None:
        """Keepalive: ping a quiet socket; drop it if the last ping got no answer."""
        ws = self.ws
        if ws is None or ws.state is not State.OPEN:
            return
        if self.pinged:
            log.info("dropping a socket that answered no keepalive ping")
            ws.fail(CLOSE_KEEPALIVE, "keepalive ping timeout")
            self.flush()
            self.abort()
            return
        self.pinged = True
        ws.send_ping(b"")
        self.flush()

    def _hello_timeout(self) -> None:
        self.hello_timer = None
        if self.conn is None or self.conn.sessions:
            return
        if self.busy:  # a hello is being looked up: judge it when it is done
            self.hello_timer = asyncio.get_running_loop().call_later(1.0, self._hello_timeout)
            return
        self.conn.close = (CLOSE_HELLO_TIMEOUT, "no hello in time")
        self.close(*self.conn.close)
