"""SessionShard: the Ray actor that hosts a slice of the sessions.

A thin shell around :class:`actors.host.SessionHost`. It adds what the pure
host must not do itself: loading sessions back from Redis (snapshot plus the
event log after it), writing snapshots and the intervention log, loading
and hot-swapping the model, and asking the Serve deployments for richer
content after an intervention has already gone out.

One batch at a time: calls from the gateway are processed under a FIFO lock,
so a session's events are applied in the order the gateway sent them even
while an activation awaits Redis. Enrichment, snapshots and log writes run
as background tasks and never delay the reply that carries the scores and
decisions back to the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import ray
import redis

from actors.host import BatchItem, SessionHost, unpack_batch
from actors.policy import RECOMMENDATIONS, Decision
from actors.scoring import SchemaMismatch, Scorer
from actors.sites import Site, load_sites
from cluster.keys import SESSION_TTL_S, Keys
from cluster.redis_server import async_client

log = logging.getLogger("lifeline.shard")

SNAPSHOT_EVERY_S = 5.0
SWEEP_EVERY_S = 10.0
MODEL_POLL_S = 1.0
ENRICH_BUDGET_S = 2.5  # LLM text later than this after the trigger is dropped (issue 5)


def decision_frame(d: Decision, text: str) -> dict[str, Any]:
    """The intervention as the browser receives it (docs/PROTOCOL.md)."""
    frame: dict[str, Any] = {
        "t": "intervention",
        "sid": d.sid,
        "iid": d.iid,
        "seq": d.seq,  # the triggering event, so the client can time the round trip
        "kind": d.kind,
        "text": text,
        "score": d.score,
        "reasons": [{"signal": r.signal, "strength": r.strength} for r in d.reasons],
    }
    if d.target:
        frame["target"] = d.target
    if d.kind == RECOMMENDATIONS:
        frame["items"] = []
    return frame


class ShardCore:
    """Everything a shard does, without the Ray decorator (so tests can host one in-process)."""

    def __init__(
        self,
        index: int,
        redis_url: str,
        prefix: str,
        sites_file: str,
        idle_deactivate_s: float = 1800.0,
        enrich: bool = True,
    ) -> None:
        self.index = index
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.sites: dict[str, Site] = load_sites(sites_file)
        self.host = SessionHost(self._rules, deactivate_after_ms=idle_deactivate_s * 1000.0)
        self.redis_url = redis_url
        self.redis = async_client(redis_url)
        self.scorer = self._initial_model()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._started = False
        self.enrich = enrich
        self._followups = None  # serve.deployments.FollowUps, made on first use
        self._model_swapped = asyncio.Event()
        self.refused: set[str] = set()  # model versions this shard will not load
        self._metrics = _ShardMetrics(index)
        self.stats = {
            "batches": 0,
            "events": 0,
            "skipped": 0,
            "decisions": 0,
            "activations": 0,
            "model_swaps": 0,
            "model_refusals": 0,
            "busy_ms": 0.0,
            "lock_wait_ms": 0.0,
            "inbound_ms": 0.0,  # from the gateway's send to this batch's start (Ray's call path)
        }

    # -- model ----------------------------------------------------------------

    def _registry(self):
        from training.registry import ModelRegistry  # training is optional at import time

        return ModelRegistry(redis.Redis.from_url(self.redis_url), self.prefix)

    def _initial_model(self) -> Scorer:
        try:
            version = self._registry().live()
            if version:
                return self._load_version(version)
        except (SchemaMismatch, redis.RedisError, KeyError) as exc:
            log.error(
                "shard %d: live model not usable (%s); using the bundled model", self.index, exc
            )
        return Scorer.bundled()

    def _load_version(self, version: str) -> Scorer:
        raw, meta = self._registry().load(version)
        return Scorer.from_bytes(raw, meta, version)

    async def _watch_model(self) -> None:
        """Swap in a newly promoted model between batches; refuse a mismatched one."""
        live_key = f"{self.prefix}model:live"
        while True:
            await asyncio.sleep(
                MODEL_POLL_S
            )  # a GET a second: cheaper than a pub/sub connection per shard
            try:
                raw = await self.redis.get(live_key)
            except redis.RedisError:
                continue
            version = raw.decode() if raw else None
            if not version or version == self.scorer.version or version in self.refused:
                continue
            try:
                scorer = await asyncio.to_thread(self._load_version, version)
            except SchemaMismatch as exc:
                self.refused.add(version)
                self.stats["model_refusals"] += 1
                log.error(
                    "shard %d: refusing model %s: %s; keeping %s",
                    self.index,
                    version,
                    exc,
                    self.scorer.version,
                )
                self._model_swapped.set()  # wake waiters: the decision on this version is made
                continue
            except Exception as exc:  # a broken blob must not take the shard down
                self.refused.add(version)
                self.stats["model_refusals"] += 1
                self._model_swapped.set()
                log.error(
                    "shard %d: cannot load model %s (%s); keeping %s",
                    self.index,
                    version,
                    exc,
                    self.scorer.version,
                )
                continue
            # One assignment on the event loop: a batch uses either the old or the new model.
            self.scorer = scorer
            self._model_swapped.set()
            self.stats["model_swaps"] += 1
            log.warning("shard %d: now scoring with model %s", self.index, version)

    # -- sites ----------------------------------------------------------------

    def _rules(self, site: str):
        s = self.sites.get(site)
        if s is None:
            s = Site(site)
        return s.detectors, s.policy

    # -- batches --------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        for coro in (self._watch_model(), self._snapshot_loop()):
            self._spawn(coro)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, batch: bytes, gateway_id: str = "", sent_at: float = 0.0) -> bytes:
        """Process one batch (:func:`actors.host.pack_batch`); ``sent_at``: the caller's time.time().

        Returns, msgpack-packed, (sid, seqs, scores, intervention frames) per session.
        """
        if sent_at:
            self.stats["inbound_ms"] += (time.time() - sent_at) * 1000.0
        items = unpack_batch(batch)
        self._start()
        started = time.perf_counter()
        async with self._lock:
            locked = time.perf_counter()
            await self._activate(items)
            scorer = self.scorer
            segment = scorer.segments.nearest if scorer.segments is not None else None
            results = self.host.process(items, scorer, segment)
        out = []
        decisions: list[Decision] = []
        for r in results:
            frames = []
            for d in r.decisions:
                decisions.append(d)
                if not d.holdout:
                    frames.append(decision_frame(d, self._template(d)))
            out.append((r.sid, r.seqs, r.scores, frames))
            self.stats["events"] += len(r.seqs)
            self.stats["skipped"] += r.skipped
        self.stats["batches"] += 1
        self.stats["busy_ms"] += (time.perf_counter() - locked) * 1000.0
        self.stats["lock_wait_ms"] += (locked - started) * 1000.0
        self._metrics.batch(sum(len(r[1]) for r in out), time.perf_counter() - started, decisions)
        outcomes = [
            (ev["type"], ev["iid"], ev["ts"])
            for *_, events in items
            for ev in events
            if ev["type"].startswith("intervention_")
        ]
        if decisions or outcomes:
            self.stats["decisions"] += len(decisions)
            self._spawn(self._record(decisions, outcomes))
            if self.enrich and gateway_id:
                for d in decisions:
                    if not d.holdout and d.personalized:
                        self._enrich(d, gateway_id)
        return msgpack.packb(out)

    @staticmethod
    def _template(d: Decision) -> str:
        from serve.nudge import render_template

        return render_template(d.kind, d.signals, d.page_type)

    async def _activate(self, items: Sequence[BatchItem]) -> None:
        """Load sessions this shard does not hold from their snapshot and event log.

        A batch whose first event is seq 1 starts a new session: nothing was
        logged before it, so there is nothing to load.
        """
        first_seq: dict[str, tuple[str, int]] = {}
        for sid, site, _consent, events in items:
            if sid not in first_seq and events:
                first_seq[sid] = (site, events[0]["seq"])
        need = [
            sid for sid in self.host.missing(items) if sid in first_seq and first_seq[sid][1] > 1
        ]
        if not need:
            return
        pipe = self.redis.pipeline(transaction=False)
        for sid in need:
            pipe.get(self.keys.snapshot(sid))
            pipe.xrange(self.keys.events(sid))
            pipe.hmget(self.keys.session(sid), "iv_count", "iv_last")
        replies = await pipe.execute()
        for i, sid in enumerate(need):
            snap, entries, (iv_count, iv_last) = replies[3 * i : 3 * i + 3]
            site, before = first_seq[sid]
            state = msgpack.unpackb(snap) if snap else None
            events: list[dict[str, Any]] = []
            for _eid, fields in entries:
                if int(fields[b"l"]) < before:
                    events.extend(msgpack.unpackb(fields[b"ev"]))
                elif int(fields[b"f"]) < before:
                    events.extend(e for e in msgpack.unpackb(fields[b"ev"]) if e["seq"] < before)
            session = self.host.activate(sid, site, state, events, before)
            # Decisions made after the snapshot live in the session hash.
            if iv_count is not None:
                session.iv_count = max(session.iv_count, int(iv_count))
                session.iv_last_ts = max(session.iv_last_ts, int(float(iv_last or 0)))
            self.stats["activations"] += 1

    # -- background I/O ----------------------------------------------------------

    async def _record(
        self, decisions: list[Decision], outcomes: list[tuple[str, str, int]]
    ) -> None:
        """Append decisions to the intervention log and record outcomes; never raises."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for d in decisions:
                fields = {
                    "sid": d.sid,
                    "seq": d.seq,
                    "ts": d.ts,
                    "kind": d.kind,
                    "score": d.score,
                    "trigger": d.trigger,
                    "holdout": int(d.holdout),
                    "page_type": d.page_type,
                    "reasons": json.dumps([[r.signal, r.strength] for r in d.reasons]),
                    "model": self.scorer.version,
                }
                pipe.hset(self.keys.intervention(d.iid), mapping=fields)
                pipe.expire(self.keys.intervention(d.iid), SESSION_TTL_S)
                pipe.xadd(
                    self.keys.intervention_log,
                    {"iid": d.iid, **fields},
                    maxlen=100_000,
                    approximate=True,
                )
                # The running count, so a session activated elsewhere keeps its cap and cooldown.
                session = self.host.active.get(d.sid)
                iv_count = session.iv_count if session is not None else 1
                pipe.hset(self.keys.session(d.sid), mapping={"iv_count": iv_count, "iv_last": d.ts})
            for etype, iid, ts in outcomes:
                outcome = etype.removeprefix("intervention_")
                pipe.hset(self.keys.intervention(iid), mapping={outcome: ts, "outcome": outcome})
            await pipe.execute()
        except redis.RedisError as exc:
            log.error(
                "shard %d: could not record %d decisions: %s", self.index, len(decisions), exc
            )

    async def _snapshot_loop(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            states = self.host.take_dirty()
            if time.monotonic() - last_sweep >= SWEEP_EVERY_S:
                last_sweep = time.monotonic()
                states += self.host.sweep(time.time() * 1000.0)
            await self._write_snapshots(states)

    async def _write_snapshots(self, states: list[tuple[str, list[Any]]]) -> None:
        if not states:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for sid, state in states:
                pipe.set(self.keys.snapshot(sid), msgpack.packb(state), ex=SESSION_TTL_S)
            await pipe.execute()
        except redis.RedisError as exc:
            # Snapshots only shorten recovery; the event log alone is enough to rebuild.
            log.error(
                "shard %d: snapshot write failed for %d sessions: %s", self.index, len(states), exc
            )

    async def flush_snapshots(self) -> int:
        """Write every changed session's snapshot now (tests, graceful shutdown)."""
        async with self._lock:
            states = self.host.take_dirty()
        await self._write_snapshots(states)
        return len(states)

    def _enrich(self, d: Decision, gateway_id: str) -> None:
        """Ask Serve for the LLM nudge or recommendations; an update follows if in time.

        Runs in the background (:class:`serve.deployments.FollowUps`): the
        intervention with its templated text has already gone out.
        """
        follow = self._follow_ups()
        session = self.host.active.get(d.sid)
        if follow is None or session is None:
            return
        channel = self.keys.push(gateway_id)

        async def push(frame: dict[str, Any]) -> None:
            await self.redis.publish(channel, msgpack.packb(frame))

        if d.kind == RECOMMENDATIONS:
            ctx = {
                "site": session.site,
                "recent_items": list(session.recent_items),
                "cart_items": list(session.cart_item_ids),
                "k": 4,
            }
            follow.recommend(d.sid, d.iid, ctx, d.ts, push)
        else:
            ctx = {
                "site": session.site,
                "iid": d.iid,
                "kind": d.kind,
                "page_path": d.page_path,
                "page_type": d.page_type,
                "signals": d.signals,
                "segment": d.segment,
                "cart": {"items": session.cart_items, "value": session.cart_value},
                "consent": list(session.consent),
                "template": self._template(d),
                "trigger_ms": d.ts,
            }
            follow.nudge(d.sid, ctx, push)

    async def warm_up(self, timeout: float = 60.0) -> bool:
        """Start background tasks and open the Serve handles before any visitor needs them.

        A handle's first call sets up its routing, which takes seconds: paid
        here, at start-up, rather than out of the first intervention's 2.5 s.
        """
        from cluster.gc_tuning import tune_for_throughput

        self._start()
        tune_for_throughput()
        if not self.enrich:
            return False
        follow = self._follow_ups()
        if follow.nudge_handle is None or follow.recommender_handle is None:
            return False
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    follow.nudge_handle.llm_enabled.remote(),
                    follow.recommender_handle.latency.remote(),
                ),
                timeout,
            )
        except Exception as exc:
            log.warning(
                "shard %d: Serve deployments did not answer at start-up (%s)", self.index, exc
            )
            return False
        return True

    def _follow_ups(self):
        if self._followups is None:
            from serve.deployments import FollowUps

            try:
                from ray import serve

                nudge = serve.get_deployment_handle("NudgeWriter", app_name="nudge")
                rec = serve.get_deployment_handle("Recommender", app_name="recommender")
            except Exception as exc:
                log.warning(
                    "shard %d: Serve deployments not available (%s): templates only",
                    self.index,
                    exc,
                )
                nudge = rec = None
            self._followups = FollowUps(nudge, rec, budget_s=ENRICH_BUDGET_S)
        return self._followups

    def info(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "sessions_active": len(self.host.active),
            "sessions_dormant": len(self.host.dormant),
            "model": self.scorer.version,
            **self.stats,
            **(
                {f"followups_{k}": v for k, v in self._followups.counts.items()}
                if self._followups
                else {}
            ),
        }


class _ShardMetrics:
    """What operators see for the shards in Ray's metrics (dashboard, Prometheus)."""

    def __init__(self, index: int) -> None:
        from ray.util import metrics

        tags = {"shard": str(index)}
        self.events = metrics.Counter(
            "lifeline_shard_events_scored", "events scored", tag_keys=("shard",)
        )
        self.events.set_default_tags(tags)
        self.decisions = metrics.Counter(
            "lifeline_shard_decisions",
            "intervention decisions",
            tag_keys=("shard", "kind", "holdout"),
        )
        self.decisions.set_default_tags(tags)
        self.batch_size = metrics.Histogram(
            "lifeline_shard_batch_events",
            "events per batch",
            boundaries=[1, 4, 16, 64, 256, 1024],
            tag_keys=("shard",),
        )
        self.batch_size.set_default_tags(tags)
        self.latency = metrics.Histogram(
            "lifeline_shard_batch_ms",
            "time to apply, score and decide a batch",
            boundaries=[0.5, 1, 2, 5, 10, 25, 50, 100],
            tag_keys=("shard",),
        )
        self.latency.set_default_tags(tags)

    def batch(self, events: int, seconds: float, decisions: list[Decision]) -> None:
        if events:
            self.events.inc(events)
        self.batch_size.observe(events)
        self.latency.observe(seconds * 1000.0)
        for d in decisions:
            self.decisions.inc(1, tags={"kind": d.kind, "holdout": str(d.holdout).lower()})


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class SessionShard(ShardCore):
    """The Ray actor: restarted by Ray when it dies; sessions come back from Redis."""

    async def ping(self) -> dict[str, Any]:
        return self.info()

    async def session_row(self, sid: str) -> list[float] | None:
        """The current feature row of one session (tests and operators)."""
        async with self._lock:
            session = self.host.active.get(sid)
            session = self.host.get(sid)
            return session.row() if session else None

    async def memory(self) -> dict[str, int]:
        """Resident memory of this actor's process (benchmarks, operators)."""
        import psutil

        return {"rss": psutil.Process().memory_info().rss}

    async def compact_idle(self) -> int:
        """Compact every session now, as a minute of idleness would; returns how many are dormant."""
        import ctypes
        import gc

        async with self._lock:
            latest = max((sess.last_ts for sess in self.host.active.values()), default=0)
            self.host.sweep(latest + self.host.compact_after_ms)
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed pages back to the OS
        return len(self.host.dormant)

    async def wait_model_decision(self, version: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the shard has acted on model ``version``: scoring with it, or refused it."""
        self._start()

        async def decided() -> None:
            while self.scorer.version != version and version not in self.refused:
                self._model_swapped.clear()
                await self._model_swapped.wait()

        await asyncio.wait_for(decided(), timeout)
        return self.info()

    async def flush(self) -> int:
        """Write snapshots of every changed session now."""
        return await self.flush_snapshots()
