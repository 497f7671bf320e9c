"""The session explorer: find sessions, and one session's timeline (analysts).

:func:`search` reads the index the shards keep (actors/shard/index.py): a
site's sessions by last-seen time, those with an intervention decision,
those in a segment, and their ids for prefix lookups. It never scans Redis:
it walks one sorted set newest first (the segment's, the intervened, or the
site's) within the time window, checks the other criteria for a chunk of
candidates at once (ZMSCORE), and stops at ``limit`` results or after
``EXAMINE_MAX`` candidates (then ``partial`` is true and the cursor goes on
from there). Without a site, the sites' walks are merged by time. An id
prefix is looked up in the site's ``ids`` set (at most ``PREFIX_MAX``
matches per site, then ``truncated``).

:func:`timeline` replays the session's logged events through the same pure
core the shards run: :func:`actors.core.session.replay` (``Session.apply``
with the site's detector settings: the rows training uses), scored by the
model the shard scored it with (the live one, or the challenger for the
sessions in its share), so the exit risk after each event is the score the
shard computed. The signals come from the same rows. Every decision comes
from its record (``{p}ivs:{site}:{sid}`` -> ``{p}iv:{iid}``): kind, shown or
holdout, trigger, reasons, drivers, model, segment, the templated text it
showed (rendered again from the signals at its event, as the shard did),
what the visitor did about it, and the conversion after it. Events are shown
as the log holds them: their type and the fields the tracker sends, which
never include what a visitor typed (actors/core/events.py keeps no such
field).

Limits: a model promoted during the session scored its earlier events with
the model before; the replay scores all with today's (each decision's record
names the model that made it). A session longer than ``MAX_EVENTS`` shows
its first ``MAX_EVENTS`` events (``cut``). Sessions are found by last-seen
time, up to ~5 s behind (the snapshot tick). ``training.replay.replay`` is
not used: it runs the policy again with a fresh budget and no record of the
session's earlier decisions, where the timeline shows the decisions that
were made, from their records, and it scores one event per model call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from actors.core.events import FIELDS
from actors.core.features import FEATURE_INDEX
from actors.core.policy import in_challenger
from actors.core.session import replay
from actors.core.signals import SIGNALS
from actors.core.sites import Site
from actors.model.scoring import Scorer
from cluster.redis_client import redis_client
from serve.apps.nudge import render_template
from serve.console.auth import error
from serve.console.context import ConsoleContext
from serve.console.routing import Route
from serve.edge.store import EventStore

MAX_LIMIT = 200
EXAMINE_MAX = 20_000  # candidates one search looks at before it answers with a cursor
PREFIX_MAX = 2_000  # id-prefix matches per site a search looks at
MAX_EVENTS = 2_000  # events a timeline shows
SID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")  # the tracker's ids (serve/edge/protocol.py)
SEGMENT_RE = re.compile(r"[A-Za-z0-9_ .-]{1,64}")
_SIG0 = FEATURE_INDEX[f"sig_{SIGNALS[0]}"]


class ExplorerError(ValueError):
    """A request the explorer refuses: ``code`` is machine-readable, ``status`` its HTTP status."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status


# -- search -----------------------------------------------------------------


@dataclass
class _Walk:
    """One site's driving sorted set, newest first, from a position, fetched in chunks.

    A position is (score, n): the next item is the (n+1)-th with a score at
    most ``score`` (the n before it all have exactly that score), so ties
    are never skipped or repeated across chunks or pages.
    """

    site: str
    key: str
    lo: float
    top: float
    n: int = 0  # consumed: items with score == top already taken
    fetch_top: float = 0.0
    fetch_n: int = 0
    buf: list[tuple[float, str, bool]] = field(default_factory=list)  # (score, sid, passes)
    exhausted: bool = False

    def __post_init__(self) -> None:
        self.fetch_top, self.fetch_n = self.top, self.n

    @staticmethod
    def advance(top: float, n: int, score: float) -> tuple[float, int]:
        return (top, n + 1) if score == top else (score, 1)


def _encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error, UnicodeError):
        raise ExplorerError("bad_cursor", "cursor is not one this search returned") from None
    if not isinstance(state, dict):
        raise ExplorerError("bad_cursor", "cursor is not one this search returned")
    return state


def _sites(ctx: ConsoleContext, site: str | None) -> list[str]:
    if site is None:
        return sorted(ctx.sites)
    if site not in ctx.sites:
        raise ExplorerError("unknown_site", f"no site {site!r} is configured", 404)
    return [site]


async def search(
    ctx: ConsoleContext,
    site: str | None = None,
    sid_prefix: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    segment: str | None = None,
    intervened: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Sessions matching every criterion given, newest (last seen) first, ``limit`` per page.

    Returns ``{"sessions": [...], "cursor": str | None, "examined": n,
    "partial": bool, "truncated": bool}``: pass ``cursor`` back for the next
    page (None: no more). Each session: site, sid, last_seen_ms, started_ms,
    last_seq, interventions, segment. Raises :class:`ExplorerError` for bad
    criteria.
    """
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ExplorerError("bad_limit", f"limit must be 1..{MAX_LIMIT}")
    if sid_prefix is not None and not SID_RE.fullmatch(sid_prefix):
        raise ExplorerError("bad_sid_prefix", "sid_prefix must be 1-128 of [A-Za-z0-9_-]")
    if segment is not None and not SEGMENT_RE.fullmatch(segment):
        raise ExplorerError("bad_segment", "segment must be a segment name")
    for name, v in (("since_ms", since_ms), ("until_ms", until_ms)):
        if v is not None and (not isinstance(v, int) or v < 0):
            raise ExplorerError("bad_time", f"{name} must be a time in ms since the epoch")
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise ExplorerError("bad_time", "since_ms must not be after until_ms")
    sites = _sites(ctx, site)
    lo = float(since_ms) if since_ms is not None else float("-inf")
    hi = float(until_ms) if until_ms is not None else float("inf")
    state = _decode_cursor(cursor) if cursor else {}
    if sid_prefix is not None:
        return await _by_prefix(ctx, sites, sid_prefix, lo, hi, segment, intervened, limit, state)
    return await _by_time(ctx, sites, lo, hi, segment, intervened, limit, state)


def _driving(ctx: ConsoleContext, site: str, segment: str | None, intervened: bool | None) -> str:
    """The smallest set that holds every match: the segment's, the intervened, or the site's."""
    ix = ctx.keys.session_index
    if segment is not None:
        return ix(site, f"seg:{segment}")
    return ix(site, "iv" if intervened else "seen")


async def _passes(
    ctx: ConsoleContext,
    site: str,
    sids: list[str],
    segment: str | None,
    intervened: bool | None,
) -> list[bool]:
    """Whether each sid meets the intervened criterion (the driving set met the rest)."""
    if intervened is None or (intervened and segment is None) or not sids:
        return [True] * len(sids)
    scores = await ctx.redis.zmscore(ctx.keys.session_index(site, "iv"), sids)
    return [(s is not None) == intervened for s in scores]


async def _fill(
    ctx: ConsoleContext, w: _Walk, size: int, segment: str | None, intervened: bool | None
) -> None:
    rows = await ctx.redis.zrange(
        w.key,
        w.fetch_top,
        w.lo,
        desc=True,
        byscore=True,
        offset=w.fetch_n,
        num=size,
        withscores=True,
    )
    if len(rows) < size:
        w.exhausted = True
    sids = [m.decode() for m, _s in rows]
    ok = await _passes(ctx, w.site, sids, segment, intervened)
    for (_m, score), sid, passes in zip(rows, sids, ok, strict=True):
        w.fetch_top, w.fetch_n = _Walk.advance(w.fetch_top, w.fetch_n, score)
        w.buf.append((score, sid, passes))


async def _by_time(
    ctx: ConsoleContext,
    sites: list[str],
    lo: float,
    hi: float,
    segment: str | None,
    intervened: bool | None,
    limit: int,
    state: dict[str, Any],
) -> dict[str, Any]:
    pos = state.get("p", {})
    if not isinstance(pos, dict):
        raise ExplorerError("bad_cursor", "cursor is not one this search returned")
    walks = []
    for site in sites:
        p = pos.get(site)
        if p == "done":
            continue
        if p is None:
            top, n = hi, 0
        elif (
            isinstance(p, list)
            and len(p) == 2
            and isinstance(p[0], (int, float))
            and isinstance(p[1], int)
            and p[1] >= 0
        ):
            top, n = float(p[0]), p[1]
        else:
            raise ExplorerError("bad_cursor", "cursor is not one this search returned")
        walks.append(_Walk(site, _driving(ctx, site, segment, intervened), lo, min(top, hi), n))
    size = limit + 1 if intervened is None or (intervened and segment is None) else 200
    found: list[tuple[str, str, float]] = []
    examined = 0
    await asyncio.gather(*(_fill(ctx, w, size, segment, intervened) for w in walks))
    while len(found) < limit and examined < EXAMINE_MAX:
        heads = [(-w.buf[0][0], w.site, i) for i, w in enumerate(walks) if w.buf]
        if not heads:
            break
        _, _, i = min(heads)
        w = walks[i]
        score, sid, passes = w.buf.pop(0)
        w.top, w.n = _Walk.advance(w.top, w.n, score)
        examined += 1
        if passes:
            found.append((w.site, sid, score))
        if not w.buf and not w.exhausted:
            await _fill(ctx, w, size, segment, intervened)
    more = [w for w in walks if w.buf or not w.exhausted]
    next_pos = {w.site: ([w.top, w.n] if (w.buf or not w.exhausted) else "done") for w in walks}
    for site, p in pos.items():  # sites finished on an earlier page stay finished
        next_pos.setdefault(site, p)
    return {
        "sessions": await _details(ctx, found),
        "cursor": _encode_cursor({"p": next_pos}) if more else None,
        "examined": examined,
        "partial": bool(more) and len(found) < limit,
        "truncated": False,
    }


async def _by_prefix(
    ctx: ConsoleContext,
    sites: list[str],
    prefix: str,
    lo: float,
    hi: float,
    segment: str | None,
    intervened: bool | None,
    limit: int,
    state: dict[str, Any],
) -> dict[str, Any]:
    """Sessions whose id starts with ``prefix``: the lex range of each site's ``ids`` set."""
    ix = ctx.keys.session_index
    hits: list[tuple[float, str, str]] = []
    truncated = False
    for site in sites:
        sids = [
            m.decode()
            for m in await ctx.redis.zrange(
                ix(site, "ids"),
                f"[{prefix}",
                f"({prefix}\xff",
                bylex=True,
                offset=0,
                num=PREFIX_MAX,
            )
        ]
        if len(sids) >= PREFIX_MAX:
            truncated = True
        if not sids:
            continue
        pipe = ctx.redis.pipeline(transaction=False)
        pipe.zmscore(_driving(ctx, site, segment, intervened), sids)
        pipe.zmscore(ix(site, "iv"), sids)
        seen, iv = await pipe.execute()
        for sid, s, v in zip(sids, seen, iv, strict=True):
            if s is None or not lo <= s <= hi:
                continue
            if intervened is not None and (v is not None) != intervened:
                continue
            hits.append((-s, site, sid))
    hits.sort()
    offset = state.get("o", 0)
    if not isinstance(offset, int) or offset < 0:
        raise ExplorerError("bad_cursor", "cursor is not one this search returned")
    page = hits[offset : offset + limit]
    more = offset + limit < len(hits)
    return {
        "sessions": await _details(ctx, [(site, sid, -s) for s, site, sid in page]),
        "cursor": _encode_cursor({"o": offset + limit}) if more else None,
        "examined": len(hits),
        "partial": False,
        "truncated": truncated,
    }


async def _details(ctx: ConsoleContext, found: list[tuple[str, str, float]]) -> list[dict]:
    """What a result row shows of each session, from its session hash (one round trip)."""
    if not found:
        return []
    pipe = ctx.redis.pipeline(transaction=False)
    for site, sid, _s in found:
        pipe.hmget(ctx.keys.session(site, sid), "created", "seq", "iv_count", "seg")
    out = []
    for (site, sid, score), (created, seq, ivs, seg) in zip(
        found, await pipe.execute(), strict=True
    ):
        out.append(
            {
                "site": site,
                "sid": sid,
                "last_seen_ms": int(score),
                "started_ms": int(created) if created else None,
                "last_seq": int(seq) if seq else 0,
                "interventions": int(ivs) if ivs else 0,
                "segment": seg.decode() if seg else None,
            }
        )
    return out


# -- timeline ---------------------------------------------------------------

_SCORERS: dict[tuple[str, str, str], Scorer] = {}  # (redis url, prefix, version) -> its scorer


def _scorer_for(ctx: ConsoleContext, sid: str) -> Scorer:
    """The model the shards score ``sid`` with now: the challenger in its share, else the live one.

    Blocking (a registry read, a model load the first time): run in a thread.
    """
    from training.registry import ModelRegistry

    with redis_client(ctx.redis_url) as r:
        reg = ModelRegistry(r, ctx.keys.prefix)
        version = reg.live()
        chall = reg.challenger()
        if chall is not None and in_challenger(sid, chall[1]):
            version = chall[0]
        key = (ctx.redis_url, ctx.keys.prefix, version or "")
        scorer = _SCORERS.get(key)
        if scorer is not None:
            return scorer
        if version:
            raw, meta = reg.load(version)
            scorer = Scorer.from_bytes(raw, meta, version)
        else:
            scorer = Scorer.bundled()  # what a shard scores with when nothing is live
    if len(_SCORERS) >= 4:  # a few versions at most: live, challenger, the one before
        _SCORERS.pop(next(iter(_SCORERS)))
    _SCORERS[key] = scorer
    return scorer


def _decision(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One decision record as the timeline shows it."""
    f = {k.decode(): v.decode() for k, v in fields.items()}

    def num(name: str) -> int | None:
        return int(float(f[name])) if f.get(name) else None

    holdout = f.get("holdout") == "1"
    return {
        "iid": f.get("iid"),
        "seq": num("seq"),
        "ts": num("ts"),
        "kind": f.get("kind"),
        "shown": not holdout,  # holdout: decided and recorded, never shown
        "holdout": holdout,
        "score": float(f["score"]) if f.get("score") else None,
        "trigger": f.get("trigger"),
        "reasons": [{"signal": s, "strength": v} for s, v in json.loads(f.get("reasons", "[]"))],
        "drivers": [
            {"feature": a, "words": b, "value": c, "push": d}
            for a, b, c, d in json.loads(f.get("drivers", "[]"))
        ],
        "model": f.get("model"),
        "segment": f.get("segment_name") or None,
        "page_type": f.get("page_type"),
        "outcome": f.get("outcome"),  # shown, accepted or dismissed: the visitor's last
        "outcome_ts": {k: num(k) for k in ("shown", "accepted", "dismissed") if f.get(k)},
        "converted_ts": num("converted"),
        "converted_seq": num("converted_seq"),
        "goal": f.get("goal"),
    }


async def _decisions(ctx: ConsoleContext, site: str, sid: str) -> list[dict[str, Any]]:
    iids = sorted(
        m.decode() for m in await ctx.redis.smembers(ctx.keys.interventions_of(site, sid))
    )
    if not iids:
        return []
    pipe = ctx.redis.pipeline(transaction=False)
    for iid in iids:
        pipe.hgetall(ctx.keys.intervention(iid))
    out = []
    for iid, fields in zip(iids, await pipe.execute(), strict=True):
        if fields:  # a record that expired before its set
            out.append({**_decision(fields), "iid": iid})
    out.sort(key=lambda d: (d["seq"] or 0, d["iid"]))
    return out


async def timeline(
    ctx: ConsoleContext, site: str, sid: str, max_events: int = MAX_EVENTS
) -> dict[str, Any]:
    """One session: its events with the exit risk after each, its signals, and its decisions.

    Returns ``{"site", "sid", "session": {...}, "model", "events": [{seq, ts,
    type, fields, risk, signals}], "cut": bool, "signals": {name: {"crossed_seq",
    "peak", "peak_seq"}}, "decisions": [...]}``; ``crossed_seq`` is the first
    event after which the signal was strong enough for the site's policy
    (``signal_strength``). Raises :class:`ExplorerError` (404) for a session
    the site does not have.
    """
    rules = ctx.sites[_sites(ctx, site)[0]]
    if not SID_RE.fullmatch(sid):
        raise ExplorerError("bad_sid", "sid must be 1-128 of [A-Za-z0-9_-]")
    info = await ctx.redis.hgetall(ctx.keys.session(site, sid))
    if not info:
        raise ExplorerError("unknown_session", f"site {site!r} has no session {sid!r}", 404)
    store = EventStore(ctx.redis, ctx.keys, ctx.master, seal=False)
    events = await store.read_events(site, sid, max_events + 1)
    cut = len(events) > max_events
    events = events[:max_events]
    scorer, decisions = await asyncio.gather(
        asyncio.to_thread(_scorer_for, ctx, sid), _decisions(ctx, site, sid)
    )
    rows = replay(events, sid, site, rules.detectors)
    risks = [float(x) for x in scorer(rows)] if rows else []
    shown_events = _events(events, rows, risks)
    _add_texts(decisions, {e["seq"]: e["signals"] for e in shown_events})
    return {
        "site": site,
        "sid": sid,
        "session": _session_info(info),
        "model": scorer.version,
        "events": shown_events,
        "cut": cut,
        "max_events": max_events,
        "signals": _signal_rises(events, rows, rules),
        "decisions": decisions,
    }


def _add_texts(decisions: list[dict[str, Any]], signals_at: dict[int, dict[str, float]]) -> None:
    """Each decision's templated text, as the shard rendered it from the signals at its event.

    What the visitor saw first (a holdout visitor: nothing); a personalised
    text that replaced it later (the LLM's update) is not recorded. None for
    a decision past a cut timeline.
    """
    for d in decisions:
        sig = signals_at.get(d["seq"]) if d["seq"] is not None else None
        d["text"] = render_template(d["kind"], sig, d["page_type"]) if sig is not None else None


def _session_info(info: dict[bytes, bytes]) -> dict[str, Any]:
    f = {k.decode(): v.decode() for k, v in info.items()}
    return {
        "started_ms": int(f["created"]) if f.get("created") else None,
        "last_seq": int(f.get("seq", 0)),
        "consent": json.loads(f["consent"]) if f.get("consent") else [],
        "interventions": int(f.get("iv_count", 0)),
        "segment": f.get("seg") or None,
    }


def _events(
    events: list[dict[str, Any]], rows: list[list[float]], risks: list[float]
) -> list[dict[str, Any]]:
    out = []
    n = len(SIGNALS)
    for ev, row, risk in zip(events, rows, risks, strict=True):
        sig = row[_SIG0 : _SIG0 + n]
        out.append(
            {
                "seq": ev["seq"],
                "ts": ev["ts"],
                "type": ev["type"],
                # The fields the event's type declares (actors/core/events.py): selectors,
                # paths, field names, counts; there is none for what a visitor typed.
                "fields": {k: ev[k] for k in FIELDS.get(ev["type"], ()) if k in ev},
                "risk": risk,  # exactly the score the shard computed
                "signals": {s: round(v, 3) for s, v in zip(SIGNALS, sig, strict=True) if v > 0},
            }
        )
    return out


def _signal_rises(
    events: list[dict[str, Any]], rows: list[list[float]], rules: Site
) -> dict[str, dict[str, Any]]:
    """Per signal that rose at all: where it first crossed the site's strength, and its peak."""
    strong = rules.policy.signal_strength
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(SIGNALS):
        peak, peak_seq, crossed = 0.0, None, None
        for ev, row in zip(events, rows, strict=True):
            v = row[_SIG0 + i]
            if v > peak:
                peak, peak_seq = v, ev["seq"]
            if crossed is None and v >= strong:
                crossed = ev["seq"]
        if peak > 0:
            out[name] = {"crossed_seq": crossed, "peak": round(peak, 3), "peak_seq": peak_seq}
    return out


# -- routes -----------------------------------------------------------------


def query_int(q: Any, name: str) -> int | None:
    raw = q.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise ExplorerError("bad_request", f"{name} must be an integer") from None


def query_bool(q: Any, name: str) -> bool | None:
    raw = q.get(name)
    if raw in (None, ""):
        return None
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise ExplorerError("bad_request", f"{name} must be true or false")


async def search_handler(request: web.Request) -> web.Response:
    """``GET /api/sessions?site=&sid=&since=&until=&segment=&intervened=&limit=&cursor=``."""
    q = request.query
    try:
        result = await search(
            request.app["ctx"],
            site=q.get("site") or None,
            sid_prefix=q.get("sid") or None,
            since_ms=query_int(q, "since"),
            until_ms=query_int(q, "until"),
            segment=q.get("segment") or None,
            intervened=query_bool(q, "intervened"),
            limit=query_int(q, "limit") or 50,
            cursor=q.get("cursor") or None,
        )
    except ExplorerError as exc:
        return error(exc.status, exc.code, str(exc))
    return web.json_response(result)


async def timeline_handler(request: web.Request) -> web.Response:
    """``GET /api/sessions/{site}/{sid}``: the session's timeline."""
    try:
        result = await timeline(
            request.app["ctx"], request.match_info["site"], request.match_info["sid"]
        )
    except ExplorerError as exc:
        return error(exc.status, exc.code, str(exc))
    return web.json_response(result)


ROUTES = (
    Route("GET", "/api/sessions", search_handler, "analyst"),
    Route("GET", "/api/sessions/{site}/{sid}", timeline_handler, "analyst"),
)
