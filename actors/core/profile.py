"""A visitor's memory across visits: the profile, how a finished session updates it, what it tells.

A :class:`Profile` sums up a pseudonymous visitor's past sessions on one site:
visits, first and last visit, purchases, segments seen, the interventions
offered with what the visitor did about each (accepted, dismissed, ignored) and
when, and the items viewed most recently. The shards build it as sessions end
(:func:`update` with a :func:`summary_of` the retired session) when the session
had analytics consent and a visitor id, and use it, only with personalisation
consent, when the visitor's next session starts (:func:`returning_features`,
:func:`history_of`). Training and replay call the
same functions over a visitor's sessions in time order.

Bounded: every list is capped and every string cut, so a packed profile never
exceeds :data:`MAX_PACKED_BYTES` (tests/test_profile.py packs the worst case).
Merging the same session twice (a shard stopped cleanly, then the session ended
on another) changes nothing the first merge did not: sessions are remembered by
a 32-bit digest of their id, never the id itself.

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from actors.core.features import RETURNING_FEATURES

PROFILE_LAYOUT = 1  # bump when the packed layout changes (older profiles are then ignored)
MAX_SESSIONS = 16  # digests of the last sessions merged (a re-merge of older ones counts again)
MAX_OFFERS = 32  # the latest interventions offered
MAX_ITEMS = 20  # the items viewed most recently, across visits
MAX_SEGMENTS = 8  # the segments seen most recently
# The profile's items a session holds, to seed recommendations: the recommender weighs
# only the few newest items it is given (RecParams.recent = 5), so more would be memory
# spent on every returning session for nothing.
HISTORY_ITEMS = 8
MAX_ID_CHARS = 64  # item ids and segment names are cut to this (the events' own limit)
MAX_KIND_CHARS = 32
# The bound on a packed profile, worst case included (every list full, every string at its cap).
MAX_PACKED_BYTES = 4096

OUTCOMES = ("ignored", "accepted", "dismissed")  # what the visitor did about an offer
DAY_MS = 86_400_000.0


@dataclass(frozen=True)
class Offer:
    """One intervention shown to the visitor, and what they did about it."""

    digest: int  # of the intervention id: the same offer merged twice is one offer
    kind: str
    outcome: str  # one of OUTCOMES
    ts: int  # when it was decided (ms)


@dataclass(frozen=True)
class SessionSummary:
    """What a finished session adds to its visitor's profile (see :func:`summary_of`)."""

    sid: str
    start_ts: int
    end_ts: int
    purchased: bool = False
    items: tuple[str, ...] = ()  # viewed, oldest first
    offers: tuple[tuple[str, str, str, int], ...] = ()  # (iid, kind, outcome, ts)
    segment: str | None = None


@dataclass(frozen=True)
class Profile:
    """A visitor's past sessions on one site, summed up (bounded; see the module's limits)."""

    visits: int = 0
    first_ts: int = 0
    last_ts: int = 0  # the end of the latest visit (ms)
    purchases: int = 0  # visits with a purchase
    segments: tuple[str, ...] = ()  # oldest first
    offers: tuple[Offer, ...] = ()  # oldest first
    items: tuple[str, ...] = ()  # oldest first
    # (digest of the session id, whether its purchase was counted), oldest first.
    sessions: tuple[tuple[int, bool], ...] = field(default=())


EMPTY = Profile()


def _digest(text: str) -> int:
    return zlib.crc32(text.encode())


def update(profile: Profile | None, s: SessionSummary) -> Profile:
    """``profile`` with the finished session ``s`` merged in (a new profile; the input is kept).

    Idempotent per session: merging a summary again (or a later, fuller
    summary of the same session) counts the visit and its purchase once.
    """
    p = profile or EMPTY
    h = _digest(s.sid)
    sessions = list(p.sessions)
    visits, purchases = p.visits, p.purchases
    known = next((i for i, (d, _) in enumerate(sessions) if d == h), None)
    if known is None:
        visits += 1
        purchases += int(s.purchased)
        sessions.append((h, s.purchased))
    elif s.purchased and not sessions[known][1]:
        purchases += 1
        sessions[known] = (h, True)
    items = list(p.items)
    for item in s.items:
        item = str(item)[:MAX_ID_CHARS]
        if item in items:
            items.remove(item)
        items.append(item)
    segments = list(p.segments)
    if s.segment is not None:
        seg = str(s.segment)[:MAX_ID_CHARS]
        if seg in segments:
            segments.remove(seg)
        segments.append(seg)
    offers = list(p.offers)
    for iid, kind, outcome, ts in s.offers:
        o = Offer(_digest(iid), str(kind)[:MAX_KIND_CHARS], _outcome(outcome), int(ts))
        at = next((i for i, x in enumerate(offers) if x.digest == o.digest), None)
        if at is None:
            offers.append(o)
        else:
            offers[at] = o
    offers.sort(key=lambda o: o.ts)
    return Profile(
        visits=visits,
        first_ts=min(p.first_ts, s.start_ts) if p.first_ts else s.start_ts,
        last_ts=max(p.last_ts, s.end_ts),
        purchases=purchases,
        segments=tuple(segments[-MAX_SEGMENTS:]),
        offers=tuple(offers[-MAX_OFFERS:]),
        items=tuple(items[-MAX_ITEMS:]),
        sessions=tuple(sessions[-MAX_SESSIONS:]),
    )


def _outcome(value: str) -> str:
    return value if value in OUTCOMES else "ignored"


def returning_features(profile: Profile | None, now_ms: float) -> list[float]:
    """The returning-visitor features as of ``now_ms``, in ``RETURNING_FEATURES`` order.

    A first-time visitor (no profile) gets :data:`FIRST_VISIT`: what a visitor
    without personalisation consent gets too.
    """
    if profile is None or profile.visits == 0:
        return list(FIRST_VISIT)
    days = max(now_ms - profile.last_ts, 0.0) / DAY_MS
    values = {
        "visits_before": float(profile.visits),
        "days_since_last_visit": round(days, 4),
        "purchases_before": float(profile.purchases),
        "offers_before": float(len(profile.offers)),
        "offers_dismissed_before": float(sum(o.outcome == "dismissed" for o in profile.offers)),
        "offers_accepted_before": float(sum(o.outcome == "accepted" for o in profile.offers)),
    }
    return [values[name] for name in RETURNING_FEATURES]


# A first visit's features: no visit before, and "days since" at -1 (never), not 0 (just now).
FIRST_VISIT: tuple[float, ...] = tuple(
    -1.0 if name == "days_since_last_visit" else 0.0 for name in RETURNING_FEATURES
)


def summary_of(session: Any, segment: str | None = None) -> SessionSummary:
    """What the finished ``session`` (an :class:`actors.core.session.Session`) adds to a profile.

    ``segment``: the session's segment name as its model sees it, if any.
    """
    return SessionSummary(
        sid=session.sid,
        start_ts=int(session.start_ts),
        end_ts=int(session.last_ts),
        purchased=bool(session.purchased),
        items=tuple(session.recent_items),
        offers=tuple((o[0], o[1], o[3], o[2]) for o in session.offers),
        segment=segment,
    )


def as_document(profile: Profile) -> dict[str, Any]:
    """The profile as JSON-ready data, in words: what a visitor's access request shows of it."""
    return {
        "visits": profile.visits,
        "first_visit_ms": profile.first_ts,
        "last_visit_ms": profile.last_ts,
        "visits_with_a_purchase": profile.purchases,
        "segments_seen": list(profile.segments),
        "help_offered": [
            {"kind": o.kind, "what_you_did": o.outcome, "ts_ms": o.ts} for o in profile.offers
        ],
        "items_viewed_lately": list(profile.items),
        "sessions_remembered": len(profile.sessions),
    }


def pack(profile: Profile) -> bytes:
    """The profile as stored (msgpack): ``[PROFILE_LAYOUT, fields...]``."""
    return msgpack.packb(
        [
            PROFILE_LAYOUT,
            profile.visits,
            profile.first_ts,
            profile.last_ts,
            profile.purchases,
            list(profile.segments),
            [[o.digest, o.kind, OUTCOMES.index(o.outcome), o.ts] for o in profile.offers],
            list(profile.items),
            [[d, int(b)] for d, b in profile.sessions],
        ]
    )


def unpack(data: bytes | None) -> Profile | None:
    """A stored profile, or None if there is none or it cannot be read (another layout, damage).

    An unreadable profile is a first visit, never an error: it is a memory,
    and the next finished session writes a fresh one.
    """
    if not data:
        return None
    try:
        v = msgpack.unpackb(data)
        if not (isinstance(v, list) and len(v) == 9 and v[0] == PROFILE_LAYOUT):
            return None
        return Profile(
            visits=int(v[1]),
            first_ts=int(v[2]),
            last_ts=int(v[3]),
            purchases=int(v[4]),
            segments=tuple(str(x) for x in v[5])[-MAX_SEGMENTS:],
            offers=tuple(Offer(int(d), str(k), OUTCOMES[int(o)], int(t)) for d, k, o, t in v[6])[
                -MAX_OFFERS:
            ],
            items=tuple(str(x) for x in v[7])[-MAX_ITEMS:],
            sessions=tuple((int(d), bool(b)) for d, b in v[8])[-MAX_SESSIONS:],
        )
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        return None


def history_of(profile: Profile | None, now_ms: float) -> list[Any]:
    """What a session may use of its visitor's profile: ``[features, dismissed, items]``.

    Made once, when a visit starts, and only with personalisation consent:
    the returning features (:func:`returning_features`), the latest dismissal
    of each kind (kind -> ms; the policy applies the site's window) and the
    last :data:`HISTORY_ITEMS` items viewed (oldest first). A plain list, so it rides in the
    session's snapshot.
    """
    dismissed: dict[str, int] = {}
    for o in profile.offers if profile is not None else ():
        if o.outcome == "dismissed":
            dismissed[o.kind] = max(dismissed.get(o.kind, 0), o.ts)
    items = list(profile.items[-HISTORY_ITEMS:]) if profile is not None else []
    return [returning_features(profile, now_ms), dismissed, items]
