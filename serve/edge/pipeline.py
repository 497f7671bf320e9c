"""The gateway's pipelines: durable appends, their acknowledgements, and one dispatcher per shard.

Across connections the gateway runs two pipelines that batch whatever
arrived while the previous round trip was in flight:

* the **append pipeline** makes events durable in Redis (one script call
  for all connections per round, the next round sent while Redis runs the
  last) and only then acknowledges them (:meth:`Pipeline.append_loop`,
  :meth:`Pipeline.settle_loop`);
* one **dispatcher per shard** hands that shard every durable event that
  arrived since its last call, in one call over the shard's link
  (:mod:`actors.shard.link`, not a Ray call), and pushes back the
  interventions it decides (:meth:`Pipeline.shard_loop`). One call in
  flight per shard keeps each session's events in order; a crashed shard's
  batch is retried once Ray has restarted it (the events are durable, so
  nothing is lost).

Tracing (cluster/tracing.py): a frame drawn into the head sample gets its
trace ids when it is queued for its shard; every frame's read and ack times
ride along with its events (two floats), so the spans of a frame that turns
out to be traced (sampled, or its events triggered an intervention) are
recorded after the shard's reply, from those times.

Shard-set changes (cluster/shard_set.py): :meth:`Pipeline.switch` holds
new batches back, drains every shard's queue and call in flight under the
old ring, has each old shard hand over the sessions the new ring moves
(snapshot, then drop), and only then queues the held batches under the new
ring. So a moved session's events reach its old shard first and its new one
after, which activates it from Redis: nothing is applied twice, and no
event is decided on twice.

Backpressure: when the shards fall behind by more than ``max_pending``
events, new frames are refused with ``overloaded`` (not acknowledged: the
client resends later) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import ray

from actors.core.host import EVENTS, FORGET, VISIT, Forget, pack_batch
from actors.core.placement import HashRing
from actors.shard.link import LinkDown, ShardFailed, ShardLink
from cluster.loops import Supervisor
from cluster.tracing import Tracing
from serve.edge.metrics import GatewayMetrics
from serve.edge.peer import Peer
from serve.edge.protocol import Connection, EventsPlan, error
from serve.edge.stats import Stats
from serve.edge.store import Append, EventStore, Unconfirmed

log = logging.getLogger("lifeline.gateway")

SHARD_RETRY_S = 120.0  # how long a batch is retried while Ray restarts a shard
# The longest wait between tries meanwhile: a failed try is one cheap Ray call (the link's
# address), and each wait may add to the time until the restarted shard scores again.
RESTART_POLL_S = 0.25
ROUNDS_IN_FLIGHT = 2  # append rounds on their way to Redis at once (see Pipeline.append_loop)


class AppendSink:
    """Where an append's outcome goes: a socket (ack it) or a beacon request (await it)."""

    __slots__ = ("peer", "future", "since", "existing")

    def __init__(
        self, peer: Peer, future: asyncio.Future | None = None, existing: bool = False
    ) -> None:
        self.peer = peer
        self.future = future
        self.since = time.perf_counter()  # when the frame was read
        # Only onto a session that still exists (a beacon: no socket to drop when its
        # session is erased, so the store refuses it instead; store.Append.existing).
        self.existing = existing


class Pipeline:
    """Events from sockets and beacons to Redis, acknowledgements back, durable events to shards.

    Owned by the gateway, which starts its loops under its supervisor and
    shares with it the counters, the supervisor (whose ``failed`` counts a
    frame or a session that raised) and the map of sessions to sockets
    (results and ``wait_scored`` find a session's socket there).
    """

    def __init__(
        self,
        store: EventStore,
        ring: HashRing,
        links: dict[str, ShardLink],
        stats: Stats,
        loops: Supervisor,
        peers_by_sid: dict[str, Peer],
        window_s: float,
        append_window_s: float,
        max_pending: int,
        tracing: Tracing | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.store = store
        self.tracing = tracing  # None: off, and the per-frame path tests just that
        self.ring = ring
        self.links = links  # by shard name, as the ring names them
        self.stats = stats
        self.metrics = metrics or GatewayMetrics()
        # A shard's label in loop names and metrics: its position when this gateway first
        # saw it (the first set's are 0..n-1, as before), never reused for another shard.
        self.labels = {name: str(i) for i, name in enumerate(ring.names)}
        # Every shard's series from the start, at 0: Prometheus' increase() cannot see
        # the first restart of a series that is born at 1.
        stats.shard_restarts.update({lb: 0 for lb in self.labels.values()})
        self.loops = loops
        self.peers_by_sid = peers_by_sid
        self.window_s = window_s
        self.append_window_s = append_window_s
        self.max_pending = max_pending
        self._appends: asyncio.Queue[tuple[Any, EventsPlan | None]] = asyncio.Queue()
        self._pending: dict[str, list[tuple]] = {name: [] for name in ring.names}
        self._drawn = dict.fromkeys(ring.names, 0)  # pending items the trace head drew, per shard
        self._pending_events = 0
        self._wake = {name: asyncio.Event() for name in ring.names}
        # While a shard-set change drains the old shards: (name-less) items held back.
        self._held: list[tuple] | None = None
        self._calling: set[str] = set()  # shards with a batch call in flight
        self._idle = asyncio.Event()  # set whenever a shard call ends (the drain waits on it)
        self._rounds_open = 0  # rounds begun (gathering or at Redis) and not yet settled
        self._slots = asyncio.Semaphore(ROUNDS_IN_FLIGHT)
        # (batch, appends, runs, outcome, when the round went to Redis)
        self._rounds: asyncio.Queue[tuple[list, list, list, Any, float]] = asyncio.Queue()
        # Set when a round is settled, then replaced: read it afresh for each wait.
        self.round_done = asyncio.Event()
        self._scored_waiters: dict[str, list[tuple[int, asyncio.Future]]] = {}
        self._forget_waiters: dict[str, list[asyncio.Future]] = {}  # sid -> erasures waiting
        self._settled_at = 0.0  # perf_counter when the round being settled was acknowledged

    # -- what enters the pipeline -----------------------------------------------------

    def admit(self, peer: Peer, frame: dict[str, Any]) -> None:
        """An events frame from a socket: planned by its connection, queued for the next round.

        Refused with ``overloaded`` while the shards are ``max_pending``
        events behind. Runs per frame: keep it lean.
        """
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

    def submit(self, sink: AppendSink, plan: EventsPlan) -> None:
        """Queue a planned append whose outcome goes to ``sink`` (a beacon's future)."""
        self._appends.put_nowait((sink, plan))

    def forget_all(self, forgets: list[Forget]) -> asyncio.Future:
        """Withdraw each session (:meth:`withdraw`); the future resolves once their shards took them.

        For an erasure, which must know the shards dropped the sessions
        before it looks for what they wrote last. Resolved however the shard
        calls end (a failed call's shard restarts without the sessions).
        """
        loop = asyncio.get_running_loop()
        waits = []
        for f in forgets:
            fut = loop.create_future()
            self._forget_waiters.setdefault(f.sid, []).append(fut)
            waits.append(fut)
            self.withdraw(f)
        return asyncio.ensure_future(asyncio.gather(*waits))

    def withdraw(self, forget: Forget) -> None:
        """Queue a session's forget behind its events still on their way to Redis.

        So the shard drops the session after its last events, not before.
        """
        self._appends.put_nowait((forget, None))

    # -- append pipeline ------------------------------------------------------------

    @property
    def appending(self) -> bool:
        """A round has begun (gathering, or on its way to Redis) and is not settled yet."""
        return self._rounds_open > 0

    @property
    def busy(self) -> bool:
        return self.appending or not self._appends.empty()

    async def append_loop(self) -> None:
        """Gather frames into rounds and send each round to Redis, up to ROUNDS_IN_FLIGHT at once.

        A round does not wait for the one before it to come back: Redis runs
        them in the order they were sent, and :meth:`settle_loop` handles
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
            sent = 0.0
            try:
                if self.append_window_s:
                    await asyncio.sleep(self.append_window_s)  # gather the next few ms' frames
                while not self._appends.empty():
                    batch.append(self._appends.get_nowait())
                appends = [(sink, plan) for sink, plan in batch if plan is not None]
                runs = [self._run_of(sink, plan) for sink, plan in appends]
                if runs:
                    sent = time.perf_counter()
                    outcome = await self.store.start_append(runs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # cannot reach Redis, or a bug: settled as failed
                outcome = exc
            # Always handed on, so the settle loop frees the round's slot.
            self._rounds.put_nowait((batch, appends, runs, outcome, sent))

    def _run_of(self, sink: AppendSink, plan: EventsPlan) -> Append:
        """The store's run for a plan; events that cannot be packed consume their numbers.

        Validation bounds every value to what msgpack and Redis store, so this
        is a second line: one frame that slipped through must not stop the
        round of every other visitor. Its events are refused, each with an
        error frame, as validation would have refused them.
        """
        try:
            run = Append.of(
                sink.peer.conn.site, plan.sid, plan.first, plan.last, plan.append, plan.sealer
            )
            return run._replace(existing=True) if sink.existing else run
        except (ValueError, TypeError, OverflowError) as exc:
            log.error("events of one frame could not be packed (%s): refused", type(exc).__name__)
            for ev in plan.append:
                sink.peer.send(
                    error("bad_event", "event could not be stored", sid=plan.sid, seq=ev["seq"])
                )
            plan.append = []
            empty = Append.of(sink.peer.conn.site, plan.sid, plan.first, plan.last, [])
            return empty._replace(existing=sink.existing)

    async def settle_loop(self) -> None:
        """Acknowledge (or refuse) each round's frames once Redis has answered, in send order."""
        while True:
            batch, appends, runs, outcome, sent = await self._rounds.get()
            try:
                await self._settle(batch, appends, runs, outcome, sent)
            finally:
                self._rounds_open -= 1
                self._slots.release()
                # Wake whoever waits for this round, and arm a fresh event for the next.
                self.round_done.set()
                self.round_done = asyncio.Event()

    async def _settle(
        self, batch: list, appends: list, runs: list[Append], outcome: Any, sent: float
    ) -> None:
        try:
            if isinstance(outcome, Exception):
                raise outcome
            results = await outcome if runs else []
            if runs:
                # Rounds are settled in send order, as Redis answers them: this is the
                # reply's arrival unless the loop was still settling the round before.
                self.metrics.redis_append(time.perf_counter() - sent)
        except Unconfirmed as exc:  # in the primary's log, not on enough replicas: not acked
            log.error("append of %d runs unconfirmed: %s", len(runs), exc)
            self.stats.append_failures += 1
            results = [(-1, False)] * len(runs)
            # Their events go to the shard all the same: the resends the clients make are
            # acked as already logged (_settle_one) and skipped by the shard, which would
            # otherwise never see them. Should the primary die first, the resends are
            # stored anew with the same events: log and shard still agree.
            stored = exc.results if len(exc.results) == len(runs) else []
            for (sink, plan), run, (_seq, ok) in zip(appends, runs, stored, strict=False):
                if ok and plan.append:
                    self._to_shard(plan, run.payload, sink.peer.conn, sink.since)
        except Exception as exc:  # Redis down: nothing was acked, the clients resend
            log.error("append of %d runs failed: %s", len(runs), exc)
            self.stats.append_failures += 1
            results = [(-1, False)] * len(runs)
        if len(results) != len(runs):  # never acknowledge what the reply does not cover
            log.error("append reply has %d results for %d runs", len(results), len(runs))
            self.stats.append_failures += 1
            results = [(-1, False)] * len(runs)
        self.stats.append_rounds += 1
        self._settled_at = time.perf_counter()
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
        observe = self.metrics.ack
        waited = 0.0
        for sink, _ in appends:
            observe(done - sink.since)
            waited += done - sink.since
        self.stats.ack_ms += waited * 1000.0
        self.stats.acks += len(appends)

    def _settle_one(
        self, sink: AppendSink, plan: EventsPlan, run: Append, durable: int, ok: bool
    ) -> None:
        conn = sink.peer.conn
        if not ok and plan.last and durable >= plan.last:
            # Already in the log: the resend of a round whose reply was lost (a failover,
            # a WAIT that fell short, a timeout). The seq check kept it from being appended
            # twice; it is acked now, and its events go to the shard, which never got them
            # (it skips any it has). Only runs that consumed numbers (plan.last > 0).
            ok = True
        if ok:
            reply = conn.appended(plan.sid, plan.last)
            self.stats.events_acked += len(plan.append)
            if plan.append:
                self._to_shard(plan, run.payload, conn, sink.since)
        else:
            code = "sequence_gap" if durable >= 0 else "overloaded"
            reply = conn.append_failed(plan.sid, durable, code)
        if sink.future is not None:
            if not sink.future.done():
                sink.future.set_result(reply)
        elif reply is not None:
            sink.peer.send(reply)

    # -- shard dispatch --------------------------------------------------------------

    # A shard's pending items: (sid, site, consent, payload, events, op, read, acked,
    # head, first seq, last seq), ``op`` as in actors.core.host: a withdrawal is said as
    # one, never read from a consent; read and acked: the frame's perf_counter times;
    # head: (trace id, root span id, shard-call span id) when the frame was drawn into the trace sample.

    def visit(self, sid: str, site: str, consent: list[str], vid: str) -> None:
        """Tell the session's shard who its visitor is (a hello that named one was welcomed).

        Queued now, so it reaches the shard before the events that follow the
        hello; once per hello, never per event.
        """
        self._queue((sid, site, consent, vid.encode(), 0, VISIT, 0.0, 0.0, None, 0, 0))

    def _forget(self, forget: Forget) -> None:
        """Queue the shard's forget of a session, behind that session's events."""
        self._queue((forget.sid, forget.site, (), b"", 0, FORGET, 0.0, 0.0, None, 0, 0))

    def _queue(self, item: tuple) -> None:
        """Queue one item for its session's shard (held back while the shard set changes)."""
        if self._held is not None:
            self._held.append(item)
            return
        name = self.ring.owner(item[0])
        if item[8] is not None:
            self._drawn[name] += 1  # so a batch with none drawn skips tracing in O(1)
        self._pending[name].append(item)
        self._wake[name].set()

    def _to_shard(self, plan: EventsPlan, payload: bytes, conn: Connection, read: float) -> None:
        """Queue a durable run of events for its shard.

        With the consent the frame was validated with, not the connection's
        current one: a resume elsewhere may have taken the session off this
        connection while its events were on their way to Redis. ``read``: when
        the frame was read, for its spans if it is traced.
        """
        tracing = self.tracing
        head = tracing.head() if tracing is not None else None  # one random draw per frame
        self._pending_events += len(plan.append)
        self._queue(
            (
                plan.sid,
                conn.site,
                plan.consent,
                payload,
                len(plan.append),
                EVENTS,
                read,
                self._settled_at,
                head,
                plan.first,
                plan.last,
            )
        )

    async def shard_loop(self, name: str) -> None:
        """Hand shard ``name`` its pending items, one call at a time, until it leaves the set."""
        i = self.labels[name]
        wake = self._wake[name]
        while True:
            await wake.wait()
            if self.window_s:
                await asyncio.sleep(self.window_s)  # gather what arrives in the next few ms
            wake.clear()
            items, self._pending[name] = self._pending[name], []
            drawn, self._drawn[name] = self._drawn[name], 0
            if not items:
                continue
            self._calling.add(name)
            n = sum(it[4] for it in items)
            self.stats.batch_events.append(n)
            if len(self.stats.batch_events) > 10_000:
                del self.stats.batch_events[:5_000]
            t_call = time.perf_counter()
            try:
                reply = await self._call_shard(name, items, drawn)
            finally:  # however the call ends, these events no longer wait for the shard
                self._pending_events -= n
                self._calling.discard(name)
                self._idle.set()
                if self._forget_waiters:
                    self._forgotten(items)
            t_reply = time.perf_counter()
            took = t_reply - t_call
            self.stats.shard_call_ms += took * 1000.0
            if self.links[name].restarts:
                self.stats.shard_restarts[i] = self.links[name].restarts
            if reply is None:
                continue
            self.metrics.shard_call(took)
            self.stats.shard_calls += 1
            results, triggered = reply
            for sid, seqs, _scores, frames in results:
                try:
                    self._deliver(sid, seqs, frames, items)
                except Exception as exc:  # one session's bug must not cost the others theirs
                    self.loops.failed(self.loops.loops[f"shard{i}"], exc, time.monotonic())
            if self.tracing is not None and (drawn or triggered):
                try:
                    self._trace(self.tracing, int(i), items, results, triggered, t_call, t_reply, n)
                except Exception as exc:  # tracing must never cost a visitor anything
                    self.loops.failed(self.loops.loops[f"shard{i}"], exc, time.monotonic())

    def _forgotten(self, items: list[tuple]) -> None:
        """Resolve the erasures waiting for the Forgets among ``items`` (a shard call ended)."""
        for it in items:
            if it[5] == FORGET:
                for fut in self._forget_waiters.pop(it[0], ()):
                    if not fut.done():
                        fut.set_result(None)

    def _trace(
        self,
        tr: Tracing,
        shard: int,
        items: list[tuple],
        results: list,
        triggered: list,
        t_call: float,
        t_reply: float,
        batch_events: int,
    ) -> None:
        """Record the gateway's spans of each traced frame of a shard call, after the fact.

        A frame is traced when the head drew it (its ids were sent with the
        batch) or when the shard says its events triggered a decision (then
        the shard's reply names the trace and this call's span id).
        """
        joined = {int(k): str(tp) for k, tp in triggered}
        done = time.perf_counter()
        pushed = {sid for sid, _seqs, _scores, frames in results if frames}
        for k, it in enumerate(items):
            head, tp = it[8], joined.get(k)
            if head is None and tp is None:
                continue
            parent = tr.parent_of(tp) if tp else None
            if head is not None:
                trace_id, root_id, call_id = head
            elif parent is not None:
                trace_id, root_id, call_id = parent.trace_id, tr.new_span_id(), parent.span_id
            else:
                continue
            sid, site, read, acked = it[0], it[1], it[6], it[7]
            push = tp is not None and sid in pushed
            tr.record(
                "lifeline.frame",
                trace_id,
                root_id,
                None,
                read,
                done if push else t_reply,
                {
                    "lifeline.site": site,
                    "lifeline.events": it[4],
                    "lifeline.first_seq": it[9],
                    "lifeline.last_seq": it[10],
                    "lifeline.sampled": head is not None,
                    "lifeline.triggered": tp is not None,
                },
            )
            tr.record("lifeline.gateway.append", trace_id, tr.new_span_id(), root_id, read, acked)
            tr.record(
                "lifeline.gateway.shard_call",
                trace_id,
                call_id,
                root_id,
                t_call,
                t_reply,
                {"lifeline.shard": shard, "lifeline.batch_events": batch_events},
            )
            if push:
                tr.record(
                    "lifeline.gateway.push", trace_id, tr.new_span_id(), root_id, t_reply, done
                )

    def _deliver(
        self, sid: str, seqs: list[int], frames: list[dict[str, Any]], items: list[tuple]
    ) -> None:
        """Push a session's interventions from a shard reply and note how far it is scored."""
        self.stats.events_scored += len(seqs)
        peer = self.peers_by_sid.get(sid)
        for f in frames:
            self.stats.interventions += 1
            if peer is not None:
                peer.send(f)
                read = _read_time(items, sid, f.get("seq"))
                if read:
                    self.metrics.intervention(time.perf_counter() - read)
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

    @staticmethod
    def _traceparents(items: list[tuple]) -> list[tuple[int, str]]:
        """(index, W3C traceparent of its shard-call span) for each item the head drew."""
        return [
            (k, Tracing.traceparent(it[8][0], it[8][2]))
            for k, it in enumerate(items)
            if it[8] is not None
        ]

    async def _call_shard(
        self, i: str, items: list[tuple], drawn: int = 0
    ) -> tuple[list, list] | None:
        """Hand a shard a batch over its link, retrying while Ray restarts it.

        The batch is durable meanwhile; a resent batch's events that the shard
        already applied are skipped by sequence number. ``drawn``: how many of
        ``items`` the trace head drew (their context goes with the batch).
        """
        deadline = time.monotonic() + SHARD_RETRY_S
        delay = 0.05
        traced = self._traceparents(items) if drawn else ()
        packed = pack_batch([(it[5], it[0], it[1], it[2], it[3]) for it in items], traced)
        while True:
            try:
                return msgpack.unpackb(await self.links[i].call(packed, time.time()))
            except ShardFailed as exc:  # a bug in the shard, not a restart: retrying won't help
                log.error(
                    "shard %s failed a batch of %d events: %s", i, sum(it[4] for it in items), exc
                )
                return None
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.ActorUnavailableError,
                LinkDown,
            ) as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "shard %s unavailable for %.0f s; %d events stay in the log only: %s",
                        i,
                        SHARD_RETRY_S,
                        sum(it[4] for it in items),
                        exc,
                    )
                    return None
                self.stats.shard_retries += 1
                log.warning("shard %s call failed (%s); retrying", i, type(exc).__name__)
                await asyncio.sleep(delay)  # backing off while Ray restarts the actor
                delay = min(delay * 2, RESTART_POLL_S)

    # -- shard-set changes -------------------------------------------------------------

    async def switch(
        self,
        ring: HashRing,
        links: dict[str, ShardLink],
        release: Callable[[str], Awaitable[Any]],
        start_loop: Callable[[str], Any],
        stop_loop: Callable[[str], Awaitable[Any]],
    ) -> int:
        """Move to a new shard set without losing, reordering or re-applying an event.

        ``links``: one for every shard of ``ring`` (the ones kept are reused);
        ``await release(name)`` makes the old shard ``name`` hand over the
        sessions the new ring moves off it; ``start_loop(name)`` starts the
        dispatcher of a new shard and ``await stop_loop(name)`` ends a removed
        one's (drained, so it is idle). Returns how many items were held back.
        Items queued meanwhile wait (per shard they keep their order); a shard
        that cannot be reached holds the change up to its retry window.
        """
        old = self.ring
        self._held = []
        try:
            for wake in self._wake.values():
                wake.set()
            # Drained: every old shard's queue taken and its call answered.
            while any(self._pending.values()) or self._calling:
                self._idle.clear()
                await self._idle.wait()
            await asyncio.gather(*(release(name) for name in old.names))
            gone = [name for name in old.names if name not in links]
            self.ring = ring
            self.links = links
            for name in ring.names:
                if name not in self._pending:
                    self.labels.setdefault(name, str(len(self.labels)))
                    self.stats.shard_restarts.setdefault(self.labels[name], 0)
                    self._pending[name] = []
                    self._drawn[name] = 0
                    self._wake[name] = asyncio.Event()
                    start_loop(name)
            for name in gone:
                await stop_loop(name)
                del self._pending[name], self._drawn[name], self._wake[name]
        finally:
            held, self._held = self._held, None
        for item in held:
            self._queue(item)
        return len(held)


def _read_time(items: list[tuple], sid: str, seq: Any) -> float:
    """When the frame carrying event ``seq`` of ``sid`` in a batch was read (0.0: not in it).

    Scans the batch, but only for an intervention, which is rare.
    """
    if not isinstance(seq, int):
        return 0.0
    for it in items:
        if it[0] == sid and it[5] == EVENTS and it[10] >= seq:
            return it[6]
    return 0.0
