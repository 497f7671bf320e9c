"""The beacon: a page's last events, sent by ``navigator.sendBeacon`` as it hides.

``POST /beacon`` (:mod:`serve.edge.http`) hands the body to
:meth:`Beacons.receive`, which takes it through the same protocol checks
and the same durable append (:class:`serve.edge.pipeline.Pipeline`) as a
socket's frames, using a :class:`serve.edge.peer.Peer` without a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from actors.core.sites import Site
from cluster.sealing import KeyUnavailable
from cluster.tokens import Keyring
from serve.edge.peer import Peer
from serve.edge.pipeline import AppendSink, Pipeline
from serve.edge.protocol import Connection, HelloRequest, Limits, TokenBucket, error
from serve.edge.stats import Stats
from serve.edge.store import EventStore

BEACON_SITE_RATE = 50.0  # a site's beacons may carry this many times one connection's events/s
BEACON_BUCKETS = 100_000  # sessions whose beacon rate is remembered (oldest forgotten first)


class Beacons:
    """Beacon requests of every site, and their rate limits (a beacon has no socket to keep them)."""

    def __init__(
        self,
        store: EventStore,
        pipeline: Pipeline,
        stats: Stats,
        limits: Limits,
        secret: Keyring,
        site_bucket: Callable[[str], TokenBucket | None] = lambda site: None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.stats = stats
        self.limits = limits
        self.secret = secret
        self.site_bucket = site_bucket  # the site's event budget, shared with its sockets
        # Per session and per site, in order of last use.
        self._buckets: dict[str, TokenBucket] = {}

    async def receive(self, site: Site, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Take a page-hide flush through the same checks and durable append as the socket.

        A beacon must name a session that this site created, whose stored
        consent includes analytics, and carry its resume token: it can add to
        a session, never start one or grant consent. Each beacon arrives
        without a socket, so its rate limits are kept here, per session and
        per site, with the same events/s as a connection's.
        """
        status, reply = await self._receive(site, body)
        if "code" in reply:
            self.stats.error(reply["code"])
        for err in reply.get("errors", ()):
            self.stats.error(err.get("code", "bad_event"))
        return status, reply

    def _refused(self, site: str, sid: str, events: Any) -> str | None:
        """Take the beacon's events from its session's and its site's buckets; None if both
        had them, else the limit that refused (``session`` or ``site``)."""
        n = max(1, len(events)) if isinstance(events, list) else 1
        now = time.monotonic()
        buckets = self._buckets
        refused = None
        for limit, key, scale in (
            ("session", f"{site}|{sid}", 1.0),
            ("site", site, BEACON_SITE_RATE),
        ):
            bucket = buckets.pop(key, None)  # re-inserted: the dict stays in order of last use
            if bucket is None:
                lim = self.limits
                bucket = TokenBucket(lim.events_per_s * scale, lim.burst * scale, now)
            buckets[key] = bucket
            if refused is None and not bucket.take(n, now):
                refused = limit
        while len(buckets) > BEACON_BUCKETS:
            del buckets[next(iter(buckets))]
        return refused

    async def _receive(self, site: Site, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        conn = Connection(
            site.key, self.secret, self.limits, site_bucket=self.site_bucket(site.key)
        )
        # A beacon's rate is the session's and the site's (_refused), kept here across
        # beacons; the throwaway connection's own bucket must not refuse it again.
        conn.bucket = TokenBucket(float("inf"), float("inf"), time.monotonic())
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
            if await self.store.erased(site.key, req.sid):
                return 403, error("erased", "this session's data was erased", sid=req.sid)
            return 403, error("unknown_session", "no such session for this site", sid=req.sid)
        if "analytics" not in info.consent:
            return 403, error(
                "consent_required", "no analytics consent: nothing may be collected", sid=req.sid
            )
        limit = self._refused(site.key, req.sid, body.get("events"))
        if limit is not None:
            return 429, error(
                "rate_limited", "too many beacon events: resend later", sid=req.sid, limit=limit
            )
        req = HelloRequest(req.sid, token, info.consent)
        frame = {
            "t": "events",
            "sid": req.sid,
            "now": body.get("now"),
            "events": body.get("events"),
        }
        try:  # the session's data key, once per beacon (its events are logged sealed)
            sealer = await self.store.sealer_of(site.key, req.sid)
        except KeyUnavailable:
            return 503, error("overloaded", "the store cannot open this session now", sid=req.sid)
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
            conn.sessions[req.sid].sealer = sealer
            plan = conn.events(frame, int(time.time() * 1000))
            if isinstance(plan, dict):  # the site's event budget, or a bad frame
                return (429 if plan["code"] == "rate_limited" else 400), plan
            errors = [r for r in plan.replies if r["t"] == "error"]
            gap = any(r.get("code") == "sequence_gap" for r in errors)
            if gap and not plan.last and _attempt < 2:
                # The events before ours may be on their way (the page's other
                # beacon, or its socket's last frames): wait for the next append
                # round, briefly (the page is gone; nobody waits on this reply).
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self.pipeline.round_done.wait(), 0.5 if self.pipeline.busy else 0.25
                    )
                continue
            if not plan.last:
                return 200, {"acked": conn.sessions[req.sid].acked, "errors": errors}
            future = asyncio.get_running_loop().create_future()
            self.pipeline.submit(AppendSink(peer, future, existing=True), plan)
            reply = await future
            if reply["t"] == "ack":
                return 200, {"acked": reply["seq"], "errors": errors}
            if await self.store.erased(site.key, req.sid):  # erased since it was looked up
                return 403, error("erased", "this session's data was erased", sid=req.sid)
            if reply.get("code") != "sequence_gap":
                return 503, {"acked": seq, "errors": errors + [reply]}
        return 409, {"acked": seq, "errors": errors + [reply]}
