"""SessionShard: the Ray actor that hosts a slice of the sessions.

A thin shell around :class:`actors.core.host.SessionHost`. It adds what the pure
host must not do itself: loading sessions back from Redis (snapshot plus the
event log after it), writing snapshots and the intervention log, loading
and hot-swapping the model, and asking the Serve deployments for richer
content after an intervention has already gone out.

The actor is a plain (not asyncio) Ray actor. Gateways send batches over
the shard's link (:mod:`actors.shard.link`), whose thread runs them; Ray calls of
``handle`` (tools, benchmarks) run on Ray's thread; a lock keeps it to one
batch at a time either way, so a session's events are applied in the order
the gateway sent them. All Redis and Serve I/O runs on
a private event loop in a background thread: snapshots, the intervention
log, model polling and enrichment never delay the reply that carries the
scores and decisions back to the gateway, and a batch waits for I/O only to
activate sessions it does not hold. (As an asyncio actor, Ray handed every
call between its thread and the event loop's: ~1.9 ms more CPU per call, a
third of a small batch's cost.) The host is shared by the two threads under
a lock that is never held across I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import msgpack
import ray
import redis

from actors.shard import lean  # noqa: F401  (first: keeps scikit-learn out of shard processes)

# isort: split

from actors.core.host import BatchItem, Forget, SessionHost, Visit, unpack_batch
from actors.core.kinds import KIND
from actors.core.placement import HashRing
from actors.core.policy import Decision
from actors.core.reasons import Driver, top_drivers
from actors.core.retention import Retention
from actors.core.session import snapshot_seq
from actors.core.sites import Site, load_sites
from actors.model.scoring import SchemaMismatch, Scorer
from actors.shard.index import Entry, SessionIndex
from actors.shard.link import LinkServer, LinkTLS
from actors.shard.profiles import ShardProfiles, finished
from actors.shard.records import ShardRecords
from actors.shard.tallies import ShardTallies
from cluster.config import Settings
from cluster.keys import Keys
from cluster.loops import Failures, Supervisor, bounded
from cluster.redis_client import redis_client
from cluster.sealing import MasterKeys, Opener, master_keys
from cluster.site_rules import SiteRules
from cluster.tracing import Carrier, TraceConfig, Tracing, tracing_for

log = logging.getLogger("lifeline.shard")

SNAPSHOT_EVERY_S = 5.0  # a changed session's snapshot is at most this old (plus a tick)
# Log entries read first when activating a session. A visitor's frames come a few a second
# at most (the client flushes 100 ms after an event), so these usually reach back past its
# snapshot (at most SNAPSHOT_EVERY_S old) and a restart's backlog; when not, the whole log.
TAIL_ENTRIES = 32
SNAPSHOT_TICK_S = 0.5  # each tick writes the sessions whose snapshot is due: a tenth of them
SWEEP_EVERY_S = 10.0
MODEL_POLL_S = 1.0
ENRICH_BUDGET_S = 2.5  # LLM text later than this after the trigger is dropped (the nudge budget)


def first_events(items: Sequence[BatchItem | Forget]) -> dict[str, tuple[str, int]]:
    """(site, seq of its first event in the batch) per session that sends events here."""
    firsts: dict[str, tuple[str, int]] = {}
    for sid, site, _consent, events in items:
        if sid not in firsts and events:  # a Forget has no events
            firsts[sid] = (site, events[0]["seq"])
    return firsts


def forgotten(items: Sequence[BatchItem | Forget]) -> list[Forget]:
    """Sessions the batch withdraws: its explicit :class:`Forget` items, and nothing else.

    Never inferred from an events item's consent: events whose session left
    its connection while they were on their way carry the consent they were
    validated with, and even an empty one erases nothing.
    """
    return [item for item in items if type(item) is Forget]


def outcome_events(
    items: Sequence[BatchItem | Forget], sites: dict[str, Site]
) -> tuple[list[tuple[str, str, int, str, str]], list[tuple[str, str, str, int, int]]]:
    """What the batch's visitors did about interventions and goals, for the records.

    (type, iid, ts, sid, site) of each intervention_shown/accepted/dismissed,
    with the session and site that sent it (the record script refuses an
    outcome for another session's intervention), and (sid, site, goal, seq,
    ts) of each conversion: a purchase, or a custom event the site names as
    a goal (:meth:`actors.core.sites.Site.conversion`).
    """
    outcomes: list[tuple[str, str, int, str, str]] = []
    conversions: list[tuple[str, str, str, int, int]] = []
    for sid, site, _consent, events in items:
        for ev in events:
            etype = ev["type"]
            if etype.startswith("intervention_"):
                outcomes.append((etype, ev["iid"], ev["ts"], sid, site))
            elif etype == "purchase" or etype == "custom":
                rules = sites.get(site)
                goal = rules.conversion(ev) if rules is not None else None
                if goal is not None:
                    conversions.append((sid, site, goal, ev["seq"], ev["ts"]))
    return outcomes, conversions


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
    if KIND[d.kind].follow_up == "recommend":
        frame["items"] = []  # filled by the Recommender's update
    return frame


class ShardCore:
    """Everything a shard does, without Ray (so tests and benchmarks can host one in-process)."""

    def __init__(
        self,
        index: int,
        redis_url: str,
        prefix: str,
        sites_file: str,
        idle_deactivate_s: float = 1800.0,
        enrich: bool = True,
        tracing: TraceConfig | None = None,
        master: MasterKeys | None = None,
    ) -> None:
        self.index = index
        # The event log's master keys: recovery opens sealed entries (cluster/sealing.py).
        # Not given (a hand-made shard): this process's LIFELINE_DATA_KEY.
        self.master = master if master is not None else master_keys(Settings())
        # None when tracing is off: the batch path then tests one attribute (cluster/tracing.py).
        self.tracing: Tracing | None = tracing_for("lifeline-shard", tracing)
        self.keys = Keys(prefix)
        self.prefix = prefix
        # The sites file's rules, then the run-time overrides (cluster/site_rules.py).
        self.site_rules = SiteRules(load_sites(sites_file), self.keys, log)
        self.sites: dict[str, Site] = self._initial_sites(redis_url)
        self.host = SessionHost(
            self._rules,
            deactivate_after_ms=idle_deactivate_s * 1000.0,
            snapshot_ticks=round(SNAPSHOT_EVERY_S / SNAPSHOT_TICK_S),
        )
        self.redis_url = redis_url
        self.redis = redis_client(redis_url, aio=True, max_connections=64)  # the I/O loop only
        self.records = ShardRecords(self.redis, self.keys, self._retention)
        self.profiles = ShardProfiles(
            self.redis, self.keys, self._retention
        )  # visitors' memory across visits
        # The explorer's index.
        self.session_index = SessionIndex(self.redis, self.keys, self.sites, self._retention)
        self.tallies = ShardTallies(
            self.redis, self.keys, self.sites, lambda site: self._rules(site)[1].holdout
        )
        self.scorer = self._initial_model()
        # A challenger model and the share of sessions it scores (model:challenger), or None.
        self.challenger: tuple[Scorer, float] | None = None
        self._lock = (
            threading.Lock()
        )  # the host, between a batch and the I/O loop; never held across I/O
        self._io = asyncio.new_event_loop()
        threading.Thread(target=self._io.run_forever, name="shard-io", daemon=True).start()
        self._tasks: set[asyncio.Task] = set()
        self._recording: set[asyncio.Task] = set()  # intervention records being written
        self._started = False
        self._stopped = False
        self.enrich = enrich
        self._followups = None  # serve.apps.deployments.FollowUps, made on first use
        self._model_swapped = threading.Condition()
        self._sites_applied = threading.Condition()
        self.refused: set[str] = set()  # model versions this shard will not load
        self._metrics = _ShardMetrics(index)
        self.stats = {
            "batches": 0,
            "events": 0,
            "skipped": 0,
            "decisions": 0,
            "activations": 0,
            "load_ms": 0.0,  # reading sessions to activate from Redis (snapshot, log, counts)
            "whole_log_reads": 0,  # activations whose log tail did not reach their snapshot
            "model_swaps": 0,
            "model_refusals": 0,
            "busy_ms": 0.0,
            "lock_wait_ms": 0.0,
            "inbound_ms": 0.0,  # from the gateway's send to this batch's start (the link and queueing)
            "forgotten": 0,  # sessions dropped on a withdrawal of analytics consent
            "released": 0,  # sessions handed over to another shard by a shard-set change
            "outcomes_refused": 0,  # intervention outcomes naming another session's record
            "unreadable_entries": 0,  # logged entries whose data key is gone (erased), skipped
        }
        # The I/O loop's long-running work: restarted if it fails, never ended silently.
        self.loops = Supervisor(log, f"shard {index}", counted=self._metrics.failed)
        self._last_sweep = time.monotonic()
        counted = self._metrics.failed
        self._unpackable = Failures("packing a session's snapshot", log, f"shard {index}", counted)
        self._record_failures = Failures(
            "writing intervention records", log, f"shard {index}", counted
        )
        self._index_failures = Failures("writing the session index", log, f"shard {index}", counted)

    # -- model ----------------------------------------------------------------

    def _registry(self):
        from training.registry import ModelRegistry  # training is optional at import time

        return ModelRegistry(redis_client(self.redis_url), self.prefix)

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

    async def _model_step(self) -> None:
        """One poll of the live model (every MODEL_POLL_S): swap in a newly promoted one.

        A GET a second: cheaper than a pub/sub connection per shard. The swap
        happens between batches; a mismatched or broken model is refused.
        """
        try:
            raw, chall = await (
                self.redis.pipeline(transaction=False)
                .get(self.keys.model("live"))
                .hgetall(self.keys.model("challenger"))
                .execute()
            )
        except redis.RedisError:
            return  # Redis is away: the next poll asks again
        await self._challenger_step(chall)
        version = raw.decode() if raw else None
        if not version or version == self.scorer.version or version in self.refused:
            return
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
            self._model_decided()  # wake waiters: the decision on this version is made
            return
        except Exception as exc:  # a broken blob must not take the shard down
            self.refused.add(version)
            self.stats["model_refusals"] += 1
            self._model_decided()
            log.error(
                "shard %d: cannot load model %s (%s); keeping %s",
                self.index,
                version,
                exc,
                self.scorer.version,
            )
            return
        # One assignment: a batch reads the scorer once, so it uses the old or the new one.
        self.scorer = scorer
        self._model_decided()
        self.stats["model_swaps"] += 1
        log.warning("shard %d: now scoring with model %s", self.index, version)

    async def _challenger_step(self, entry: dict[bytes, bytes]) -> None:
        """Follow ``model:challenger`` (version and share): load, swap or drop the challenger."""
        version = entry.get(b"version", b"").decode()
        try:
            share = float(entry.get(b"share", b"0"))
        except ValueError:
            share = 0.0
        if not version or share <= 0:
            if self.challenger is not None:
                log.warning(
                    "shard %d: challenger %s stopped", self.index, self.challenger[0].version
                )
            self.challenger = None
            return
        current = self.challenger
        if current is not None and current[0].version == version:
            if current[1] != share:
                self.challenger = (current[0], share)
            return
        if version in self.refused:
            return
        try:
            scorer = await asyncio.to_thread(self._load_version, version)
        except Exception as exc:  # a broken or mismatched challenger: the champion scores all
            self.refused.add(version)
            self.stats["model_refusals"] += 1
            log.error("shard %d: refusing challenger %s: %s", self.index, version, exc)
            self._model_decided()
            return
        self.challenger = (scorer, share)
        self._model_decided()
        log.warning(
            "shard %d: challenger %s scores %.0f %% of sessions", self.index, version, share * 100
        )

    def _challenger_version(self) -> str | None:
        c = self.challenger
        return c[0].version if c is not None else None

    def _model_decided(self) -> None:
        with self._model_swapped:
            self._model_swapped.notify_all()

    # -- sites ----------------------------------------------------------------

    def _initial_sites(self, redis_url: str) -> dict[str, Site]:
        try:
            return self.site_rules.read_sync(redis_client(redis_url))
        except redis.RedisError as exc:  # the sites loop reads them once Redis answers
            log.error("shard %d: site overrides not read (%s); the file's rules", self.index, exc)
            return self.site_rules.sites

    def _sites_changed(self, sites: dict[str, Site]) -> None:
        """New site rules (I/O loop): the next batch decides with them."""
        with self._lock:  # between batches; the host's budgets follow a changed share
            old, self.sites = self.sites, sites
            for key in old.keys() | sites.keys():  # a site removed takes the defaults
                self.host.rules_changed(key, (sites.get(key) or Site(key)).policy)
        with self._sites_applied:
            self._sites_applied.notify_all()

    def wait_sites(self, version: int, timeout: float = 10.0) -> dict[str, Any]:
        """Block until this shard applies site rules ``version`` (or later); returns info()."""
        self._start()
        with self._sites_applied:
            if not self._sites_applied.wait_for(
                lambda: self.site_rules.version >= version, timeout
            ):
                raise TimeoutError(f"shard {self.index} did not apply site rules {version}")
        return self.info()

    def site_rules_of(self, site: str) -> dict[str, Any]:
        """The rules this shard applies to ``site`` now, and the rules version they come from."""
        s = self.sites.get(site) or Site(site)
        return {
            "version": self.site_rules.version,
            "origins": list(s.origins),
            "goals": list(s.goals),
            "policy": dataclasses.asdict(s.policy),
            "detectors": dataclasses.asdict(s.detectors),
        }

    def _retention(self, site: str) -> Retention:
        """``site``'s retention, as its rules now say (the default for a site not configured)."""
        known = self.sites.get(site)
        return known.retention if known is not None else Retention()

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

        def start_loops() -> None:  # on the I/O loop, which the supervisor's tasks run on
            self.loops.start("model", self._model_loop)
            self.loops.start("snapshots", self._snapshot_loop)
            self.loops.start("tallies", self.tallies.run)
            self.loops.start("sites", lambda: self.site_rules.loop(self.redis, self._sites_changed))

        self._io.call_soon_threadsafe(start_loops)

    async def _model_loop(self) -> None:
        while True:
            await asyncio.sleep(MODEL_POLL_S)
            await self._model_step()

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_TICK_S)
            await self._snapshot_step()

    def _spawn(self, coro: Coroutine[Any, Any, Any], also: set[asyncio.Task] | None = None) -> None:
        """Run ``coro`` on the I/O loop in the background (callable from any thread).

        ``also``: a set that holds the task too while it runs.
        """

        def start() -> None:
            task = self._io.create_task(coro)
            for tasks in (self._tasks, also):
                if tasks is not None:
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

        self._io.call_soon_threadsafe(start)

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coro`` on the I/O loop and wait for its result (never with the lock held)."""
        return asyncio.run_coroutine_threadsafe(coro, self._io).result(timeout)

    def handle(self, batch: bytes, gateway_id: str = "", sent_at: float = 0.0) -> bytes:
        """Process one batch (:func:`actors.core.host.pack_batch`); ``sent_at``: the caller's time.time().

        Returns, msgpack-packed, a list of (sid, seqs, scores, intervention
        frames) per session, and (item index, ``traceparent``) for each traced
        item whose events triggered a decision (cluster/tracing.py).
        """
        if sent_at:
            self.stats["inbound_ms"] += (time.time() - sent_at) * 1000.0
        items, traced = unpack_batch(batch)
        self._start()
        started = time.perf_counter()
        clock = _ScoreClock() if self.tracing is not None else None
        firsts = first_events(items)
        loaded: dict[str, tuple] = {}
        # Visits that may use their visitor's profile: read before their events are scored.
        histories = self._histories(items)
        while True:
            with self._lock:
                missing = self._to_load(items, firsts)
                need = [sid for sid in missing if sid not in loaded]
                if not need:
                    locked = time.perf_counter()
                    out, decisions, scored, follow_ups, iv_counts = self._process(
                        items, loaded, missing, gateway_id, clock, histories
                    )
                    processed = time.perf_counter()
                    break
            # Sessions are read from Redis without the lock; the loop checks again
            # what is missing, in case the sweep retired a session meanwhile.
            reading = time.perf_counter()
            loaded.update(self._run(self._load(need, firsts)))
            self.stats["load_ms"] += (time.perf_counter() - reading) * 1000.0
        self.stats["batches"] += 1
        self.stats["busy_ms"] += (time.perf_counter() - locked) * 1000.0
        self.stats["lock_wait_ms"] += (locked - started) * 1000.0
        self._metrics.batch(sum(len(r[1]) for r in out), time.perf_counter() - started, decisions)
        triggered: list[tuple[int, str]] = []
        carriers: dict[tuple[str, int], Carrier] = {}
        if clock is not None and (traced or decisions):
            assert self.tracing is not None
            clock.spans = (started, locked, processed, time.perf_counter())
            triggered, carriers = self._trace(self.tracing, items, traced, decisions, clock)
        outcomes, conversions = outcome_events(items, self.sites)
        if decisions or outcomes or conversions:
            self.stats["decisions"] += len(decisions)
            sites = {item[0]: item[1] for item in items} if decisions else {}
            self._spawn(
                self._record(decisions, scored, outcomes, iv_counts, sites, conversions),
                self._recording,
            )
        if follow_ups:
            channel = self.keys.push(gateway_id)
            traces = [carriers.get((d.sid, d.seq)) for d, _ in follow_ups]
            self._io.call_soon_threadsafe(self._enrich, follow_ups, channel, traces)
        gone = forgotten(items)
        if gone:
            # Before the reply: once the gateway hears back, nothing of them is left here.
            self._run(self._erase(gone))
        return msgpack.packb((out, triggered))

    def _trace(
        self,
        tr: Tracing,
        items: Sequence[BatchItem | Forget],
        traced: dict[int, str],
        decisions: list[Decision],
        clock: _ScoreClock,
    ) -> tuple[list[tuple[int, str]], dict[tuple[str, int], Carrier]]:
        """Record this batch's spans for each traced item and each item that triggered a decision.

        An item the gateway did not sample but whose events triggered a
        decision gets a trace here, with ids made up for the gateway's
        shard-call span, which the reply's (index, traceparent) lets the
        gateway record in the same trace. Returns those pairs, and the W3C
        context of each decision's ``decide`` span, by (sid, seq), for its
        follow-up. Off the batch's lock; ~20 us per traced item (loadtests/bench_tracing.py).
        """
        by_item: dict[int, list[Decision]] = {}
        for d in decisions:  # the item whose events include the triggering one
            for i, (sid, _site, _consent, events) in enumerate(items):
                if sid == d.sid and events and events[0]["seq"] <= d.seq <= events[-1]["seq"]:
                    by_item.setdefault(i, []).append(d)
                    break
        started, locked, processed, done = clock.spans
        score0 = clock.start or locked
        score1 = clock.end or score0
        n = sum(len(item[3]) for item in items)
        triggered: list[tuple[int, str]] = []
        carriers: dict[tuple[str, int], Carrier] = {}
        for i in sorted(set(traced) | set(by_item)):
            tp = traced.get(i)
            parent = tr.parent_of(tp) if tp else None
            if parent is None:  # not sampled at the head: the trace starts here, the gateway joins
                trace_id, call_id = tr.new_trace_id(), tr.new_span_id()
            else:
                trace_id, call_id = parent.trace_id, parent.span_id
            ds = by_item.get(i, [])
            if ds:
                triggered.append(
                    (i, tp if parent is not None else tr.traceparent(trace_id, call_id))
                )
            item = items[i]
            batch_id, decide_id = tr.new_span_id(), tr.new_span_id()
            attrs = {"lifeline.shard": self.index, "lifeline.site": item[1]}
            tr.record(
                "lifeline.shard.batch",
                trace_id,
                batch_id,
                call_id,
                started,
                done,
                {**attrs, "lifeline.batch_events": n, "lifeline.events": len(item[3])},
                remote_parent=True,
            )
            tr.record("lifeline.shard.apply", trace_id, tr.new_span_id(), batch_id, locked, score0)
            tr.record(
                "lifeline.shard.score",
                trace_id,
                tr.new_span_id(),
                batch_id,
                score0,
                score1,
                {"lifeline.rows": clock.rows},
            )
            decided = {"lifeline.decisions": len(ds)}
            if ds:
                decided["lifeline.kinds"] = [d.kind for d in ds]
                decided["lifeline.iids"] = [d.iid for d in ds]
                decided["lifeline.holdout"] = [d.holdout for d in ds]
                decided["lifeline.trigger_seqs"] = [d.seq for d in ds]
            tr.record(
                "lifeline.shard.decide", trace_id, decide_id, batch_id, score1, processed, decided
            )
            for d in ds:
                carriers[(d.sid, d.seq)] = {"traceparent": tr.traceparent(trace_id, decide_id)}
        return triggered, carriers

    @staticmethod
    def _template(d: Decision) -> str:
        from serve.apps.nudge import render_template

        return render_template(d.kind, d.signals, d.page_type)

    def _process(
        self,
        items: Sequence[BatchItem | Forget],
        loaded: dict[str, tuple],
        missing: list[str],
        gateway_id: str,
        clock: _ScoreClock | None = None,
        histories: dict[str, list[Any]] | None = None,
    ) -> tuple[
        list[tuple],
        list[Decision],
        list[tuple[list[float], Scorer]],
        list[tuple[Decision, dict[str, Any]]],
        dict[str, int],
    ]:
        """Activate the missing sessions from what was loaded, then apply, score and decide.

        Called with the lock held; ``missing`` is :meth:`_to_load` under that same lock.
        ``clock``: when tracing, times the model's calls. ``histories``: what each
        visit with personalisation consent may use of its visitor's profile, by sid.
        """
        for sid in missing:
            self._activate(sid, *loaded[sid])
        scorer, challenger = self.scorer, self.challenger  # each read once per batch
        segment = scorer.segments.nearest if scorer.segments is not None else None
        score: Any = scorer
        timed_challenger: Any = challenger
        if clock is not None:
            score = clock.timed(scorer)
            if challenger is not None:
                timed_challenger = (clock.timed(challenger[0]), challenger[1])
        out = []
        decisions: list[Decision] = []
        # The feature row of each decision and the model that scored it: its drivers and its record.
        scored: list[tuple[list[float], Scorer]] = []
        follow_ups: list[tuple[Decision, dict[str, Any]]] = []
        iv_counts: dict[str, int] = {}
        results = self._apply(items, score, segment, timed_challenger, histories or {})
        # The console's counts, in memory; written by the tallies loop (actors/shard/tallies.py).
        names = scorer.segments.names if scorer.segments is not None else ()
        self.tallies.batch(items, results, self.host.active, names)
        for r in results:
            frames = []
            used = challenger[0] if r.challenger and challenger is not None else scorer
            scored += [(row, used) for row in r.rows]
            for d in r.decisions:
                decisions.append(d)
                session = self.host.active.get(d.sid)
                iv_counts[d.sid] = session.iv_count if session is not None else 1
                if not d.holdout:
                    frames.append(decision_frame(d, self._template(d)))
                    if self.enrich and gateway_id and d.personalized and session is not None:
                        follow_ups.append((d, self._enrich_context(d, session)))
            out.append((r.sid, r.seqs, r.scores, frames))
            self.stats["events"] += len(r.seqs)
            self.stats["skipped"] += r.skipped
        return out, decisions, scored, follow_ups, iv_counts

    def _apply(
        self,
        items: Sequence[BatchItem | Forget],
        scorer: Scorer,
        segment: Any,
        challenger: tuple[Scorer, float] | None = None,
        histories: dict[str, list[Any]] | None = None,
    ) -> list[Any]:
        """Run the host over the batch; a withdrawal forgets its session where it stands in it."""
        histories = histories or {}
        results: list[Any] = []
        live: list[BatchItem] = []
        for item in items:
            kind = type(item)
            if kind is Visit:
                # No history without personalisation consent: the visit is a first one.
                self.host.visit(item[0], item.vid, histories.get(item[0]))  # type: ignore[union-attr]
                continue
            if kind is not Forget:
                live.append(item)
                continue
            if live:  # the session's events before the withdrawal are applied first
                results += self.host.process(live, scorer, segment, challenger=challenger)
                live = []
            self.host.forget(item[0])
            self.stats["forgotten"] += 1
        if live:
            results += self.host.process(live, scorer, segment, challenger=challenger)
        return results

    def _histories(self, items: Sequence[BatchItem | Forget | Visit]) -> dict[str, list[Any]]:
        """The profile-based history of each visit in ``items`` with personalisation consent, by sid.

        Once per hello that named a visitor (a per-session cost, never per
        event), read before the batch is processed, like a session's
        activation. Redis failing: the visits go on as first visits.
        """
        visits = [
            (item.sid, item.site, item.vid)
            for item in items
            if type(item) is Visit and "personalization" in item.consent
        ]
        if not visits:
            return {}
        try:
            return self._run(self.profiles.histories(visits, time.time() * 1000.0))
        except redis.RedisError as exc:
            log.error(
                "shard %d: could not read %d visitor profiles: %s", self.index, len(visits), exc
            )
            return {}

    def _to_load(
        self, items: Sequence[BatchItem | Forget], firsts: dict[str, tuple[str, int]]
    ) -> list[str]:
        """Sessions of ``items`` this shard does not hold and that have a past in Redis.

        A batch whose first event of a session is seq 1 starts that session:
        nothing was logged before it, so there is nothing to load.
        """
        return [sid for sid in self.host.missing(items) if firsts.get(sid, ("", 0))[1] > 1]

    async def _load(self, need: list[str], firsts: dict[str, tuple[str, int]]) -> dict[str, tuple]:
        """Read snapshots, logged events and decision counts of ``need`` (on the I/O loop).

        Of a log, only the newest ``TAIL_ENTRIES`` entries are read at first: a
        snapshot is at most a few seconds old, so they usually hold every event
        after it. The whole log is read for a session whose tail does not reach
        back to its snapshot (or that has no readable snapshot), so what
        :meth:`SessionHost.activate` gets is always complete.
        """
        pipe = self.redis.pipeline(transaction=False)
        keys = self.keys
        for sid in need:
            site = firsts[sid][0]
            pipe.get(keys.snapshot(site, sid))
            pipe.xrevrange(keys.events(site, sid), count=TAIL_ENTRIES)
            pipe.hmget(keys.session(site, sid), "iv_count", "iv_last", "vid")
        replies = await pipe.execute()
        snaps = [msgpack.unpackb(snap) if snap else None for snap in replies[0::3]]
        logs = [entries[::-1] for entries in replies[1::3]]
        short = [
            i
            for i, entries in enumerate(logs)
            if len(entries) == TAIL_ENTRIES
            and int(entries[0][1][b"f"]) > snapshot_seq(snaps[i]) + 1
        ]
        if short:
            pipe = self.redis.pipeline(transaction=False)
            for i in short:
                pipe.xrange(keys.events(firsts[need[i]][0], need[i]))
            for i, entries in zip(short, await pipe.execute(), strict=True):
                logs[i] = entries
            self.stats["whole_log_reads"] += len(short)
        # Sealed entries open with their subjects' data keys, read once for all of them
        # (activations only: the hot path gets plaintext over the link).
        opener = Opener(keys, self.master)
        await opener.aload(self.redis, (f.get(b"k") for es in logs for _, f in es))
        out: dict[str, tuple] = {}
        for i, sid in enumerate(need):
            state, entries, ivs = snaps[i], logs[i], replies[3 * i + 2]
            site, before = firsts[sid]
            events: list[dict[str, Any]] = []
            for _eid, fields in entries:
                if int(fields[b"f"]) >= before:
                    continue
                payload = opener.open_fields(fields)
                if payload is None:  # its data key is gone: the visitor was erased
                    continue
                if int(fields[b"l"]) < before:
                    events.extend(msgpack.unpackb(payload))
                else:
                    events.extend(e for e in msgpack.unpackb(payload) if e["seq"] < before)
            out[sid] = (site, state, events, before, ivs)
        self.stats["unreadable_entries"] += opener.unreadable
        if opener.unopenable_keys:  # not an erasure: this shard lacks a master key in use
            log.error(
                "shard %d: %d data keys open with no configured master key (LIFELINE_DATA_KEY)",
                self.index,
                opener.unopenable_keys,
            )
        return out

    def _activate(
        self, sid: str, site: str, state: Any, events: list[dict[str, Any]], before: int, ivs: Any
    ) -> None:
        session = self.host.activate(sid, site, state, events, before)
        # Decisions made after the snapshot live in the session hash, and so does its visitor.
        iv_count, iv_last, vid = ivs
        if vid is not None and session.vid is None:
            session.vid = vid.decode() if isinstance(vid, bytes) else vid
        if iv_count is not None:
            session.iv_count = max(session.iv_count, int(iv_count))
            session.iv_last_ts = max(session.iv_last_ts, int(float(iv_last or 0)))
        self.stats["activations"] += 1

    # -- background I/O ----------------------------------------------------------

    async def _record(
        self,
        decisions: list[Decision],
        scored: list[tuple[list[float], Scorer]],
        outcomes: list[tuple[str, str, int, str, str]],
        iv_counts: dict[str, int],
        sites: dict[str, str],
        conversions: list[tuple[str, str, str, int, int]],
    ) -> None:
        """Write decisions to the intervention log, record outcomes and conversions; never raises.

        Each decision's drivers (the features that pushed its score up most)
        are computed here, in a worker thread, from its feature row and the
        model that scored it (``scored``): the visitor's help went out with the
        batch's reply, without waiting for them.

        ``sites``: the site of each deciding session, stored in its records so
        that an outcome from another site's session can be refused.
        """
        names = self.scorer.segments.names if self.scorer.segments is not None else ()
        fields = [
            {
                "sid": d.sid,
                "site": sites.get(d.sid, ""),
                "seq": d.seq,
                "ts": d.ts,
                "kind": d.kind,
                "score": d.score,
                "trigger": d.trigger,
                "holdout": int(d.holdout),
                "page_type": d.page_type,
                "reasons": json.dumps([[r.signal, r.strength] for r in d.reasons]),
                "model": used.version,
                "drivers": json.dumps([[x.feature, x.words, x.value, x.push] for x in drivers]),
                # The segment's index means something only with its model; its name reads.
                "segment": "" if d.segment is None else d.segment,
                "segment_name": names[d.segment]
                if d.segment is not None and d.segment < len(names)
                else "",
                # Returning visitors (with personalisation consent): what their profile said.
                "returning": json.dumps(list(d.returning)) if d.returning else "",
            }
            for d, (_row, used), drivers in zip(
                decisions, scored, await self._drivers(scored), strict=True
            )
        ]
        try:
            refused = await self.records.record(decisions, fields, iv_counts, outcomes, conversions)
        except redis.RedisError as exc:
            log.error(
                "shard %d: could not record %d decisions: %s", self.index, len(decisions), exc
            )
            return
        except Exception as exc:  # a task's exception would otherwise vanish unseen
            self._record_failures.note(exc)
            return
        if refused:
            # Another session's intervention id: a forged or confused client. Dropped.
            self.stats["outcomes_refused"] += refused

    async def _drivers(self, scored: list[tuple[list[float], Scorer]]) -> list[tuple[Driver, ...]]:
        """The drivers of each decision row under its model; none (never an exception) on failure."""
        out: list[tuple[Driver, ...]] = [()] * len(scored)
        by_model: dict[int, list[int]] = {}
        for i, (_row, used) in enumerate(scored):
            by_model.setdefault(id(used), []).append(i)
        for idx in by_model.values():
            used = scored[idx[0]][1]
            try:
                contributions = await asyncio.to_thread(used.explain, [scored[i][0] for i in idx])
            except Exception as exc:  # reasons are for operators: the decision is recorded anyway
                self._record_failures.note(exc)
                continue
            for i, c in zip(idx, contributions, strict=True):
                out[i] = top_drivers(c, scored[i][0])
        return out

    async def _erase(self, gone: list[Forget]) -> None:
        """Delete what sessions whose analytics consent was withdrawn left in Redis.

        Their event logs, snapshots and intervention records go; the session
        hash (with the consent) and the consent records stay: they are the
        record of the withdrawal. Records still being written go first, so
        none is written after the erase.
        """
        await self._records_written()
        try:
            await self.records.erase([(f.site, f.sid) for f in gone])
        except redis.RedisError as exc:
            log.error(
                "shard %d: could not erase %d withdrawn sessions: %s", self.index, len(gone), exc
            )

    async def _snapshot_step(self) -> None:
        """One snapshot tick (every SNAPSHOT_TICK_S), and the idle sweep every SWEEP_EVERY_S.

        Writing every live session's snapshot at once held the batch lock for
        20-75 ms and both cores for up to 300 ms every 5 s at 10k events/s:
        most of the spine's latency tail. Small ticks keep each pause short.
        """
        sweep_at = None
        if time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = time.monotonic()
            sweep_at = time.time() * 1000.0
        await self._tick(sweep_at)

    async def _tick(self, sweep_at: float | None) -> int:
        """Write the due snapshots; with ``sweep_at`` (ms), retire the sessions idle at that time.

        A retired session's visitor profile is updated after its last snapshot.
        Returns how many sessions were retired.
        """
        retired: list[tuple[str, str, bytes]] = []
        with self._lock:  # held by a batch for its compute only, never across I/O
            unpackable = self.host.unpackable
            states = self.host.take_dirty()
            if sweep_at is not None:
                retired = self.host.sweep(sweep_at)
                states += retired
            if self.host.unpackable != unpackable:  # skipped, the others went ahead
                self._unpackable.note(self.host.last_pack_error)
            # The explorer's index rides on the snapshot tick: no per-event cost.
            seen = self.session_index.seen(self.host, states)
        await self._write_snapshots(states, seen)
        if retired:
            await self._remember(retired)
        if sweep_at is not None:
            try:  # the decisions' retention, on the intervention log all sites share
                await self.records.trim_log(list(self.sites), int(time.time() * 1000))
            except redis.RedisError as exc:
                log.error("shard %d: intervention-log trim failed: %s", self.index, exc)
        return len(retired)

    async def _remember(self, states: Sequence[tuple[str, str, bytes]]) -> None:
        """Merge these sessions (sid, site, packed state) into their visitors' profiles.

        Only those with a visitor id and analytics consent (actors/shard/profiles.py).
        Off the batch path, on the I/O loop; a failure is logged, never raised.
        """
        try:
            sessions = await asyncio.to_thread(finished, states, self._segment_name())
            if sessions:
                await self.profiles.remember(sessions)
        except Exception as exc:  # a memory: never the snapshot loop's failure
            self._record_failures.note(exc)

    def _segment_name(self) -> Any:
        """A function from a feature row to its segment's name, or None if the model has none."""
        segments = self.scorer.segments
        if segments is None:
            return None
        names = segments.names

        def name(row: list[float]) -> str | None:
            i = segments.nearest(row)
            return names[i] if i is not None and i < len(names) else None

        return name

    def retire_idle(self, now_ms: float) -> int:
        """Run the idle sweep as if the clock read ``now_ms``: tests and operators.

        The sessions idle past the timeout by then are snapshotted, dropped from
        memory, and merged into their visitors' profiles. Returns how many.
        """
        self._start()
        return self._run(self._tick(now_ms))

    async def _write_snapshots(
        self, states: list[tuple[str, str, bytes]], seen: list[Entry] | None = None
    ) -> None:
        if states:
            try:
                await self.records.snapshots(states)
            except redis.RedisError as exc:
                # Snapshots only shorten recovery; the event log alone is enough to rebuild.
                log.error(
                    "shard %d: snapshot write failed for %d sessions: %s",
                    self.index,
                    len(states),
                    exc,
                )
        if seen is not None:
            try:
                await self.session_index.write(seen)
            except Exception as exc:  # the explorer's: never the snapshots' loop's failure
                self._index_failures.note(exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the records being written, cancel the background loops, close Redis, end the I/O loop.

        For tests and tools that host a core in-process; snapshots not yet
        written are not written (:meth:`flush_snapshots` first for that).
        A second call does nothing.
        """
        if self._stopped:
            return
        self._stopped = True

        # Each step bounded (logged by name when it overruns), so that one that hangs leaves
        # the rest to run: closing the Redis client once hung a full test run's stop for
        # 30 s (redis-py's asyncio disconnect can wait for ever on a socket's close).
        step_s = timeout / 6  # five steps, and room for the rest within ``timeout``

        async def cancel_tasks() -> None:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        async def stop_all() -> None:
            await bounded("the records being written", self._records_written(), step_s, log)
            await bounded("the background loops", self.loops.stop(), step_s, log)
            # Counted but not yet written: nothing lost on a clean stop.
            await bounded("the tallies' flush", self.tallies.flush(), step_s, log)
            await bounded("the background tasks", cancel_tasks(), step_s, log)
            await bounded("closing Redis", self.redis.aclose(), step_s, log)

        self._run(stop_all(), timeout)
        self._io.call_soon_threadsafe(self._io.stop)

    def flush_snapshots(self) -> int:
        """Write every changed session's snapshot now, after the records being written (and the tallies).

        For tests and a graceful shutdown: once it returns, Redis holds
        everything this shard has decided and applied, and its console counts. Returns how many
        snapshots were written.
        """
        with self._lock:
            unpackable = self.host.unpackable
            states = self.host.take_dirty(everything=True)
            if self.host.unpackable != unpackable:
                self._unpackable.note(self.host.last_pack_error)
            seen = self.session_index.seen(self.host, states)
            held = self.host.held_with_visitor()
        self._run(self._flush(states, seen, held))
        return len(states)

    def release(self, members: list[str], me: str) -> int:
        """Hand over the sessions a new shard set gives to other shards; returns how many.

        Each held session that the ring of ``members`` does not place on
        ``me`` is snapshotted and dropped, after the decision records being
        written: the shard that gets it next activates it from Redis
        (snapshot + log, as after a crash), and a later move back here loads
        it again instead of using stale memory. The gateway calls this once
        it has drained every batch of the old set (serve/edge/pipeline.py).
        """
        ring = HashRing(members)
        with self._lock:
            held = [*self.host.active, *self.host.dormant]
            moved = [sid for sid in held if ring.owner(sid) != me]
            states = []
            for sid in moved:
                packed = self.host._try_packed(sid)
                if packed is not None:
                    states.append((sid, *packed))
                self.host.forget(sid)
        self._run(self._flush(states, []))
        self.stats["released"] += len(moved)
        return len(moved)

    async def _flush(
        self,
        states: list[tuple[str, str, bytes]],
        seen: list[Entry],
        held: Sequence[tuple[str, str, bytes]] = (),
    ) -> None:
        await self._records_written()
        await self._write_snapshots(states, seen)
        await self.tallies.flush()
        # A clean stop flushes: the sessions held so far count in their visitors' profiles
        # (merged again, idempotently, when they end on this shard or another).
        if held:
            await self._remember(held)

    async def _records_written(self) -> None:
        """Wait for the intervention records already being written (on the I/O loop)."""
        if self._recording:
            await asyncio.wait(list(self._recording))

    def _enrich_context(self, d: Decision, session: Any) -> dict[str, Any]:
        """What the deployment needs about the session, read while the batch holds the lock."""
        if KIND[d.kind].follow_up == "recommend":
            ctx = {
                "site": session.site,
                "recent_items": list(session.recent_items),
                "cart_items": list(session.cart_item_ids),
                "k": 4,
            }
            # The visitor's earlier visits seed it: with personalisation consent only.
            if session.history is not None and "personalization" in session.consent:
                ctx["history_items"] = list(session.history[2])
            return ctx
        return {
            **self._session_context(session, d.page_path, d.page_type, d.signals, d.segment),
            "iid": d.iid,
            "kind": d.kind,
            "template": self._template(d),
            "trigger_ms": d.ts,
        }

    @staticmethod
    def _session_context(
        session: Any, page_path: str, page_type: str, signals: dict[str, float], segment: Any
    ) -> dict[str, Any]:
        """The facts about a session an LLM prompt may use (the nudge writer's and the chat's).

        The deployments keep only allow-listed facts, and only with the consent
        the dict carries (serve/apps/nudge.py ``prompt_facts``).
        """
        return {
            "site": session.site,
            "page_path": page_path,
            "page_type": page_type,
            "signals": signals,
            "segment": segment,
            "cart": {"items": session.cart_items, "value": session.cart_value},
            "consent": list(session.consent),
        }

    def chat_context(self, sid: str) -> dict[str, Any] | None:
        """The context of a held session for the help chat's assistant, or None."""
        with self._lock:
            session = self.host.get(sid)
            if session is None:
                return None
            signals = {n: round(v, 3) for n, v in session.signals().items() if v > 0}
            seg = getattr(session, "segment", None)
            return self._session_context(
                session, session.page_path, session.page_type, signals, seg
            )

    def _enrich(
        self,
        follow_ups: list[tuple[Decision, dict[str, Any]]],
        channel: str,
        traces: Sequence[Carrier | None] = (),
    ) -> None:
        """Ask Serve for LLM nudges or recommendations; updates follow if in time (I/O loop).

        Runs in the background (:class:`serve.apps.deployments.FollowUps`): the
        interventions with their templated text have already gone out.
        ``traces``: per follow-up, the W3C context of its decision's span, or None.
        """
        follow = self._follow_ups()
        if follow is None:
            return

        async def push(frame: dict[str, Any]) -> None:
            await self.redis.publish(channel, msgpack.packb(frame))

        traces = list(traces) or [None] * len(follow_ups)
        for (d, ctx), trace in zip(follow_ups, traces, strict=True):
            follow.start(d.kind, d.sid, d.iid, ctx, d.ts, push, trace)

    def warm_up(self, timeout: float = 60.0) -> bool:
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

        async def first_calls() -> None:
            await asyncio.gather(
                follow.nudge_handle.llm_enabled.remote(),
                follow.recommender_handle.latency.remote(),
            )

        try:
            self._run(first_calls(), timeout)
        except Exception as exc:
            log.warning(
                "shard %d: Serve deployments did not answer at start-up (%s)", self.index, exc
            )
            return False
        return True

    def _follow_ups(self):
        if self._followups is None:
            from serve.apps.deployments import FollowUps

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
            self._followups = FollowUps(
                nudge,
                rec,
                budget_s=ENRICH_BUDGET_S,
                tracing=self.tracing,
                observe=self._metrics.follow_up,
            )
        return self._followups

    def session_row(self, sid: str) -> list[float] | None:
        """The current feature row of one session, or None if this shard does not hold it."""
        with self._lock:
            session = self.host.get(sid)
            return session.row() if session else None

    def session_visitor(self, sid: str) -> str | None:
        """The visitor id of one session this shard holds, or None (tests and operators)."""
        with self._lock:
            session = self.host.get(sid)
            return session.vid if session else None

    def session_history(self, sid: str) -> list[Any] | None:
        """What one held session may use of its visitor's profile, or None (tests and operators)."""
        with self._lock:
            session = self.host.get(sid)
            return session.history if session else None

    def compact_all(self) -> int:
        """Compact every session now, as a minute of idleness would; returns how many are dormant."""
        with self._lock:
            latest = max((sess.last_ts for sess in self.host.active.values()), default=0)
            self.host.sweep(latest + self.host.compact_after_ms)
            return len(self.host.dormant)

    def wait_model_decision(self, version: str, timeout: float = 30.0) -> dict[str, Any]:
        """Block until the shard scores with model ``version`` or has refused it; returns info()."""
        self._start()
        with self._model_swapped:
            decided = self._model_swapped.wait_for(
                lambda: (
                    version in (self.scorer.version, self._challenger_version())
                    or version in self.refused
                ),
                timeout,
            )
        if not decided:
            raise TimeoutError(f"shard {self.index} did not act on model {version} in {timeout} s")
        return self.info()

    def info(self) -> dict[str, Any]:
        """What this shard is doing and whether it is well; gateways' /healthz shows it."""
        loops = self.loops.health()
        loops_failed = [name for name, state in loops.items() if not state["healthy"]]
        return {
            "index": self.index,
            "sessions_active": len(self.host.active),
            "sessions_dormant": len(self.host.dormant),
            "model": self.scorer.version,
            "challenger": self._challenger_version(),
            "sites_version": self.site_rules.version,
            "unreadable_snapshots": self.host.unreadable_snapshots,
            **self.stats,
            # Health: False while a background loop is down or failing every time
            # (loops_failed names them); the counts say how often anything failed.
            "healthy": not loops_failed,
            "loops_failed": loops_failed,
            "loop_failures": dict(self.loops.counts),
            "sessions_unpackable": self.host.unpackable,
            "record_failures": self._record_failures.count,
            "index_failures": self._index_failures.count,
            "sessions_indexed": self.session_index.indexed,
            **(
                {f"followups_{k}": v for k, v in self._followups.counts.items()}
                if self._followups
                else {}
            ),
        }


class _ScoreClock:
    """When a traced batch's model calls began and ended (perf_counter), and the rows they scored.

    Made per batch only while tracing is on: two clock reads per model call.
    ``spans``: (started, locked, processed, done) of the batch, set after it.
    """

    __slots__ = ("start", "end", "rows", "spans")

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0
        self.rows = 0
        self.spans: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def timed(self, score: Any) -> Any:
        def call(rows: list[list[float]]) -> Any:
            t = time.perf_counter()
            if not self.start:
                self.start = t
            out = score(rows)
            self.end = time.perf_counter()
            self.rows += len(rows)
            return out

        return call


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
        self.failures = metrics.Counter(
            "lifeline_shard_failures",
            "background work that failed (a loop's iteration, a snapshot, a record write)",
            tag_keys=("shard", "what"),
        )
        self.failures.set_default_tags(tags)
        self.follow_ups = metrics.Histogram(
            "lifeline_shard_followup_seconds",
            "time a shard waited for an LLM nudge or recommendations (Serve), by outcome",
            boundaries=[0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0],
            tag_keys=("shard", "follow_up", "outcome"),
        )
        self.follow_ups.set_default_tags(tags)

    def follow_up(self, what: str, outcome: str, seconds: float) -> None:
        self.follow_ups.observe(seconds, tags={"follow_up": what, "outcome": outcome})

    def failed(self, what: str) -> None:
        self.failures.inc(1, tags={"what": what})

    def batch(self, events: int, seconds: float, decisions: list[Decision]) -> None:
        if events:
            self.events.inc(events)
        self.batch_size.observe(events)
        self.latency.observe(seconds * 1000.0)
        for d in decisions:
            self.decisions.inc(1, tags={"kind": d.kind, "holdout": str(d.holdout).lower()})


# Calls that only read, or write what is idempotent (a snapshot), are retried on the restarted
# actor when the shard dies under them (a killed process, a lost node); the rest are not:
# a batch is resent by its gateway, which knows which events it still needs.
SAFE_RETRIES = 3


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=1)
class SessionShard:
    """The Ray actor around a :class:`ShardCore`: restarted by Ray when it dies.

    Sessions come back from Redis after a restart. Batches arrive over its
    link (``link_address`` tells gateways where) or as ``handle`` calls, one
    at a time. The actor class itself has no ``async def``:
    Ray runs an actor with any coroutine method (even a private one) as an
    asyncio actor and hands every call to its event loop's thread, which cost
    ~1.9 ms of CPU per call.
    """

    def __init__(
        self,
        index: int,
        redis_url: str,
        prefix: str,
        sites_file: str,
        idle_deactivate_s: float = 1800.0,
        enrich: bool = True,
        tracing: TraceConfig | None = None,
        master: MasterKeys | None = None,
    ) -> None:
        self._started_at = time.time()  # wall clock: when Ray (re)started it, for operators
        self.core = ShardCore(
            index, redis_url, prefix, sites_file, idle_deactivate_s, enrich, tracing, master
        )
        # Batches come over the link's thread (gateways) or as Ray calls (tools, benchmarks):
        # one at a time either way, so each session's events stay in order.
        self._batch = threading.Lock()
        self.link = LinkServer(self.handle, ray.util.get_node_ip_address(), LinkTLS.from_env())
        self._ready_at = time.time()

    def handle(self, batch: bytes, gateway_id: str = "", sent_at: float = 0.0) -> bytes:
        with self._batch:
            return self.core.handle(batch, gateway_id, sent_at)

    def link_address(self) -> tuple[str, int, str]:
        """(host, port, token) of this shard's link, where gateways send their batches.

        Not retried by Ray (the class's default): its caller, the gateway's link, polls a
        restarting shard itself (actors/shard/link.py).
        """
        return self.link.address()

    @ray.method(max_task_retries=SAFE_RETRIES)
    def warm_up(self, timeout: float = 60.0) -> bool:
        return self.core.warm_up(timeout)

    @ray.method(max_task_retries=SAFE_RETRIES)
    def ping(self) -> dict[str, Any]:
        # The node too: on a cluster, where Ray placed (or re-placed) this shard.
        return {
            **self.core.info(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "started_at": self._started_at,  # this process's start (a restart moves it)
            "ready_at": self._ready_at,  # model loaded, link listening
        }

    @ray.method(max_task_retries=SAFE_RETRIES)
    def session_row(self, sid: str) -> list[float] | None:
        """The current feature row of one session (tests and operators)."""
        return self.core.session_row(sid)

    def session_visitor(self, sid: str) -> str | None:
        """The visitor id of one session this shard holds (tests and operators)."""
        return self.core.session_visitor(sid)

    def session_history(self, sid: str) -> list[Any] | None:
        """What one held session may use of its visitor's profile (tests and operators)."""
        return self.core.session_history(sid)

    @ray.method(max_task_retries=SAFE_RETRIES)
    def chat_context(self, sid: str) -> dict[str, Any] | None:
        """A held session's context for the help chat's assistant (serve/chat/relay.py)."""
        return self.core.chat_context(sid)

    @ray.method(max_task_retries=SAFE_RETRIES)
    def memory(self) -> dict[str, int]:
        """Resident memory and pid of this actor's process (benchmarks, operators)."""
        import psutil

        return {"rss": psutil.Process().memory_info().rss, "pid": os.getpid()}

    def compact_idle(self) -> int:
        """Compact every session now, as a minute of idleness would; returns how many are dormant."""
        import ctypes
        import gc

        dormant = self.core.compact_all()
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed pages back to the OS
        return dormant

    def wait_model_decision(self, version: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the shard has acted on model ``version``: scoring with it, or refused it.

        Batches wait meanwhile (one call at a time): for tests and operators,
        and the model poll decides within a second.
        """
        return self.core.wait_model_decision(version, timeout)

    def site_rules_of(self, site: str) -> dict[str, Any]:
        """The rules this shard applies to ``site`` now (:meth:`ShardCore.site_rules_of`)."""
        return self.core.site_rules_of(site)

    def wait_sites(self, version: int, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the shard applies site rules ``version``; for tests and operators."""
        return self.core.wait_sites(version, timeout)

    @ray.method(max_task_retries=SAFE_RETRIES)
    def flush(self) -> int:
        """Write snapshots of every changed session now, the console's counts and visitor profiles."""
        return self.core.flush_snapshots()

    def release(self, members: list[str], me: str) -> int:
        """Hand over the sessions the shard set ``members`` moves off ``me`` (:meth:`ShardCore.release`)."""
        with self._batch:  # between batches: none of them is half applied
            return self.core.release(members, me)

    def retire_idle(self, now_ms: float) -> int:
        """Retire the sessions idle at ``now_ms`` now (:meth:`ShardCore.retire_idle`)."""
        with self._batch:
            return self.core.retire_idle(now_ms)
