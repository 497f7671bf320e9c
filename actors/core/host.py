"""The virtual-actor host: many sessions in one process, processed in batches.

A :class:`SessionHost` keeps the sessions placed on one shard. Given a batch
(all events that reached the shard in the last few milliseconds, grouped
by session, each group in sequence order) it:

1. applies every event to its session, in order, collecting one feature row
   per event, computed right after that event;
2. scores all rows of the batch with a single call to the model;
3. runs the policy on each event's own view and score, in order, with the
   site's intervention budget (one :class:`~actors.core.budget.Budget` per
   site on this host).

Batching is across sessions, never across time: each event keeps its own row
and score. Idle sessions are compacted to bytes in memory after a minute
(a few hundred bytes instead of a few kilobytes), and handed back for
snapshotting and removal after the deactivation timeout.

Pure: no Ray, Redis or network imports. The Ray actor in
:mod:`actors.shard.actor` is a thin shell that feeds it and does the I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import msgpack

from actors.core.budget import Budget
from actors.core.detectors import DetectorConfig
from actors.core.policy import Decision, PolicyConfig, decide, in_challenger
from actors.core.reasons import top_drivers
from actors.core.session import EventView, Session, SnapshotMismatch

# (sid, site, consent recorded when the events were validated, normalised events in seq order)
BatchItem = tuple[str, str, Sequence[str], Sequence[dict[str, Any]]]

# The operation of each item of a shard batch, on the wire. A withdrawal is
# its own operation, never inferred from an item's consent: an events item
# whose consent reads empty (a session detached from its connection while its
# events were on their way, for instance) must never erase anything.
EVENTS = 0  # apply these events
FORGET = 1  # the visitor withdrew analytics consent: drop the session, erase its records
VISIT = 2  # a hello named the session's visitor: its events bytes are the visitor id


class Forget(NamedTuple):
    """A batch item that withdraws a session: the shard drops it and erases its records.

    Shaped like a :data:`BatchItem` with no events (so code that walks a
    batch's events skips it naturally); told apart by its type, never by
    its consent.
    """

    sid: str
    site: str
    consent: Sequence[str] = ()
    events: Sequence[dict[str, Any]] = ()


MAX_PENDING_VISITORS = 100_000  # Visits held for sessions whose first events have not come


class Visit(tuple):
    """A batch item that names a session's visitor (sent once per hello that carried one).

    Unpacks like a :class:`Forget`, ``(sid, site, consent, ())``, so code that
    walks a batch's events skips it; the visitor id is its ``vid``. It reaches
    the host before the events that follow the hello.
    """

    vid: str

    def __new__(cls, sid: str, site: str, consent: Sequence[str], vid: str) -> Visit:
        self = super().__new__(cls, (sid, site, tuple(consent), ()))
        self.vid = vid
        return self

    @property
    def sid(self) -> str:
        return self[0]

    @property
    def site(self) -> str:
        return self[1]

    @property
    def consent(self) -> tuple[str, ...]:
        return self[2]

    def __repr__(self) -> str:
        return f"Visit(sid={self[0]!r}, site={self[1]!r}, consent={self[2]!r}, vid={self.vid!r})"


# On the wire: (op, sid, site, consent, events as msgpack bytes); a forget's are () and b"",
# a visit's consent is the hello's and its bytes are the visitor id.
WireItem = tuple[int, str, str, Sequence[str], bytes]


def pack_batch(items: Sequence[WireItem], traced: Sequence[tuple[int, str]] = ()) -> bytes:
    """A shard call's wire form: the items, then the trace context of the traced ones.

    Each item is (op, sid, site, consent, events as the msgpack bytes the log
    holds): the gateway packs each run of events once, for the event log, and
    the shard call carries the same bytes: cheaper than Ray pickling the dicts
    (about 0.4 ms per 256 events on each side). ``op`` is :data:`EVENTS` or
    :data:`FORGET`; a forget's consent and events are ignored. ``traced``:
    (item index, W3C ``traceparent``) for the items whose frame is traced
    (cluster/tracing.py); empty for nearly every batch.
    """
    return msgpack.packb((items, traced))


def unpack_batch(data: bytes) -> tuple[list[BatchItem | Forget | Visit], dict[int, str]]:
    """A packed batch's items in order (events as a :data:`BatchItem`, withdrawals as
    :class:`Forget`, visitors as :class:`Visit`), and the ``traceparent`` of each traced
    item by its index.

    Raises ValueError for an operation it does not know (a peer of another release).
    """
    wire, traced = msgpack.unpackb(data)
    out: list[BatchItem | Forget | Visit] = []
    for op, sid, site, consent, ev in wire:
        if op == EVENTS:
            out.append((sid, site, consent, msgpack.unpackb(ev)))
        elif op == FORGET:
            out.append(Forget(sid, site))
        elif op == VISIT:
            out.append(Visit(sid, site, consent, ev.decode()))
        else:
            raise ValueError(f"unknown shard batch operation {op!r}")
    return out, {int(i): str(tp) for i, tp in traced}


ScoreFn = Callable[[list[list[float]]], Sequence[float]]
SegmentFn = Callable[[list[float]], int | None]
# Per-feature contributions of rows to their scores (Scorer.explain).
ExplainFn = Callable[[list[list[float]]], Sequence[Sequence[float]]]
RulesFn = Callable[[str], tuple[DetectorConfig, PolicyConfig]]


@dataclass
class SessionResult:
    """What one batch did for one session."""

    sid: str
    seqs: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)  # the feature row of each decision
    challenger: bool = False  # scored by the challenger model
    last_row: list[float] | None = None  # the feature row of its last event (the console's tally)
    skipped: int = 0  # events at or below the session's last seq (already applied)


def _default_rules(site: str) -> tuple[DetectorConfig, PolicyConfig]:
    return DetectorConfig(), PolicyConfig()


class SessionHost:
    """Hosts sessions, activates them on demand, compacts and retires idle ones."""

    def __init__(
        self,
        rules: RulesFn = _default_rules,
        compact_after_ms: float = 60_000,
        deactivate_after_ms: float = 30 * 60_000,
        snapshot_ticks: int = 1,
    ) -> None:
        self.rules = rules
        self.compact_after_ms = compact_after_ms
        self.deactivate_after_ms = deactivate_after_ms
        self.active: dict[str, Session] = {}
        self.dormant: dict[str, tuple[bytes, int, str]] = {}  # sid -> (state, last_ts, site)
        # Sessions changed since their last snapshot, by their turn among the
        # snapshot ticks. The turn is the id's hash: sessions that start together
        # (a load test, a campaign) still spread evenly over the ticks. The
        # built-in hash is salted per process, which is fine for a turn.
        self.dirty: list[set[str]] = [set() for _ in range(snapshot_ticks)]
        self.ticks = 0  # calls of take_dirty so far
        self.unreadable_snapshots = 0  # of another release's layout: rebuilt from the log
        # Times a session's state could not be packed (a value msgpack cannot hold):
        # that session is skipped, never the others; the shell logs and reports it.
        self.unpackable = 0
        self.last_pack_error = ""  # the latest of those failures, for the shell's log
        self.budgets: dict[str, Budget | None] = {}  # site -> its budget here (None: no budget)
        # Visitors named by a Visit before their session's first events reached this
        # host: taken when the session is made. Bounded: a hello whose events never
        # come must not hold memory for ever.
        self.visitors: dict[str, tuple[str, list[Any] | None]] = {}  # sid -> (vid, history)

    def __contains__(self, sid: str) -> bool:
        return sid in self.active or sid in self.dormant

    def __len__(self) -> int:
        return len(self.active) + len(self.dormant)

    def forget(self, sid: str) -> None:
        """Drop everything held about ``sid`` (its visitor withdrew analytics consent)."""
        self.active.pop(sid, None)
        self.dormant.pop(sid, None)
        self.visitors.pop(sid, None)
        self._turn(sid).discard(sid)

    def visit(self, sid: str, vid: str, history: list[Any] | None = None) -> None:
        """Name ``sid``'s visitor: now if the session is active, else when it is made or woken.

        ``history``: what the visit may use of the visitor's profile
        (:func:`actors.core.profile.history_of`), given only with personalisation
        consent; None clears what an earlier hello gave (a withdrawn consent).
        Never makes a session: one with a past in Redis that this host does not
        hold must be activated from there, not started empty.
        """
        session = self.active.get(sid)
        if session is not None:
            session.vid = vid
            session.history = history
            return
        if len(self.visitors) >= MAX_PENDING_VISITORS:
            self.visitors.pop(next(iter(self.visitors)))  # the oldest
        self.visitors[sid] = (vid, history)

    def missing(self, items: Sequence[BatchItem]) -> list[str]:
        """Sessions in ``items`` this host does not hold, each once: the shell must activate them."""
        new = (sid for sid, *_ in items if sid not in self.active and sid not in self.dormant)
        return list(dict.fromkeys(new))

    def activate(
        self,
        sid: str,
        site: str,
        snapshot: list[Any] | None,
        log_events: Sequence[dict[str, Any]],
        before_seq: int,
    ) -> Session:
        """Bring a session back from its snapshot plus the logged events after it.

        Only logged events with ``seq < before_seq`` are replayed: the batch
        being activated for carries the rest, and processes them itself (so
        they get their scores and decisions). Replaying the same events
        through the same code gives exactly the features an uninterrupted
        session would have. ``log_events`` must be the whole log below
        ``before_seq``: a snapshot another release wrote (another layout) is
        set aside, and the session is rebuilt from the log alone.
        """
        detectors, _ = self.rules(site)
        session = Session(sid, site, detectors)
        if snapshot:
            try:
                session = Session.from_state(snapshot, detectors)
            except SnapshotMismatch:
                # After an upgrade that changed the session's state: snapshots only
                # shorten recovery, the log alone gives the same features.
                self.unreadable_snapshots += 1
        for ev in log_events:
            if session.last_seq < ev["seq"] < before_seq:
                session.apply(ev)
        self.active[sid] = session
        self._named(session)
        return session

    def _named(self, session: Session) -> None:
        """Give ``session`` the visitor a Visit named before the session was held."""
        named = self.visitors.pop(session.sid, None)
        if named is not None:
            session.vid, session.history = named

    def _get(self, sid: str, site: str) -> Session:
        session = self.active.get(sid)
        if session is not None:
            return session
        packed = self.dormant.pop(sid, None)
        detectors, _ = self.rules(site)
        if packed is not None:
            session = Session.from_state(msgpack.unpackb(packed[0]), detectors)
        else:  # a brand-new session: nothing was ever logged for it before this batch
            session = Session(sid, site, detectors)
        self.active[sid] = session
        if self.visitors:
            self._named(session)
        return session

    def get(self, sid: str) -> Session | None:
        """The session if this host holds it (waking it if dormant), else None."""
        if sid in self.active:
            return self.active[sid]
        if sid in self.dormant:
            return self._get(sid, self.dormant[sid][2])
        return None

    def budget(self, site: str, policy: PolicyConfig) -> Budget | None:
        """The site's budget on this host, made on first use (None when its share is 1)."""
        if site not in self.budgets:
            self.budgets[site] = Budget(policy.budget) if policy.budget < 1.0 else None
        return self.budgets[site]

    def rules_changed(self, site: str, policy: PolicyConfig) -> None:
        """``site`` has new rules: its budget starts afresh if its share changed."""
        if site in self.budgets:
            budget = self.budgets[site]
            if (budget.share if budget is not None else 1.0) != policy.budget:
                del self.budgets[site]

    def process(
        self,
        items: Sequence[BatchItem],
        score: ScoreFn,
        segment: SegmentFn | None = None,
        explain: ExplainFn | None = None,
        challenger: tuple[ScoreFn, float] | None = None,
    ) -> list[SessionResult]:
        """Apply, score and decide for a whole batch; one result per session, in order.

        With ``explain``, each decision gets its drivers here (offline replay);
        the shards leave it out and explain decisions off the hot path. With
        ``challenger`` (a scorer and a share), the sessions in that share (by
        hash, :func:`~actors.core.policy.in_challenger`) are scored and decided
        by the challenger model instead, so outcomes can compare the two.
        """
        results: dict[str, SessionResult] = {}
        sessions: list[Session] = []
        views: list[EventView] = []
        for sid, site, consent, events in items:
            session = self._get(sid, site)
            session.consent = list(consent)
            result = results.get(sid)
            if result is None:
                result = results[sid] = SessionResult(sid)
            for ev in events:
                if ev["seq"] <= session.last_seq:
                    result.skipped += 1  # a resend after a retry: never counted twice
                    continue
                views.append(session.view(session.apply(ev)))
                sessions.append(session)
            self._turn(sid).add(sid)
        if not views:
            return list(results.values())
        scores = (
            score([v.row for v in views])
            if challenger is None
            else _score_split(sessions, views, score, challenger, results)
        )
        # The rules and budget are looked up once per site and batch.
        policies: dict[str, tuple[PolicyConfig, Budget | None]] = {}
        for session, view, s in zip(sessions, views, scores, strict=True):
            result = results[session.sid]
            s = float(s)
            result.seqs.append(view.seq)
            result.scores.append(s)
            result.last_row = view.row
            rule = policies.get(session.site)
            if rule is None:
                policy = self.rules(session.site)[1]
                rule = policies[session.site] = (policy, self.budget(session.site, policy))
            decision = decide(session, view, s, rule[0], budget=rule[1])
            if decision is not None:
                if segment is not None:  # looked up only when there is a decision to inform
                    decision = replace(decision, segment=segment(view.row))
                result.decisions.append(decision)
                result.rows.append(view.row)
        if explain is not None:
            explained(list(results.values()), explain)
        return list(results.values())

    def snapshot(self, sid: str) -> list[Any] | None:
        """The state to persist for ``sid`` (active or dormant), or None if unknown."""
        packed = self._packed(sid)
        return msgpack.unpackb(packed) if packed is not None else None

    def _turn(self, sid: str) -> set[str]:
        return self.dirty[hash(sid) % len(self.dirty)]

    def take_dirty(self, everything: bool = False) -> list[tuple[str, str, bytes]]:
        """(sid, site, packed state) of the changed sessions whose snapshot tick this is.

        Called once per snapshot tick. A changed session is taken within
        ``snapshot_ticks`` calls, and each call takes only about that share of
        the changed sessions: the work spreads evenly over the ticks instead
        of every session at once. ``everything`` takes them all (a flush).
        """
        turns = self.dirty if everything else [self.dirty[self.ticks % len(self.dirty)]]
        self.ticks += 1
        out = []
        for turn in turns:
            for sid in turn:
                packed = self._try_packed(sid)
                if packed is not None:
                    out.append((sid, *packed))
            turn.clear()
        return out

    def _try_packed(self, sid: str) -> tuple[str, bytes] | None:
        """(site, packed state); a state that cannot be packed is counted and skipped (None)."""
        session = self.active.get(sid)
        if session is not None:
            packed = self._try_packed_session(sid, session)
            return (session.site, packed) if packed is not None else None
        dormant = self.dormant.get(sid)
        return (dormant[2], dormant[0]) if dormant else None

    def _try_packed_session(self, sid: str, session: Session) -> bytes | None:
        """``session.packed()``, or None (counted) if its state cannot be packed.

        One session's unpackable state (say a number beyond 64 bits that got
        past validation) must not stop the snapshots of every other session
        on the shard. Its event log still holds everything: it loses only
        the shortcut a snapshot gives its recovery.
        """
        try:
            return session.packed()
        except Exception as exc:  # msgpack raises OverflowError, TypeError or ValueError
            self.unpackable += 1
            self.last_pack_error = f"session {sid}: {type(exc).__name__}: {exc}"
            return None

    def _packed(self, sid: str) -> bytes | None:
        session = self.active.get(sid)
        if session is not None:
            return session.packed()
        dormant = self.dormant.get(sid)
        return dormant[0] if dormant else None

    def held_with_visitor(self) -> list[tuple[str, str, bytes]]:
        """(sid, site, packed state) of every session held with a visitor id (a clean stop's profiles).

        Dormant sessions are included as they are packed (whether they name a
        visitor is read when they are unpacked).
        """
        out = []
        for sid, session in self.active.items():
            if session.vid:
                packed = self._try_packed_session(sid, session)
                if packed is not None:
                    out.append((sid, session.site, packed))
        out += [(sid, site, packed) for sid, (packed, _, site) in self.dormant.items()]
        return out

    def sweep(self, now_ms: float) -> list[tuple[str, str, bytes]]:
        """Compact sessions idle for a minute; retire those idle past the timeout.

        Returns the retired sessions' (sid, site, packed state), for a last snapshot.
        """
        retired: list[tuple[str, str, bytes]] = []
        for sid, session in list(self.active.items()):
            idle = now_ms - session.last_ts
            if idle >= self.compact_after_ms:
                del self.active[sid]
                packed = self._try_packed_session(sid, session)
                if packed is None:
                    # It cannot be compacted: let it go without a last snapshot (its log
                    # rebuilds it if it comes back) rather than hold it, failing, forever.
                    self._turn(sid).discard(sid)
                    continue
                self.dormant[sid] = (packed, session.last_ts, session.site)
        for sid, (packed, last_ts, site) in list(self.dormant.items()):
            if now_ms - last_ts >= self.deactivate_after_ms:
                del self.dormant[sid]
                self._turn(sid).discard(sid)
                retired.append((sid, site, packed))
        return retired


def explained(results: Sequence[SessionResult], explain: ExplainFn) -> None:
    """Give every decision of ``results`` its drivers, with one call of ``explain`` for all."""
    rows = [row for r in results for row in r.rows]
    if not rows:
        return
    contributions = iter(explain(rows))
    for r in results:
        r.decisions = [
            replace(d, drivers=top_drivers(next(contributions), row))
            for d, row in zip(r.decisions, r.rows, strict=True)
        ]


def _score_split(
    sessions: Sequence[Session],
    views: Sequence[EventView],
    score: ScoreFn,
    challenger: tuple[ScoreFn, float],
    results: dict[str, SessionResult],
) -> list[float]:
    """Scores of ``views``: the challenger's for its share of sessions, the champion's for the rest."""
    other, share = challenger
    mine = [in_challenger(s.sid, share) for s in sessions]
    for s, m in zip(sessions, mine, strict=True):
        if m:
            results[s.sid].challenger = True
    out: list[float] = [0.0] * len(views)
    for flag, fn in ((False, score), (True, other)):
        idx = [i for i, m in enumerate(mine) if m is flag]
        if idx:
            for i, v in zip(idx, fn([views[i].row for i in idx]), strict=True):
                out[i] = v
    return out
