"""The WebSocket gateway: browsers in, durable appends, shard batches, interventions out.

The I/O shell around :class:`serve.protocol.Connection`. Per connection it
reads frames and answers in order; across connections it runs two pipelines
that batch whatever arrived while the previous round trip was in flight:

* the **append pipeline** makes events durable in Redis (one pipelined round
  trip for all connections) and only then acknowledges them;
* one **dispatcher per shard** hands that shard every durable event that
  arrived since its last call, in one Ray call, and pushes back the
  interventions it decides. One call in flight per shard keeps each
  session's events in order; a crashed shard's batch is retried once Ray
  has restarted it (the events are durable, so nothing is lost).

Richer content (LLM text, recommendations) reaches the gateway later on a
Redis pub/sub channel of its own and goes out as ``update`` frames.

Backpressure: when the shards fall behind by more than ``max_pending``
events, new frames are refused with ``overloaded`` (not acknowledged: the
client resends later) instead of queueing without bound; a client that does
not read its socket is disconnected rather than buffered forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import ray
import websockets
from websockets.asyncio.server import ServerConnection

from actors.placement import HashRing
from actors.sites import Site
from cluster.keys import Keys
from cluster.redis_server import async_client
from serve.protocol import (
    CLOSE_HELLO_TIMEOUT,
    CLOSE_TAKEN_OVER,
    Connection,
    EventsPlan,
    HelloRequest,
    Limits,
    error,
)
from serve.store import Append, EventStore

log = logging.getLogger("lifeline.gateway")

OUTBOX_FRAMES = 1024  # frames queued for one slow client before it is disconnected
SHARD_RETRY_S = 120.0  # how long a batch is retried while Ray restarts a shard


@dataclass
class Stats:
    """Counters an operator (and the load test) reads from /metrics."""

    connections: int = 0
    frames: int = 0
    events_acked: int = 0
    events_scored: int = 0
    errors: int = 0
    interventions: int = 0
    updates: int = 0
    overloaded: int = 0
    shard_calls: int = 0
    shard_retries: int = 0
    append_rounds: int = 0
    shard_call_ms: float = 0.0  # summed round trips of shard calls
    batch_events: list[int] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "batch_events"}
        b = self.batch_events[-1000:]
        d["mean_shard_batch"] = sum(b) / len(b) if b else 0.0
        return d


class Peer:
    """One socket: its protocol state and a bounded outbox drained by a writer task."""

    def __init__(self, ws: ServerConnection | None, conn: Connection) -> None:
        self.ws = ws
        self.conn = conn
        self.outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue(OUTBOX_FRAMES)
        self.writer: asyncio.Task | None = None

    def send(self, frame: dict[str, Any]) -> None:
        if self.ws is None:
            return
        try:
            self.outbox.put_nowait(self.conn.encode(frame))
        except asyncio.QueueFull:
            # A client that does not read is dropped, not buffered without bound.
            self.conn.close = (1008, "client too slow to read its frames")
            if self.ws.transport is not None:
                self.ws.transport.abort()

    async def write_loop(self) -> None:
        assert self.ws is not None
        while True:
            msg = await self.outbox.get()
            if msg is None:
                return
            try:
                await self.ws.send(msg)
            except websockets.ConnectionClosed:
                return


class AppendSink:
    """Where an append's outcome goes: a socket (ack it) or a beacon request (await it)."""

    def __init__(self, peer: Peer, future: asyncio.Future | None = None) -> None:
        self.peer = peer
        self.future = future


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
        max_pending: int = 50_000,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.keys = Keys(prefix)
        self.redis = async_client(redis_url)
        self.store = EventStore(self.redis, self.keys)
        self.shards = shards
        self.ring = HashRing(len(shards))
        self.sites = sites
        self.secret = secret.encode()
        self.limits = limits or Limits()
        self.window_s = batch_window_ms / 1000.0
        self.max_pending = max_pending
        self.stats = Stats()
        self.peers_by_sid: dict[str, Peer] = {}
        self._appends: asyncio.Queue[tuple[AppendSink, EventsPlan]] = asyncio.Queue()
        self._pending: list[list[tuple]] = [[] for _ in shards]
        self._pending_events = 0
        self._wake = [asyncio.Event() for _ in shards]
        self._appending = False
        self._round_done = asyncio.Event()
        self._scored_waiters: dict[str, list[tuple[int, asyncio.Future]]] = {}
        self._tasks: list[asyncio.Task] = []
        self._server: websockets.asyncio.server.Server | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; with ``reuse_port`` several gateway processes share one port."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._append_loop())]
        self._tasks += [loop.create_task(self._shard_loop(i)) for i in range(len(self.shards))]
        self._tasks.append(loop.create_task(self._push_loop()))
        self._server = await websockets.serve(
            self._handle,
            host,
            port,
            process_request=self._check_request,
            max_size=self.limits.hard_frame_bytes,
            compression=None,  # frames are small msgpack; deflate costs more CPU than it saves
            ping_interval=20,
            ping_timeout=20,
            reuse_port=reuse_port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        from cluster.gc_tuning import tune_for_throughput

        tune_for_throughput()
        log.info("gateway %s listening on ws://%s:%d/ws", self.id, host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.redis.aclose()

    # -- handshake --------------------------------------------------------------

    def site_for(self, query: str, origin: str | None) -> Site | str:
        """The site a request belongs to, or why it is refused."""
        keys = parse_qs(query).get("site")
        site = self.sites.get(keys[0]) if keys else None
        if site is None:
            return "unknown site key"
        if not site.origin_allowed(origin):
            return f"origin {origin!r} not allowed for site {site.key}"
        return site

    async def _check_request(self, connection: ServerConnection, request: Any):
        parts = urlsplit(request.path)
        if parts.path != "/ws":
            return connection.respond(404, "not found: the WebSocket endpoint is /ws\n")
        site = self.site_for(parts.query, request.headers.get("Origin"))
        if isinstance(site, str):
            log.warning("refused handshake: %s", site)
            return connection.respond(403, site + "\n")
        return None

    # -- one socket ---------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        site = self.site_for(urlsplit(ws.request.path).query, ws.request.headers.get("Origin"))
        assert isinstance(site, Site)  # _check_request refused the others
        peer = Peer(ws, Connection(site.key, self.secret, self.limits))
        peer.writer = asyncio.get_running_loop().create_task(peer.write_loop())
        self.stats.connections += 1
        hello_timer = asyncio.get_running_loop().call_later(
            self.limits.hello_timeout_s, self._hello_timeout, peer
        )
        try:
            async for message in ws:
                await self._on_message(peer, message)
                if peer.conn.close:
                    await self._close(peer, *peer.conn.close)
                    break
                if peer.conn.sessions and hello_timer is not None:
                    hello_timer.cancel()
                    hello_timer = None
        except websockets.ConnectionClosed:
            pass
        finally:
            if hello_timer is not None:
                hello_timer.cancel()
            self.stats.connections -= 1
            for sid in list(peer.conn.sessions):
                if self.peers_by_sid.get(sid) is peer:
                    del self.peers_by_sid[sid]
            if peer.writer is not None:
                peer.writer.cancel()

    def _hello_timeout(self, peer: Peer) -> None:
        if not peer.conn.sessions:
            peer.conn.close = (CLOSE_HELLO_TIMEOUT, "no hello in time")
            asyncio.get_running_loop().create_task(
                self._close(peer, CLOSE_HELLO_TIMEOUT, "no hello in time")
            )

    async def _close(self, peer: Peer, code: int, reason: str) -> None:
        if peer.ws is None:
            return
        # Let queued frames (the error that explains the close) go out first.
        writer = peer.writer
        if writer is not None and not writer.done():
            with contextlib.suppress(asyncio.QueueFull):
                peer.outbox.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writer), 1.0)
        await peer.ws.close(code, reason)

    async def _on_message(self, peer: Peer, message: str | bytes) -> None:
        self.stats.frames += 1
        frame, err = peer.conn.receive(message)
        if err is not None:
            self.stats.errors += 1
            peer.send(err)
            return
        assert frame is not None
        kind = frame["t"]
        if kind == "events":
            await self._on_events(peer, frame)
        elif kind == "hello":
            await self._on_hello(peer, frame)
        elif kind == "consent":
            cursor, reply = peer.conn.consent(frame)
            if cursor is not None:
                await self.store.record_consent(cursor.sid, cursor.site, cursor.consent)
                if "analytics" not in cursor.consent:
                    self.peers_by_sid.pop(cursor.sid, None)
            peer.send(reply)
        else:
            peer.send({"t": "pong", "now": int(time.time() * 1000)})

    async def _on_hello(self, peer: Peer, frame: dict[str, Any]) -> None:
        req = peer.conn.hello(frame)
        if not isinstance(req, HelloRequest):
            self.stats.errors += 1
            peer.send(req)
            return
        known, seq = await self.store.session_info(req.sid)
        reply = peer.conn.accept_hello(req, known, seq)
        if reply["t"] != "welcome":
            self.stats.errors += 1
            peer.send(reply)
            return
        await self.store.record_hello(req.sid, peer.conn.site, req.consent)
        previous = self.peers_by_sid.get(req.sid)
        if previous is not None and previous is not peer:
            # The newest connection wins: a reloaded tab, or a resume after a drop.
            previous.conn.sessions.pop(req.sid, None)
            asyncio.get_running_loop().create_task(
                self._close(previous, CLOSE_TAKEN_OVER, "session resumed on another connection")
            )
        self.peers_by_sid[req.sid] = peer
        peer.send(reply)

    async def _on_events(self, peer: Peer, frame: dict[str, Any]) -> None:
        if self._pending_events >= self.max_pending:
            self.stats.overloaded += 1
            peer.send(error("overloaded", "server busy: resend later", sid=frame.get("sid")))
            return
        plan = peer.conn.events(frame, int(time.time() * 1000))
        if isinstance(plan, dict):
            self.stats.errors += 1
            peer.send(plan)
            return
        for reply in plan.replies:
            if reply["t"] == "error":
                self.stats.errors += 1
            peer.send(reply)
        if plan.last:
            self._appends.put_nowait((AppendSink(peer), plan))

    # -- beacon (called by the HTTP server) ----------------------------------------

    async def beacon(self, site: Site, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Take a page-hide flush through the same checks and durable append as the socket."""
        peer = Peer(None, Connection(site.key, self.secret, self.limits))
        stored_consent = await self.redis.hget(self.keys.session(str(body.get("sid"))), "consent")
        consent = ["necessary", "analytics"]
        if stored_consent:
            consent = json.loads(stored_consent)
        req = peer.conn.hello(
            {"t": "hello", "sid": body.get("sid"), "token": body.get("token"), "consent": consent}
        )
        if not isinstance(req, HelloRequest):
            return (403 if req["code"] in ("consent_required", "bad_token") else 400), req
        frame = {
            "t": "events",
            "sid": req.sid,
            "now": body.get("now"),
            "events": body.get("events"),
        }
        # A beacon can race the page's own socket, or another beacon, for the same
        # session: when the store says it already holds more, plan again from there.
        for _attempt in range(3):
            known, seq = await self.store.session_info(req.sid)
            peer.conn.sessions.pop(req.sid, None)
            welcome = peer.conn.accept_hello(req, known, seq)
            if welcome["t"] != "welcome":
                return 403, welcome
            if not known:
                await self.store.record_hello(req.sid, site.key, req.consent)
            plan = peer.conn.events(frame, int(time.time() * 1000))
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
                return 200, {"acked": peer.conn.sessions[req.sid].acked, "errors": errors}
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
    def _append_busy(self) -> bool:
        return self._appending or not self._appends.empty()

    async def _append_loop(self) -> None:
        while True:
            batch = [await self._appends.get()]
            self._appending = True
            while not self._appends.empty():
                batch.append(self._appends.get_nowait())
            runs = [Append(plan.sid, plan.first, plan.last, plan.append) for _, plan in batch]
            try:
                results = await self.store.append_many(runs)
            except Exception as exc:  # Redis down: nothing was acked, the clients resend
                log.error("append of %d runs failed: %s", len(runs), exc)
                results = [(-1, False)] * len(runs)
            self.stats.append_rounds += 1
            for (sink, plan), (durable, ok) in zip(batch, results, strict=True):
                conn = sink.peer.conn
                if ok:
                    reply = conn.appended(plan.sid, plan.last)
                    self.stats.events_acked += len(plan.append)
                    if plan.append:
                        self._to_shard(plan, conn)
                else:
                    code = "sequence_gap" if durable >= 0 else "overloaded"
                    reply = conn.append_failed(plan.sid, durable, code)
                if sink.future is not None:
                    if not sink.future.done():
                        sink.future.set_result(reply)
                elif reply is not None:
                    sink.peer.send(reply)
            self._appending = False
            # Wake whoever waits for this round, and arm a fresh event for the next.
            self._round_done.set()
            self._round_done = asyncio.Event()

    # -- shard dispatch --------------------------------------------------------------

    def _to_shard(self, plan: EventsPlan, conn: Connection) -> None:
        cursor = conn.sessions.get(plan.sid)
        consent = cursor.consent if cursor is not None else []
        i = self.ring.shard_of(plan.sid)
        self._pending[i].append((plan.sid, conn.site, consent, plan.append))
        self._pending_events += len(plan.append)
        self._wake[i].set()

    async def _shard_loop(self, i: int) -> None:
        shard = self.shards[i]
        while True:
            await self._wake[i].wait()
            if self.window_s:
                await asyncio.sleep(self.window_s)  # gather what arrives in the next ms or two
            self._wake[i].clear()
            items, self._pending[i] = self._pending[i], []
            if not items:
                continue
            n = sum(len(it[3]) for it in items)
            self.stats.batch_events.append(n)
            if len(self.stats.batch_events) > 10_000:
                del self.stats.batch_events[:5_000]
            t_call = time.perf_counter()
            results = await self._call_shard(i, shard, items)
            self.stats.shard_call_ms += (time.perf_counter() - t_call) * 1000.0
            self._pending_events -= n
            if results is None:
                continue
            self.stats.shard_calls += 1
            for sid, seqs, _scores, frames in results:
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

    async def _call_shard(self, i: int, shard: Any, items: list[tuple]) -> list[tuple] | None:
        """Call a shard, retrying while Ray restarts it; the batch is durable meanwhile."""
        deadline = time.monotonic() + SHARD_RETRY_S
        delay = 0.05
        while True:
            try:
                return await shard.handle.remote(items, self.id)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "shard %d unavailable for %.0f s; %d events stay in the log only: %s",
                        i,
                        SHARD_RETRY_S,
                        sum(len(it[3]) for it in items),
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
