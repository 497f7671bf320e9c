"""The WebSocket gateway: browsers in, durable appends, shard batches, interventions out.

The I/O shell around :class:`serve.edge.protocol.Connection`. Each socket is a
:class:`Peer`: the ``websockets`` library's sans-I/O ``ServerProtocol``
driven straight from asyncio's protocol callbacks. Frames are handled in
``data_received`` and replies are written to the transport at once; there is
no task per socket. (The library's own asyncio layer, with a reader task, a
message assembler and an async generator per send, cost 37-56 us per echoed
frame against 19 us for this shape; BENCHMARKS.md.) Across
connections the gateway runs two pipelines that batch whatever arrived while
the previous round trip was in flight:

* the **append pipeline** makes events durable in Redis (one script call
  for all connections per round, the next round sent while Redis runs the
  last) and only then acknowledges them;
* one **dispatcher per shard** hands that shard every durable event that
  arrived since its last call, in one call over the shard's link
  (:mod:`actors.shard.link`, not a Ray call), and pushes back the
  interventions it decides. One call in flight per shard keeps each
  session's events in order; a crashed shard's batch is retried once Ray
  has restarted it (the events are durable, so nothing is lost).

Richer content (LLM text, recommendations) reaches the gateway later on a
Redis pub/sub channel of its own and goes out as ``update`` frames.

Backpressure: when the shards fall behind by more than ``max_pending``
events, new frames are refused with ``overloaded`` (not acknowledged: the
client resends later) instead of queueing without bound; a client that does
not read its socket is disconnected once ``OUTBOX_BYTES`` wait for it,
rather than buffered forever; while a hello or consent change awaits Redis,
the socket's reading is paused so its later frames wait in the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import ray
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from actors.core.host import EVENTS, FORGET, Forget, pack_batch
from actors.core.placement import HashRing
from actors.core.sites import Site
from actors.shard.link import LinkDown, LinkTLS, ShardFailed, ShardLink
from cluster.keys import Keys
from cluster.loops import Supervisor
from cluster.redis_server import async_client
from serve.edge import wire
from serve.edge.protocol import (
    CLOSE_HELLO_TIMEOUT,
    CLOSE_TAKEN_OVER,
    Connection,
    EventsPlan,
    HelloRequest,
    Limits,
    TokenBucket,
    error,
)
from serve.edge.store import Append, EventStore

log = logging.getLogger("lifeline.gateway")

OUTBOX_BYTES = 1 << 20  # unsent bytes one slow client may hold before it is disconnected
SHARD_RETRY_S = 120.0  # how long a batch is retried while Ray restarts a shard
ROUNDS_IN_FLIGHT = 2  # append rounds on their way to Redis at once (see _append_loop)
PING_INTERVAL_S = 20.0  # a socket silent this long is pinged; silent for two, dropped
CLOSE_TIMEOUT_S = 5.0  # how long a closing handshake may take before the socket is cut
HANDSHAKE_TIMEOUT_S = 10.0  # from TCP accept to a complete HTTP upgrade request
HALF_OPEN_PER_IP = 256  # sockets of one address still in their handshake, at once
BEACON_SITE_RATE = 50.0  # a site's beacons may carry this many times one connection's events/s
BEACON_BUCKETS = 100_000  # sessions whose beacon rate is remembered (oldest forgotten first)
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_KEEPALIVE = 1011


@dataclass
class Stats:
    """Counters an operator (and the load test) reads from /metrics."""

    connections: int = 0
    frames: int = 0
    events_acked: int = 0
    events_scored: int = 0
    errors: int = 0  # error frames sent (and beacon errors answered), all codes
    interventions: int = 0
    updates: int = 0
    shard_calls: int = 0
    shard_retries: int = 0
    append_rounds: int = 0
    shard_call_ms: float = 0.0  # summed round trips of shard calls
    acks: int = 0
    ack_ms: float = 0.0  # summed time from reading a frame to acknowledging it
    handshake_timeouts: int = 0
    half_open_refused: int = 0
    batch_events: list[int] = field(default_factory=list)
    errors_by_code: dict[str, int] = field(default_factory=dict)  # every error frame, by code
    loop_failures: dict[str, int] = field(default_factory=dict)  # set by the gateway's supervisor

    def error(self, code: str) -> None:
        """Count one error frame sent (or beacon error answered)."""
        self.errors += 1
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    @property
    def overloaded(self) -> int:
        return self.errors_by_code.get("overloaded", 0)

    def snapshot(self) -> dict[str, Any]:
        """Counters as JSON; the maps (by code, by loop) become labelled series in /metrics."""
        d = {k: v for k, v in self.__dict__.items() if k != "batch_events"}
        d["errors_by_code"] = dict(self.errors_by_code)
        d["overloaded"] = self.overloaded
        b = self.batch_events[-1000:]
        d["mean_shard_batch"] = sum(b) / len(b) if b else 0.0
        return d


class Peer(asyncio.Protocol):
    """One socket: the WebSocket protocol state, the Lifeline protocol state, the transport.

    A beacon request uses a Peer without a transport: the same protocol
    checks, nothing to write to.
    """

    def __init__(self, gateway: Gateway | None, conn: Connection | None = None) -> None:
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
        self.conn = Connection(site.key, gw.secret, gw.limits)
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


class AppendSink:
    """Where an append's outcome goes: a socket (ack it) or a beacon request (await it)."""

    __slots__ = ("peer", "future", "since")

    def __init__(self, peer: Peer, future: asyncio.Future | None = None) -> None:
        self.peer = peer
        self.future = future
        self.since = time.perf_counter()  # when the frame was read


class Gateway:
    """Accepts sockets for the configured sites and moves their events through the system."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        shards: list[Any],
        sites: dict[str, Site],
        secret: str,
        limits: Limits | None = None,
        batch_window_ms: float = 0.0,
        append_window_ms: float = 0.0,
        max_pending: int = 50_000,
        ping_interval_s: float = PING_INTERVAL_S,
        outbox_bytes: int = OUTBOX_BYTES,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        half_open_per_ip: int = HALF_OPEN_PER_IP,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.keys = Keys(prefix)
        self.redis = async_client(redis_url)
        self.store = EventStore(self.redis, self.keys)
        self.shards = shards
        tls = LinkTLS.from_env()  # the cluster's, as the shards read it
        self.links = [ShardLink(shard, self.id, tls) for shard in shards]
        self.ring = HashRing(len(shards))
        self.sites = sites
        self.secret = secret.encode()
        self.limits = limits or Limits()
        self.window_s = batch_window_ms / 1000.0
        self.append_window_s = append_window_ms / 1000.0
        self.max_pending = max_pending
        self.ping_interval_s = ping_interval_s
        self.outbox_bytes = outbox_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.half_open_per_ip = half_open_per_ip
        self._half_open: dict[str, int] = {}
        self.stats = Stats()
        self.loops = Supervisor(log, f"gateway {self.id}")
        self.stats.loop_failures = self.loops.counts
        # Beacons come without a socket; their rate limits live here, per session and per site.
        self._beacon_buckets: dict[str, TokenBucket] = {}
        self.peers_by_sid: dict[str, Peer] = {}
        self._appends: asyncio.Queue[tuple[Any, EventsPlan | None]] = asyncio.Queue()
        self._pending: list[list[tuple]] = [[] for _ in shards]
        self._pending_events = 0
        self._wake = [asyncio.Event() for _ in shards]
        self._rounds_open = 0  # rounds begun (gathering or at Redis) and not yet settled
        self._slots = asyncio.Semaphore(ROUNDS_IN_FLIGHT)
        self._rounds: asyncio.Queue[tuple[list, list, list, Any]] = asyncio.Queue()
        self._round_done = asyncio.Event()
        self._scored_waiters: dict[str, list[tuple[int, asyncio.Future]]] = {}
        self._server: asyncio.Server | None = None
        self.peers: set[Peer] = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; with ``reuse_port`` several gateway processes share one port."""
        loop = asyncio.get_running_loop()
        # Supervised: a loop that fails is restarted, logged, counted and shown by health.
        self.loops.start("append", self._append_loop)
        self.loops.start("settle", self._settle_loop)
        for i in range(len(self.shards)):
            self.loops.start(f"shard{i}", lambda i=i: self._shard_loop(i))
        self.loops.start("push", self._push_loop)
        self.loops.start("keepalive", self._keepalive_loop)
        self._server = await loop.create_server(
            lambda: Peer(self), host, port, reuse_port=reuse_port, backlog=2048
        )
        self.port = self._server.sockets[0].getsockname()[1]
        from cluster.gc_tuning import tune_for_throughput

        tune_for_throughput()
        log.info("gateway %s listening on ws://%s:%d/ws", self.id, host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for peer in list(self.peers):
                peer.close(CLOSE_GOING_AWAY, "server shutting down")
            await self._server.wait_closed()
        await self.loops.stop()
        for link in self.links:
            link.close()
        self.store.close()
        await self.redis.aclose()

    # -- sockets ------------------------------------------------------------------

    def site_for(self, query: str, origin: str | None) -> Site | str:
        """The site a request belongs to, or why it is refused."""
        keys = parse_qs(query).get("site")
        site = self.sites.get(keys[0]) if keys else None
        if site is None:
            return "unknown site key"
        if not site.origin_allowed(origin):
            return f"origin {origin!r} not allowed for site {site.key}"
        return site

    def half_open_take(self, ip: str) -> bool:
        """Count a socket of ``ip`` in its handshake; False if the address has too many."""
        n = self._half_open.get(ip, 0)
        if n >= self.half_open_per_ip:
            return False
        self._half_open[ip] = n + 1
        return True

    def half_open_release(self, ip: str) -> None:
        n = self._half_open.get(ip, 0) - 1
        if n > 0:
            self._half_open[ip] = n
        else:
            self._half_open.pop(ip, None)

    def health(self) -> dict[str, Any]:
        """The gateway's own part of /healthz: whether every background loop is running."""
        return {"ok": self.loops.healthy, "loops": self.loops.health()}

    def attach(self, peer: Peer) -> None:
        """A socket finished its handshake."""
        self.peers.add(peer)
        self.stats.connections += 1

    def detach(self, peer: Peer) -> None:
        """A socket is gone: its sessions stop receiving pushes here."""
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        self.stats.connections -= 1
        assert peer.conn is not None
        for sid in list(peer.conn.sessions):
            if self.peers_by_sid.get(sid) is peer:
                del self.peers_by_sid[sid]

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)  # one sweep for all sockets, not a timer each
            quiet = time.monotonic() - self.ping_interval_s
            for peer in list(self.peers):
                if peer.last_rx < quiet:
                    peer.ping()

    def on_message(self, peer: Peer, message: str | bytes) -> Any:
        """Handle one message; returns an awaitable when it must wait for Redis."""
        assert peer.conn is not None
        self.stats.frames += 1
        frame, err = peer.conn.receive(message)
        if err is not None:
            peer.send(err)
            return None
        assert frame is not None
        kind = frame["t"]
        if kind == "events":
            self._on_events(peer, frame)
        elif kind == "hello":
            return self._on_hello(peer, frame)
        elif kind == "consent":
            return self._on_consent(peer, frame)
        else:
            peer.send({"t": "pong", "now": int(time.time() * 1000)})
        return None

    async def _on_consent(self, peer: Peer, frame: dict[str, Any]) -> None:
        assert peer.conn is not None
        cursor, reply = peer.conn.consent(frame)
        if cursor is not None:
            await self.store.record_consent(cursor.sid, cursor.site, cursor.consent)
            if "analytics" not in cursor.consent:
                self.peers_by_sid.pop(cursor.sid, None)
                # Behind this session's events still on their way to Redis, so
                # the shard drops the session after its last events, not before.
                self._appends.put_nowait((Forget(cursor.sid, cursor.site), None))
        peer.send(reply)

    async def _on_hello(self, peer: Peer, frame: dict[str, Any]) -> None:
        assert peer.conn is not None
        req = peer.conn.hello(frame)
        if not isinstance(req, HelloRequest):
            peer.send(req)
            return
        info = await self.store.session_info(peer.conn.site, req.sid)
        reply = peer.conn.accept_hello(req, info.known, info.seq)
        if reply["t"] != "welcome":
            peer.send(reply)
            return
        # Atomic in Redis: of two hellos racing for a fresh id (two sites, or two
        # tabs without a token) one creates the session and the other is refused.
        status, seq = await self.store.claim(
            req.sid, peer.conn.site, req.consent, req.token is not None
        )
        if status != "ok":
            peer.conn.sessions.pop(req.sid, None)
            why = (
                "this session belongs to another site"
                if status == "other_site"
                else "this session exists: resuming needs its token"
            )
            peer.send(error("bad_token", why, sid=req.sid))
            return
        if seq != info.seq:  # another connection appended meanwhile: start from what is durable
            cursor = peer.conn.sessions[req.sid]
            cursor.acked, cursor.next = seq, seq + 1
            reply["acked"] = seq
        if peer not in self.peers:
            return  # the socket went away while Redis answered
        previous = self.peers_by_sid.get(req.sid)
        if previous is not None and previous is not peer and previous.conn is not None:
            # The newest connection wins: a reloaded tab, or a resume after a drop.
            previous.conn.sessions.pop(req.sid, None)
            previous.close(CLOSE_TAKEN_OVER, "session resumed on another connection")
        self.peers_by_sid[req.sid] = peer
        peer.send(reply)

    def _on_events(self, peer: Peer, frame: dict[str, Any]) -> None:
        assert peer.conn is not None
        if self._pending_events >= self.max_pending:
            sid = frame.get("sid")
            peer.send(error("overloaded", "server busy: resend later", sid=sid))
            return
        plan = peer.conn.events(frame, int(time.time() * 1000))
        if isinstance(plan, dict):
            peer.send(plan)
            return
        for reply in plan.replies:
            peer.send(reply)
        if plan.last:
            self._appends.put_nowait((AppendSink(peer), plan))

    # -- beacon (called by the HTTP server) ----------------------------------------

    async def beacon(self, site: Site, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Take a page-hide flush through the same checks and durable append as the socket.

        A beacon must name a session that this site created, whose stored
        consent includes analytics, and carry its resume token: it can add to
        a session, never start one or grant consent. Each beacon arrives
        without a socket, so its rate limits are kept here, per session and
        per site, with the same events/s as a connection's.
        """
        status, reply = await self._beacon(site, body)
        if "code" in reply:
            self.stats.error(reply["code"])
        for err in reply.get("errors", ()):
            self.stats.error(err.get("code", "bad_event"))
        return status, reply

    def _beacon_allowed(self, site: str, sid: str, events: Any) -> bool:
        """Take the beacon's events from its session's and its site's buckets."""
        n = max(1, len(events)) if isinstance(events, list) else 1
        now = time.monotonic()
        buckets = self._beacon_buckets
        allowed = True
        for key, scale in ((f"{site}|{sid}", 1.0), (site, BEACON_SITE_RATE)):
            bucket = buckets.pop(key, None)  # re-inserted: the dict stays in order of last use
            if bucket is None:
                lim = self.limits
                bucket = TokenBucket(lim.events_per_s * scale, lim.burst * scale, now)
            buckets[key] = bucket
            allowed = allowed and bucket.take(n, now)
        while len(buckets) > BEACON_BUCKETS:
            del buckets[next(iter(buckets))]
        return allowed

    async def _beacon(self, site: Site, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        conn = Connection(site.key, self.secret, self.limits)
        peer = Peer(None, conn)
        token = body.get("token")
        if not isinstance(token, str):
            return 403, error("bad_token", "a beacon needs its session's resume token")
        # The consent here only passes the local checks; the stored one is used below.
        req = conn.hello(
            {"t": "hello", "sid": body.get("sid"), "token": token, "consent": ["analytics"]}
        )
        if not isinstance(req, HelloRequest):
            return (403 if req["code"] in ("consent_required", "bad_token") else 400), req
        info = await self.store.session_info(site.key, req.sid)
        if not info.known:  # keys are scoped by site: another site's session is not found
            return 403, error("unknown_session", "no such session for this site", sid=req.sid)
        if "analytics" not in info.consent:
            return 403, error(
                "consent_required", "no analytics consent: nothing may be collected", sid=req.sid
            )
        if not self._beacon_allowed(site.key, req.sid, body.get("events")):
            return 429, error("rate_limited", "too many beacon events: resend later", sid=req.sid)
        req = HelloRequest(req.sid, token, info.consent)
        frame = {
            "t": "events",
            "sid": req.sid,
            "now": body.get("now"),
            "events": body.get("events"),
        }
        seq = info.seq
        # A beacon can race the page's own socket, or another beacon, for the same
        # session: when the store says it already holds more, plan again from there.
        for _attempt in range(3):
            if _attempt:
                seq = (await self.store.session_info(site.key, req.sid)).seq
            conn.sessions.pop(req.sid, None)
            welcome = conn.accept_hello(req, True, seq)
            if welcome["t"] != "welcome":
                return 403, welcome
            # The session's own bucket was taken above; the connection's must not refuse again.
            conn.bucket = TokenBucket(float("inf"), float("inf"), time.monotonic())
            plan = conn.events(frame, int(time.time() * 1000))
            if isinstance(plan, dict):
                return 400, plan
            errors = [r for r in plan.replies if r["t"] == "error"]
            gap = any(r.get("code") == "sequence_gap" for r in errors)
            if gap and not plan.last and _attempt < 2:
                # The events before ours may be on their way (the page's other
                # beacon, or its socket's last frames): wait for the next append
                # round, briefly (the page is gone; nobody waits on this reply).
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self._round_done.wait(), 0.5 if self._append_busy else 0.25
                    )
                continue
            if not plan.last:
                return 200, {"acked": conn.sessions[req.sid].acked, "errors": errors}
            future = asyncio.get_running_loop().create_future()
            self._appends.put_nowait((AppendSink(peer, future), plan))
            reply = await future
            if reply["t"] == "ack":
                return 200, {"acked": reply["seq"], "errors": errors}
            if reply.get("code") != "sequence_gap":
                return 503, {"acked": seq, "errors": errors + [reply]}
        return 409, {"acked": seq, "errors": errors + [reply]}

    # -- append pipeline ------------------------------------------------------------

    @property
    def _appending(self) -> bool:
        """A round has begun (gathering, or on its way to Redis) and is not settled yet."""
        return self._rounds_open > 0

    @property
    def _append_busy(self) -> bool:
        return self._appending or not self._appends.empty()

    async def _append_loop(self) -> None:
        """Gather frames into rounds and send each round to Redis, up to ROUNDS_IN_FLIGHT at once.

        A round does not wait for the one before it to come back: Redis runs
        them in the order they were sent, and :meth:`_settle_loop` handles
        their replies in that order too. (One round at a time, a frame waited
        on average 3.8 of its ~11 ms to an ack for the round before its own,
        with one gateway at 10,000 events/s. Pipelined, the mean frame-to-ack
        did not fall, since the one event loop, not Redis, paces the rounds,
        but interventions came sooner: BENCHMARKS.md.)
        """
        while True:
            batch = [await self._appends.get()]
            await self._slots.acquire()  # bounded: at most ROUNDS_IN_FLIGHT rounds out
            self._rounds_open += 1
            outcome: Any = None
            runs: list[Append] = []
            appends: list[tuple[Any, EventsPlan]] = []
            try:
                if self.append_window_s:
                    await asyncio.sleep(self.append_window_s)  # gather the next few ms' frames
                while not self._appends.empty():
                    batch.append(self._appends.get_nowait())
                appends = [(sink, plan) for sink, plan in batch if plan is not None]
                runs = [self._run_of(sink, plan) for sink, plan in appends]
                if runs:
                    outcome = await self.store.start_append(runs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # cannot reach Redis, or a bug: settled as failed
                outcome = exc
            # Always handed on, so the settle loop frees the round's slot.
            self._rounds.put_nowait((batch, appends, runs, outcome))

    def _run_of(self, sink: AppendSink, plan: EventsPlan) -> Append:
        """The store's run for a plan; events that cannot be packed consume their numbers.

        Validation bounds every value to what msgpack and Redis store, so this
        is a second line: one frame that slipped through must not stop the
        round of every other visitor. Its events are refused, each with an
        error frame, as validation would have refused them.
        """
        try:
            return Append.of(sink.peer.conn.site, plan.sid, plan.first, plan.last, plan.append)
        except (ValueError, TypeError, OverflowError) as exc:
            log.error("events of one frame could not be packed (%s): refused", type(exc).__name__)
            for ev in plan.append:
                sink.peer.send(
                    error("bad_event", "event could not be stored", sid=plan.sid, seq=ev["seq"])
                )
            plan.append = []
            return Append.of(sink.peer.conn.site, plan.sid, plan.first, plan.last, [])

    async def _settle_loop(self) -> None:
        """Acknowledge (or refuse) each round's frames once Redis has answered, in send order."""
        while True:
            batch, appends, runs, outcome = await self._rounds.get()
            try:
                await self._settle(batch, appends, runs, outcome)
            finally:
                self._rounds_open -= 1
                self._slots.release()
                # Wake whoever waits for this round, and arm a fresh event for the next.
                self._round_done.set()
                self._round_done = asyncio.Event()

    async def _settle(self, batch: list, appends: list, runs: list[Append], outcome: Any) -> None:
        try:
            if isinstance(outcome, Exception):
                raise outcome
            results = await outcome if runs else []
        except Exception as exc:  # Redis down: nothing was acked, the clients resend
            log.error("append of %d runs failed: %s", len(runs), exc)
            results = [(-1, False)] * len(runs)
        if len(results) != len(runs):  # never acknowledge what the reply does not cover
            log.error("append reply has %d results for %d runs", len(results), len(runs))
            results = [(-1, False)] * len(runs)
        self.stats.append_rounds += 1
        outcomes = iter(zip(runs, results, strict=True))
        for sink, plan in batch:  # in arrival order: a withdrawal goes behind earlier events
            if plan is None:
                self._forget(sink)
                continue
            run, (durable, ok) = next(outcomes)
            try:
                self._settle_one(sink, plan, run, durable, ok)
            except Exception as exc:  # one frame's bug must not leave the others unsettled
                self.loops.failed(self.loops.loops["settle"], exc, time.monotonic())
        done = time.perf_counter()
        self.stats.ack_ms += sum(done - sink.since for sink, _ in appends) * 1000.0
        self.stats.acks += len(appends)

    def _settle_one(
        self, sink: AppendSink, plan: EventsPlan, run: Append, durable: int, ok: bool
    ) -> None:
        conn = sink.peer.conn
        if ok:
            reply = conn.appended(plan.sid, plan.last)
            self.stats.events_acked += len(plan.append)
            if plan.append:
                self._to_shard(plan, run.payload, conn)
        else:
            code = "sequence_gap" if durable >= 0 else "overloaded"
            reply = conn.append_failed(plan.sid, durable, code)
        if sink.future is not None:
            if not sink.future.done():
                sink.future.set_result(reply)
        elif reply is not None:
            sink.peer.send(reply)

    # -- shard dispatch --------------------------------------------------------------

    # A shard's pending items: (sid, site, consent, payload, events, op), ``op`` as
    # in actors.core.host: a withdrawal is said as one, never read from a consent.

    def _forget(self, forget: Forget) -> None:
        """Queue the shard's forget of a session, behind that session's events."""
        i = self.ring.shard_of(forget.sid)
        self._pending[i].append((forget.sid, forget.site, (), b"", 0, FORGET))
        self._wake[i].set()

    def _to_shard(self, plan: EventsPlan, payload: bytes, conn: Connection) -> None:
        """Queue a durable run of events for its shard.

        With the consent the frame was validated with, not the connection's
        current one: a resume elsewhere may have taken the session off this
        connection while its events were on their way to Redis.
        """
        i = self.ring.shard_of(plan.sid)
        self._pending[i].append(
            (plan.sid, conn.site, plan.consent, payload, len(plan.append), EVENTS)
        )
        self._pending_events += len(plan.append)
        self._wake[i].set()

    async def _shard_loop(self, i: int) -> None:
        while True:
            await self._wake[i].wait()
            if self.window_s:
                await asyncio.sleep(self.window_s)  # gather what arrives in the next few ms
            self._wake[i].clear()
            items, self._pending[i] = self._pending[i], []
            if not items:
                continue
            n = sum(it[4] for it in items)
            self.stats.batch_events.append(n)
            if len(self.stats.batch_events) > 10_000:
                del self.stats.batch_events[:5_000]
            t_call = time.perf_counter()
            try:
                results = await self._call_shard(i, items)
            finally:  # however the call ends, these events no longer wait for the shard
                self._pending_events -= n
            self.stats.shard_call_ms += (time.perf_counter() - t_call) * 1000.0
            if results is None:
                continue
            self.stats.shard_calls += 1
            for sid, seqs, _scores, frames in results:
                try:
                    self._deliver(sid, seqs, frames)
                except Exception as exc:  # one session's bug must not cost the others theirs
                    self.loops.failed(self.loops.loops[f"shard{i}"], exc, time.monotonic())

    def _deliver(self, sid: str, seqs: list[int], frames: list[dict[str, Any]]) -> None:
        """Push a session's interventions from a shard reply and note how far it is scored."""
        self.stats.events_scored += len(seqs)
        peer = self.peers_by_sid.get(sid)
        for f in frames:
            self.stats.interventions += 1
            if peer is not None:
                peer.send(f)
        cursor = peer.conn.sessions.get(sid) if peer is not None else None
        if cursor is not None and seqs:
            cursor.scored = max(cursor.scored, seqs[-1])
        if self._scored_waiters and seqs:
            self._wake_scored(sid, seqs[-1])

    def _wake_scored(self, sid: str, seq: int) -> None:
        waiters = self._scored_waiters.get(sid)
        if not waiters:
            return
        keep = []
        for want, fut in waiters:
            if seq >= want:
                if not fut.done():
                    fut.set_result(seq)
            else:
                keep.append((want, fut))
        if keep:
            self._scored_waiters[sid] = keep
        else:
            del self._scored_waiters[sid]

    async def wait_scored(self, sid: str, seq: int, timeout: float = 30.0) -> None:
        """Resolve once event ``seq`` of ``sid`` has been scored and its interventions queued.

        Knows the past only for sessions connected to this gateway. For tests and tools that must know processing finished (for instance
        to assert that a calm journey got *no* intervention).
        """
        peer = self.peers_by_sid.get(sid)
        cursor = peer.conn.sessions.get(sid) if peer is not None else None
        if cursor is not None and cursor.scored >= seq:
            return
        fut = asyncio.get_running_loop().create_future()
        self._scored_waiters.setdefault(sid, []).append((seq, fut))
        await asyncio.wait_for(fut, timeout)

    async def _call_shard(self, i: int, items: list[tuple]) -> list[tuple] | None:
        """Hand a shard a batch over its link, retrying while Ray restarts it.

        The batch is durable meanwhile; a resent batch's events that the shard
        already applied are skipped by sequence number.
        """
        deadline = time.monotonic() + SHARD_RETRY_S
        delay = 0.05
        packed = pack_batch([(it[5], it[0], it[1], it[2], it[3]) for it in items])
        while True:
            try:
                return msgpack.unpackb(await self.links[i].call(packed, time.time()))
            except ShardFailed as exc:  # a bug in the shard, not a restart: retrying won't help
                log.error(
                    "shard %d failed a batch of %d events: %s", i, sum(it[4] for it in items), exc
                )
                return None
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.ActorUnavailableError,
                LinkDown,
            ) as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "shard %d unavailable for %.0f s; %d events stay in the log only: %s",
                        i,
                        SHARD_RETRY_S,
                        sum(it[4] for it in items),
                        exc,
                    )
                    return None
                self.stats.shard_retries += 1
                log.warning("shard %d call failed (%s); retrying", i, type(exc).__name__)
                await asyncio.sleep(delay)  # backing off while Ray restarts the actor
                delay = min(delay * 2, 1.0)

    # -- updates from the shards (LLM text, recommendations) ----------------------------

    async def _push_loop(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.push(self.id))
        try:
            async for msg in pubsub.listen():
                if msg.get("type") != "message":
                    continue
                try:
                    frame = msgpack.unpackb(msg["data"])
                except (ValueError, msgpack.ExtraData):
                    continue
                peer = self.peers_by_sid.get(frame.get("sid"))
                if peer is not None:
                    self.stats.updates += 1
                    peer.send(frame)
        finally:
            await pubsub.aclose()
