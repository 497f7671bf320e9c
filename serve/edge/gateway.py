"""The WebSocket gateway: browsers in, durable appends, shard batches, interventions out.

:class:`Gateway` owns the state the parts share (the sites, the sockets and
the sessions they carry, the counters, the background loops) and wires them:

* :mod:`serve.edge.peer`: one socket (:class:`~serve.edge.peer.Peer`), the
  handshake, frames in and out, keepalive; it hands each message to
  :meth:`Gateway.on_message`;
* :mod:`serve.edge.pipeline`: events made durable in Redis and then
  acknowledged, durable events batched to their shards, interventions pushed
  back;
* :mod:`serve.edge.beacon`: a page's last events by ``POST /beacon``,
  through the same checks and the same append as a socket's.
* :mod:`serve.chat.relay`: the help chat's frames, applied to the chat's
  record in Redis, answers streamed from the ChatAssistant deployment.

Hellos and consent changes are handled here, since they decide which socket
carries which session. Richer content (LLM text, recommendations) reaches
the gateway later on a Redis pub/sub channel of its own and goes out as
``update`` frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from ssl import SSLContext
from typing import Any
from urllib.parse import parse_qs

import msgpack
import ray

from actors.core.host import Forget
from actors.core.placement import HashRing
from actors.core.sites import Site
from actors.shard.link import LinkTLS, ShardLink
from cluster.keys import Keys
from cluster.loops import Supervisor
from cluster.redis_client import redis_client
from cluster.sealing import MasterKeys
from cluster.shard_set import ShardSet, read_members
from cluster.site_rules import SiteRules
from cluster.tokens import Keyring
from cluster.tracing import Tracing
from serve.chat.relay import ChatRelay
from serve.edge import metrics
from serve.edge.beacon import Beacons
from serve.edge.ip_limits import IpLimits
from serve.edge.peer import CLOSE_GOING_AWAY, Peer
from serve.edge.pipeline import Pipeline
from serve.edge.protocol import (
    CHAT_FRAMES,
    CLAIM_REFUSALS,
    CLOSE_TAKEN_OVER,
    HelloRequest,
    Limits,
    TokenBucket,
    error,
)
from serve.edge.stats import Stats
from serve.edge.store import EventStore
from serve.rights.erasure import Eraser, parse_announcement
from serve.rights.erasure import announce as rights_announce

log = logging.getLogger("lifeline.gateway")

OUTBOX_BYTES = 1 << 20  # unsent bytes one slow client may hold before it is disconnected
PING_INTERVAL_S = 20.0  # a socket silent this long is pinged; silent for two, dropped
HANDSHAKE_TIMEOUT_S = 10.0  # from TCP accept to a complete HTTP upgrade request
HALF_OPEN_PER_IP = 256  # sockets of one address still in their handshake, at once
FORGET_WAIT_S = 10.0  # an erasure waits this long at most for the shards to drop its sessions


class Gateway:
    """Accepts sockets for the configured sites and moves their events through the system."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        shards: list[Any],
        sites: dict[str, Site],
        secret: str | Keyring,
        limits: Limits | None = None,
        batch_window_ms: float = 0.0,
        append_window_ms: float = 0.0,
        max_pending: int = 50_000,
        ping_interval_s: float = PING_INTERVAL_S,
        outbox_bytes: int = OUTBOX_BYTES,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        half_open_per_ip: int = HALF_OPEN_PER_IP,
        ip_limits: IpLimits | None = None,
        site_events_per_s: float = 0.0,
        tracing: Tracing | None = None,
        master: MasterKeys | None = None,
        seal: bool = True,
        shard_names: list[str] | None = None,
        replica_ack: tuple[int, int] | None = None,
    ) -> None:
        """``shard_names``: the shards' Ray actor names, which the ring hashes and the shard
        set in Redis names (cluster/shard_set.py); None: ``shard-{i}``, and the set is not
        followed (tools and tests that hand over anonymous actors).

        ``master``: the event log's master keys (cluster/sealing.py); with ``seal``, each
        session's events are logged sealed under its subject's data key. None: plaintext.

        ``replica_ack``: (replicas, timeout ms): events are acknowledged only once that
        many Redis replicas have them (``WAIT``; README, Redis); None: once the primary has."""
        self.id = uuid.uuid4().hex[:12]
        self.keys = Keys(prefix)
        self.redis = redis_client(redis_url, aio=True, max_connections=64)
        self.store = EventStore(self.redis, self.keys, master, seal, sites, wait=replica_ack)
        self.ring = HashRing(shard_names or len(shards))
        self.shards = dict(zip(self.ring.names, shards, strict=True))  # by name, as the ring
        self.follow_shards = shard_names is not None
        self._tls = LinkTLS.from_env()  # the cluster's, as the shards read it
        self.links = {name: ShardLink(sh, self.id, self._tls) for name, sh in self.shards.items()}
        self.shard_set = ShardSet(self.keys, self.id)
        # The sites file's sites, then the run-time overrides (cluster/site_rules.py):
        # ``sites`` is replaced whole on a change, so a handshake reads one dict.
        self.site_rules = SiteRules(sites, self.keys, log)
        self.sites = sites
        # The resume-token keys (cluster/tokens.py); a bare string is one key with id 1.
        self.secret = secret if isinstance(secret, Keyring) else Keyring("1", secret.encode())
        self.limits = limits or Limits()
        self.ping_interval_s = ping_interval_s
        self.outbox_bytes = outbox_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.half_open_per_ip = half_open_per_ip
        self._half_open: dict[str, int] = {}
        self.site_events_per_s = site_events_per_s  # 0: no per-site budget
        self._site_buckets: dict[str, TokenBucket] = {}
        self.ip_limits = (
            ip_limits or IpLimits()
        )  # open sockets and new ones per second, per address
        self.stats = Stats()
        self.metrics = metrics.GatewayMetrics()
        self.loops = Supervisor(log, f"gateway {self.id}")
        self.stats.loop_failures = self.loops.counts
        self.peers_by_sid: dict[str, Peer] = {}
        self.pipeline = Pipeline(
            self.store,
            self.ring,
            self.links,
            self.stats,
            self.loops,
            self.peers_by_sid,
            window_s=batch_window_ms / 1000.0,
            append_window_s=append_window_ms / 1000.0,
            max_pending=max_pending,
            tracing=tracing,
            metrics=self.metrics,
        )
        # Bound once: on_message runs per frame, and an events frame goes straight in.
        self._admit = self.pipeline.admit
        self.beacons = Beacons(
            self.store, self.pipeline, self.stats, self.limits, self.secret, self.site_bucket
        )
        self.eraser = Eraser(self.redis, self.keys, self.drop_sessions)
        # The help chat (serve/chat/relay.py); its ``assistant`` is the ChatAssistant
        # deployment's handle when one is deployed (cluster/stack.py), else fallbacks.
        self.chat = ChatRelay(self)
        self._server: asyncio.Server | None = None
        self.peers: set[Peer] = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------

    async def start(
        self, host: str, port: int, reuse_port: bool = False, ssl: SSLContext | None = None
    ) -> int:
        """Listen; with ``reuse_port`` several gateway processes share one port; with ``ssl``, wss."""
        loop = asyncio.get_running_loop()
        # The overrides stored before this gateway started are in force from its first socket.
        self.sites = await self.site_rules.refresh(self.redis) or self.sites
        self.store.sites = self.sites
        # Supervised: a loop that fails is restarted, logged, counted and shown by health.
        self.loops.start("append", self.pipeline.append_loop)
        self.loops.start("settle", self.pipeline.settle_loop)
        for name in self.ring.names:
            self._start_shard_loop(name)
        if self.follow_shards:
            version, names = await read_members(self.redis, self.keys)
            if names and names != self.ring.names:  # changed since we were told the names
                await self._switch(names)
            self.shard_set.version = version
            self.loops.start("shards", lambda: self.shard_set.loop(self.redis, self._switch))
        self.loops.start("push", self._push_loop)
        self.loops.start("chat", self._chat_loop)
        self.loops.start("rights", self._rights_loop)
        self.loops.start("keepalive", self._keepalive_loop)
        self.loops.start("metrics", self._metrics_loop)
        self.loops.start("sites", lambda: self.site_rules.loop(self.redis, self._sites_changed))
        self._server = await loop.create_server(
            lambda: Peer(self), host, port, reuse_port=reuse_port, backlog=2048, ssl=ssl
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
        await self.chat.stop()
        for link in self.links.values():
            link.close()
        self.store.close()
        await self.redis.aclose()
        if self.pipeline.tracing is not None:  # the last frames' spans, before the process ends
            await asyncio.to_thread(self.pipeline.tracing.flush, 5.0)

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

    # -- the shard set (cluster/shard_set.py) -------------------------------------------

    def _start_shard_loop(self, name: str) -> None:
        label = self.pipeline.labels[name]
        self.loops.start(f"shard{label}", lambda: self.pipeline.shard_loop(name))

    async def _end_shard_loop(self, name: str) -> None:
        await self.loops.end(f"shard{self.pipeline.labels[name]}")

    async def _switch(self, names: list[str]) -> None:
        """Follow a new shard set: look up the new actors, then drain and switch the pipeline."""
        if names == self.ring.names:
            return
        shards = {n: self.shards.get(n) for n in names}
        for n in names:
            if shards[n] is None:
                shards[n] = await asyncio.to_thread(ray.get_actor, n)
        links = {n: self.links.get(n) or ShardLink(shards[n], self.id, self._tls) for n in names}
        old = self.shards

        async def release(name: str) -> None:
            try:
                moved = await old[name].release.remote(names, name)
            except ray.exceptions.RayActorError as exc:  # gone: it holds nothing to hand over
                log.warning("shard %s could not hand over its sessions: %s", name, exc)
                return
            log.warning("shard %s handed over %d sessions", name, moved)

        held = await self.pipeline.switch(
            HashRing(names), links, release, self._start_shard_loop, self._end_shard_loop
        )
        for n, link in self.links.items():
            if n not in links:
                link.close()
        self.shards, self.links, self.ring = shards, links, self.pipeline.ring
        log.warning(
            "gateway %s now on %d shards (%d items held meanwhile)", self.id, len(names), held
        )

    def _sites_changed(self, sites: dict[str, Site]) -> None:
        """New site rules: the next handshake and beacon use them; open sockets stay open."""
        self.sites = sites
        self.store.sites = sites  # retention and consent policy from the next write on

    def site_bucket(self, site: str) -> TokenBucket | None:
        """The site's event budget on this gateway (events/s, burst 2 s of it); None: unlimited.

        One bucket per site, shared by its sockets and beacons: one take per events
        frame (O(1)), like the per-connection bucket.
        """
        if self.site_events_per_s <= 0:
            return None
        bucket = self._site_buckets.get(site)
        if bucket is None:
            rate = self.site_events_per_s
            bucket = self._site_buckets[site] = TokenBucket(rate, 2 * rate, time.monotonic())
        return bucket

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

    def metrics_snapshot(self) -> dict[str, Any]:
        """This gateway's counters and histograms, as it publishes them (serve/edge/metrics.py)."""
        return metrics.snapshot(self.id, self.stats.snapshot(), self.metrics)

    async def _metrics_loop(self) -> None:
        """Publish :meth:`metrics_snapshot` to Redis about once a second, for the console."""
        while True:
            await metrics.publish(self.redis, self.keys, self.metrics_snapshot())
            await asyncio.sleep(metrics.PUBLISH_EVERY_S)

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
            self._admit(peer, frame)
        elif kind == "hello":
            return self._on_hello(peer, frame)
        elif kind == "consent":
            return self._on_consent(peer, frame)
        elif kind in CHAT_FRAMES:
            self.chat.on_frame(peer, frame)  # applied in a task: an answer streams for seconds
        else:
            peer.send({"t": "pong", "now": int(time.time() * 1000)})
        return None

    async def _on_consent(self, peer: Peer, frame: dict[str, Any]) -> None:
        assert peer.conn is not None
        cursor, reply = peer.conn.consent(frame)
        if cursor is not None:
            await self.store.record_consent(cursor.sid, cursor.site, cursor.consent, cursor.via)
            if "analytics" not in cursor.consent:
                self.peers_by_sid.pop(cursor.sid, None)
                # The session's visitor, as its hello named it or (a hello without the
                # vid, on another connection) as the store bound it.
                vid = cursor.vid or await self.store.visitor_of(cursor.site, cursor.sid)
                if vid is not None:
                    # An objection (art. 21): the whole visitor goes, every session,
                    # their profile and records, as an erasure request would take them.
                    keep = self.store.retention(cursor.site)
                    await self.eraser.erase_visitor(cursor.site, vid, keep, "withdrawal")
                else:
                    self.pipeline.withdraw(Forget(cursor.sid, cursor.site))
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
        status, seq, sealer = await self.store.open_session(
            req.sid, peer.conn.site, req.consent, req.token is not None, req.vid
        )
        if status != "ok":
            peer.conn.sessions.pop(req.sid, None)
            peer.send(error(*CLAIM_REFUSALS[status], sid=req.sid))
            return
        cursor = peer.conn.sessions.get(req.sid)
        if cursor is not None:
            cursor.sealer = sealer  # once per hello: every event frame of the session uses it
        if seq != info.seq and cursor is not None:  # another connection appended meanwhile:
            cursor.acked, cursor.next = seq, seq + 1  # start from what is durable
            reply["acked"] = seq
        if peer not in self.peers:
            return  # the socket went away while Redis answered
        previous = self.peers_by_sid.get(req.sid)
        if previous is not None and previous is not peer and previous.conn is not None:
            # The newest connection wins: a reloaded tab, or a resume after a drop.
            previous.conn.sessions.pop(req.sid, None)
            previous.close(CLOSE_TAKEN_OVER, "session resumed on another connection")
        self.peers_by_sid[req.sid] = peer
        if req.vid is not None:
            self.pipeline.visit(req.sid, peer.conn.site, req.consent, req.vid)
        peer.send(reply)
        # An open help chat survives page navigations: its state follows the welcome.
        self.chat.spawn(self.chat.restore(peer.conn.site, req.sid))

    async def wait_scored(self, sid: str, seq: int, timeout: float = 30.0) -> None:
        """Resolve once event ``seq`` of ``sid`` has been scored (:meth:`Pipeline.wait_scored`)."""
        await self.pipeline.wait_scored(sid, seq, timeout)

    # -- erasure ----------------------------------------------------------------------

    async def drop_sessions(self, site: str, sids: list[str], announce: bool = True) -> None:
        """Drop erased sessions everywhere: here, on their shards, and (``announce``) on every gateway.

        A socket carrying one gets an ``erased`` error and carries it no more;
        each session's Forget goes to its shard behind the events already on
        their way, as a withdrawal's does. Resolves when this gateway's shards
        have taken the Forgets (or after a timeout: the eraser's second pass
        takes what a late write left).
        """
        done = self._drop_here(site, sids)
        if announce:
            await rights_announce(self.redis, self.keys, self.id, site, sids)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done, FORGET_WAIT_S)

    def _drop_here(self, site: str, sids: list[str]) -> asyncio.Future:
        """Take ``sids`` off this gateway's sockets and queue their Forgets; resolves when sent."""
        for sid in sids:
            peer = self.peers_by_sid.pop(sid, None)
            if peer is not None and peer.conn is not None:
                peer.conn.sessions.pop(sid, None)
                peer.send(error("erased", "this session's data was erased", sid=sid))
        return self.pipeline.forget_all([Forget(sid, site) for sid in sids])

    async def _rights_loop(self) -> None:
        """Drop the sessions other processes erased (the ``rights`` channel)."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.rights)
        try:
            async for msg in pubsub.listen():
                if msg.get("type") != "message":
                    continue
                parsed = parse_announcement(msg["data"])
                if parsed is None or parsed[0] == self.id:
                    continue
                _origin, site, sids = parsed
                # Not awaited: the requester's process waits for its own gateway's drops.
                self._drop_here(site, sids)
        finally:
            await pubsub.aclose()

    async def _chat_loop(self) -> None:
        """Help-chat frames from the console and other gateways (serve/chat/relay.py)."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.chat_events)
        try:
            async for msg in pubsub.listen():
                if msg.get("type") == "message":
                    self.chat.on_channel(msg["data"])
        finally:
            await pubsub.aclose()

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
