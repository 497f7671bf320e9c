"""The console's business pages: Live business numbers, Outcomes, Funnel and Segments, as JSON.

Each page is an async function of the :class:`ConsoleContext` and the
request's query (``site``; ``from`` and ``to``, UTC days YYYY-MM-DD, at most
``MAX_DAYS`` of them, the last 7 days by default) that returns a view in
the shape serve/console/views.py renders (``kpis``, ``charts``, ``tables``,
``notes``) plus ``data``, the numbers themselves. A bad query raises
:class:`BadQuery` (a ValueError): the routes answer 400 ``bad_request``.

Where the numbers come from:

* Live, Funnel and Segments read the shards' tallies (actors/core/tally.py,
  ``{p}tally:d:{site}:{day}`` and ``{p}tally:m:{site}:{minute}``): one
  pipelined round of HGETALLs, a hash per site and day (or minute), however
  many sessions there were. Sessions active now, the live model and the
  shards' health come from each shard's ``ping`` (``ctx.shard_info``).
* Outcomes (and the Segments page's conversion) is the outcome report,
  :func:`training.outcome_records.read_outcomes`, which reads the whole
  intervention log: run in a thread, cached ``OUTCOMES_CACHE_S`` per query
  and refreshed in the background after that (:func:`outcome_report`).

Limits: returning and new visitors, and cohorts by first-visit week, need a
visitor id, which Lifeline does not have (issue #23): the Segments page says
so in its ``note`` rather than guess. Serve's health is shown as the shards'
follow-up counts (the Serve calls they made and how those ended); the context
has no Serve handle of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from actors.core.kinds import KINDS
from actors.core.signals import SIGNALS
from actors.core.tally import (
    CHAT_COUNTS,
    CHAT_ORIGINS,
    FUNNEL,
    MINUTE_MS,
    NO_SEGMENT,
    chat_field,
    totals,
)
from cluster.redis_client import redis_client
from serve.console.auth import error
from serve.console.context import ConsoleContext
from serve.console.routing import Route
from serve.console.shapes import View, col, table, to_csv
from training.outcome_records import read_outcomes

MAX_DAYS = 92
DEFAULT_DAYS = 7
LIVE_MINUTES = 60
OUTCOMES_CACHE_S = 30.0  # a report younger than this is served as it is
OUTCOMES_STALE_S = 600.0  # older, up to this, it is served while a fresh one is read
ARMS = (("t", "treated"), ("h", "holdout"))
NO_VISITOR_ID = (
    "Returning and new visitors, and cohorts by first-visit week, need a visitor id; "
    "Lifeline has none yet (issue #23): a session is one tab's visit and nothing in its "
    "events tells a returning visitor. Only the segments are shown."
)


class BadQuery(ValueError):
    """A query parameter the page cannot use; its message says which and why."""


# -- query ---------------------------------------------------------------------------------


def _day(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadQuery(f"{name} must be a day, YYYY-MM-DD; got {text[:40]!r}") from None


def days_of(query: Mapping[str, str], today: date | None = None) -> list[str]:
    """The days (YYYY-MM-DD, oldest first) a query's ``from`` and ``to`` name."""
    today = today or datetime.now(timezone.utc).date()
    end = _day(query["to"], "to") if query.get("to") else today
    start = (
        _day(query["from"], "from") if query.get("from") else end - timedelta(days=DEFAULT_DAYS - 1)
    )
    if start > end:
        raise BadQuery("from is after to")
    n = (end - start).days + 1
    if n > MAX_DAYS:
        raise BadQuery(f"at most {MAX_DAYS} days at once; asked for {n}")
    return [(start + timedelta(days=i)).isoformat() for i in range(n)]


def sites_of(ctx: ConsoleContext, query: Mapping[str, str]) -> list[str]:
    """The sites a query names (``site``), or every configured site."""
    site = query.get("site")
    if site:
        if ctx.sites and site not in ctx.sites:
            raise BadQuery(f"no site {site[:40]!r}; known: {', '.join(sorted(ctx.sites))}")
        return [site]
    if not ctx.sites:
        raise BadQuery("site is required: no sites are configured")
    return sorted(ctx.sites)


# -- reading the tallies -------------------------------------------------------------------


def _ints(h: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in h.items()}


async def day_tallies(
    ctx: ConsoleContext, sites: Sequence[str], days: Sequence[str]
) -> dict[tuple[str, str], dict[str, int]]:
    """Each (site, day)'s counts, in one pipelined round."""
    pipe = ctx.redis.pipeline(transaction=False)
    pairs = [(s, d) for s in sites for d in days]
    for s, d in pairs:
        pipe.hgetall(ctx.keys.tally_day(s, d))
    return {p: _ints(h) for p, h in zip(pairs, await pipe.execute(), strict=True)}


async def minute_tallies(
    ctx: ConsoleContext, sites: Sequence[str], minutes: Sequence[int]
) -> dict[int, dict[str, int]]:
    """Each minute's counts, summed over ``sites``, in one pipelined round."""
    pipe = ctx.redis.pipeline(transaction=False)
    for s in sites:
        for m in minutes:
            pipe.hgetall(ctx.keys.tally_minute(s, m))
    replies = iter(await pipe.execute())
    per_site = [[_ints(next(replies)) for _m in minutes] for _s in sites]
    return {m: totals(col[i] for col in per_site) for i, m in enumerate(minutes)}


def _n(counts: Mapping[str, int], field: str) -> int:
    return counts.get(field, 0)


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


# -- Live ------------------------------------------------------------------------------------

CHAT_LABELS = (
    "Chats opened",
    "Visitor messages",
    "Handed to a person",
    "Resolved by the assistant",
)


async def live_business(
    ctx: ConsoleContext, query: Mapping[str, str], shards: list[dict[str, Any]] | None = None
) -> View:
    """Sessions active now, interventions per minute by kind (shown and held out) and reactions
    over the last hour, the live model, and the shards' and Serve's health.

    ``shards``: the shards' reports when the caller has just read them (the Live page's
    health did), so that they are not asked twice.
    """
    sites = sites_of(ctx, query)
    now_min = int(time.time() * 1000) // MINUTE_MS
    minutes = list(range(now_min - LIVE_MINUTES + 1, now_min + 1))
    shards_error = None
    if shards is None and ctx.shard_info is not None:
        try:
            shards = await ctx.shard_info()
        except Exception as exc:  # a shard being restarted: the counts still show
            shards_error = type(exc).__name__
    shards = shards or []
    per_minute = await minute_tallies(ctx, sites, minutes)
    hour = totals(per_minute.values())
    labels = [time.strftime("%H:%M", time.gmtime(m * 60)) for m in minutes]
    kinds = [k for k in KINDS if any(_n(hour, f"iv:{k}:{a}") for a, _ in ARMS)]
    series = [
        {"name": f"{k} ({arm})", "values": [_n(per_minute[m], f"iv:{k}:{a}") for m in minutes]}
        for k in kinds
        for a, arm in ARMS
        if _n(hour, f"iv:{k}:{a}")
    ]
    shown = sum(_n(hour, f"iv:{k}:t") for k in KINDS)
    held = sum(_n(hour, f"iv:{k}:h") for k in KINDS)
    seen, accepted, dismissed = (_n(hour, f"react:{r}") for r in ("shown", "accepted", "dismissed"))
    # Reactions are events: an offer shown at 10:59 and accepted at 11:00 counts in both minutes.
    ignored = max(0, seen - accepted - dismissed)
    models = sorted({str(s.get("model")) for s in shards if s.get("model")})
    healthy = sum(1 for s in shards if s.get("healthy"))
    serve = totals({k: v for k, v in s.items() if k.startswith("followups_")} for s in shards)
    active = sum(int(s.get("sessions_active", 0)) for s in shards)
    data = {
        "sites": sites,
        "minutes": minutes,
        "sessions_active": active,
        "interventions_hour": {"shown": shown, "holdout": held},
        "reactions_hour": {
            "shown": seen,
            "accepted": accepted,
            "dismissed": dismissed,
            "ignored": ignored,
        },
        "conversions_hour": _n(hour, "conv"),
        "sessions_started_hour": _n(hour, "sessions"),
        "per_minute": {str(m): per_minute[m] for m in minutes},
        "models": models,
        "shards": {"count": len(shards), "healthy": healthy, "error": shards_error},
        "serve": serve,
    }
    return {
        "kpis": [
            {"label": "Sessions active now", "value": active},
            {"label": "Interventions shown (last hour)", "value": shown},
            {"label": "Held out (last hour)", "value": held},
            {"label": "Accepted", "value": accepted},
            {"label": "Dismissed", "value": dismissed},
            {"label": "Ignored (shown, no answer)", "value": ignored},
            {"label": "Conversions (last hour)", "value": _n(hour, "conv")},
            {"label": "Live model", "value": ", ".join(models) or "?"},
            {
                "label": "Shards healthy",
                "value": f"{healthy}/{len(shards)}",
                "state": "ok" if shards and healthy == len(shards) else "bad",
            },
        ],
        "charts": [
            {
                "id": "interventions_per_minute",
                "title": "Interventions per minute, by kind (shown / holdout)",
                "type": "line",
                "labels": labels,
                "series": series,
            }
        ],
        "tables": [
            table(
                "chats",
                "Help chats (last hour), by what opened them",
                [
                    col("what", "What"),
                    col("offer", "From an offer", True),
                    col("button", "From the Help button", True),
                ],
                [
                    {"what": label, **{o: _n(hour, chat_field(w, o)) for o in CHAT_ORIGINS}}
                    for w, label in zip(CHAT_COUNTS, CHAT_LABELS, strict=True)
                ],
            ),
            table(
                "serve",
                "Serve follow-ups (all shards, since start)",
                [col("what", "What"), col("count", "Count", True)],
                [{"what": k.removeprefix("followups_"), "count": v} for k, v in serve.items()],
            ),
        ],
        "notes": [
            "Ignored = shown minus accepted minus dismissed, within the hour: an answer in the "
            "next minute can make it briefly low."
        ],
        "data": data,
    }


# -- Funnel ----------------------------------------------------------------------------------


def _funnel_rows(counts: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per step: sessions reaching it by arm, and the share of the step before."""
    rows = []
    for i, step in enumerate(FUNNEL):
        row: dict[str, Any] = {"step": step}
        for a, arm in ARMS:
            n = _n(counts, f"reach:{step}:{a}")
            before = _n(counts, f"reach:{FUNNEL[i - 1]}:{a}") if i else n
            row[arm] = n
            row[f"{arm}_of_previous"] = _rate(n, before) if i else None
            row[f"{arm}_dropoff"] = before - n if i else None
        rows.append(row)
    return rows


async def funnel(ctx: ConsoleContext, query: Mapping[str, str]) -> View:
    """The page-type funnel per site and day, drop-off per step, treated against holdout, and
    where visitors struggle (signals that rose, by page type)."""
    sites, days = sites_of(ctx, query), days_of(query)
    tallies = await day_tallies(ctx, sites, days)
    all_counts = totals(tallies.values())
    steps = _funnel_rows(all_counts)
    by_day = []
    for (site, day), counts in tallies.items():
        row: dict[str, Any] = {"site": site, "day": day}
        for step in FUNNEL:
            for a, arm in ARMS:
                row[f"{step}_{arm}"] = _n(counts, f"reach:{step}:{a}")
        by_day.append(row)
    pages = sorted({f.split(":")[2] for f in all_counts if f.startswith("sig:")})
    struggle = [
        {"signal": s, **{p: _n(all_counts, f"sig:{s}:{p}") for p in pages}}
        for s in SIGNALS
        if any(_n(all_counts, f"sig:{s}:{p}") for p in pages)
    ]
    step_cols = [col("step", "Step")]
    for _a, arm in ARMS:
        step_cols += [
            col(arm, f"Sessions ({arm})", True),
            col(f"{arm}_of_previous", f"Of previous ({arm})", True),
            col(f"{arm}_dropoff", f"Drop-off ({arm})", True),
        ]
    day_cols = [col("site", "Site"), col("day", "Day")] + [
        col(f"{s}_{arm}", f"{s} ({arm})", True) for s in FUNNEL for _a, arm in ARMS
    ]
    landing = {arm: _n(all_counts, f"reach:landing:{a}") for a, arm in ARMS}
    return {
        "kpis": [{"label": f"Sessions ({arm})", "value": landing[arm]} for _a, arm in ARMS]
        + [
            {
                "label": f"Purchase rate ({arm})",
                "value": _rate(_n(all_counts, f"reach:purchase:{a}"), landing[arm]),
            }
            for a, arm in ARMS
        ],
        "charts": [
            {
                "id": "funnel",
                "title": "Share of sessions reaching each step",
                "type": "bar",
                "labels": list(FUNNEL),
                "series": [
                    {
                        "name": arm,
                        "values": [
                            _rate(_n(all_counts, f"reach:{s}:{a}"), landing[arm]) for s in FUNNEL
                        ],
                    }
                    for a, arm in ARMS
                ],
            }
        ],
        "tables": [
            table("steps", "Funnel steps", step_cols, steps),
            table("by_day", "By site and day", day_cols, by_day),
            table(
                "struggle",
                "Signals that rose, by page type",
                [col("signal", "Signal")] + [col(p, p, True) for p in pages],
                struggle,
            ),
        ],
        "notes": [
            "A session counts once per step per day, at the furthest step it reached (reaching "
            "the checkout counts the steps before it). Treated and holdout are the sessions' "
            "arms (intent to treat), whether or not they were offered help."
        ],
        "data": {"sites": sites, "days": days, "totals": all_counts, "steps": steps},
    }


# -- Outcomes --------------------------------------------------------------------------------

OutcomeKey = tuple[str, str, str | None, int | None]
_outcomes_cache: dict[OutcomeKey, tuple[float, dict[str, Any]]] = {}
_refreshing: dict[OutcomeKey, asyncio.Task] = {}


def _read_report(ctx: ConsoleContext, site: str | None, since_ms: int | None) -> dict[str, Any]:
    r = redis_client(ctx.redis_url)
    try:
        return read_outcomes(r, ctx.keys.prefix, since_ms, site)
    finally:
        r.close()


async def _refresh(ctx: ConsoleContext, key: OutcomeKey) -> dict[str, Any]:
    report = await asyncio.to_thread(_read_report, ctx, key[2], key[3])
    now = time.monotonic()
    for k in [k for k, (t, _r) in _outcomes_cache.items() if now - t > OUTCOMES_STALE_S]:
        del _outcomes_cache[k]
    _outcomes_cache[key] = (now, report)
    return report


async def outcome_report(
    ctx: ConsoleContext, site: str | None, since_ms: int | None
) -> dict[str, Any]:
    """:func:`read_outcomes` (in a thread), cached per query: stale-while-revalidate.

    Younger than ``OUTCOMES_CACHE_S``: the cached report. Older, up to
    ``OUTCOMES_STALE_S``: the cached report at once, and one read of the log
    in the background for the next view. Only the first view of a query (or
    one after ``OUTCOMES_STALE_S`` without any) waits for the read: a full
    log (100,000 decisions) takes seconds. ``source.age_s`` says how old
    the answer is.
    """
    key = (ctx.redis_url, ctx.keys.prefix, site, since_ms)
    hit = _outcomes_cache.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < OUTCOMES_STALE_S:
        if now - hit[0] >= OUTCOMES_CACHE_S and key not in _refreshing:
            task = asyncio.get_running_loop().create_task(_refresh(ctx, key))
            _refreshing[key] = task
            task.add_done_callback(lambda _t: _refreshing.pop(key, None))
        report = hit[1]
    else:
        report = await _refresh(ctx, key)
        now = time.monotonic()
    age = now - _outcomes_cache[key][0] if key in _outcomes_cache else 0.0
    return report | {"source": {**report["source"], "age_s": round(max(age, 0.0), 1)}}


def _day_ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp() * 1000)


def _group_row(g: Mapping[str, Any]) -> dict[str, Any]:
    r = g["reactions"]
    return {
        "key": g["key"],
        "sessions": g["sessions"],
        "treated_n": g["treated_n"],
        "treated_rate": g["treated_rate"],
        "holdout_n": g["holdout_n"],
        "holdout_rate": g["holdout_rate"],
        "uplift": g["uplift"],
        "low": g["low"],
        "high": g["high"],
        "excludes_zero": "yes" if g["excludes_zero"] else "no",
        "accepted": r["accepted"],
        "dismissed": r["dismissed"],
        "ignored": r["ignored"],
        "unseen": r["unseen"],
        "chatted": g["chats"]["sessions"],
        "chat_rate": g["chats"]["rate"],
        "chat_resolved": g["chats"]["resolved_by_assistant"],
        "chat_handoff": g["chats"]["handed_off"],
    }


def _group_cols(first: str) -> list[dict[str, Any]]:
    return [
        col("key", first),
        col("sessions", "Sessions", True),
        col("treated_n", "Treated", True),
        col("treated_rate", "Treated conv.", True),
        col("holdout_n", "Holdout", True),
        col("holdout_rate", "Holdout conv.", True),
        col("uplift", "Uplift", True),
        col("low", "Low", True),
        col("high", "High", True),
        col("excludes_zero", "Excludes 0"),
        col("accepted", "Accepted", True),
        col("dismissed", "Dismissed", True),
        col("ignored", "Ignored", True),
        col("unseen", "Unseen", True),
        col("chatted", "Chatted", True),
        col("chat_rate", "Chatted conv.", True),
        col("chat_resolved", "Chats resolved by assistant", True),
        col("chat_handoff", "Chats handed off", True),
    ]


async def outcomes(ctx: ConsoleContext, query: Mapping[str, str]) -> View:
    """Conversion of sessions offered help against the holdout, in total and by kind, site,
    segment, model and day, with intervals (the ``lifeline-outcomes/1`` report as ``data``)."""
    site = query.get("site") or None
    if site is not None:
        sites_of(ctx, query)  # a known site, or a clear error
    days = days_of(query)
    report = await outcome_report(ctx, site, _day_ms(days[0]))
    # The report starts at ``from``; days after ``to`` are left out here.
    last = days[-1]
    by = dict(report["by"])
    by["day"] = [g for g in by["day"] if g["key"] <= last]
    t = report["totals"]
    titles = {"kind": "Kind", "site": "Site", "segment": "Segment", "model": "Model", "day": "Day"}
    return {
        "kpis": [
            {"label": "Sessions with a decision", "value": report["sessions"]},
            {"label": "Treated conversion", "value": t["treated_rate"]},
            {"label": "Holdout conversion", "value": t["holdout_rate"]},
            {"label": "Uplift", "value": t["uplift"]},
            {
                "label": f"Interval ({report['level']:.0%})",
                "value": "–"
                if t["low"] is None or t["high"] is None
                else f"{t['low']:+.3f} .. {t['high']:+.3f}",
            },
        ],
        "charts": [
            {
                "id": "conversion_by_day",
                "title": "Conversion by day: treated and holdout",
                "type": "line",
                "labels": [g["key"] for g in by["day"]],
                "series": [
                    {"name": "treated", "values": [g["treated_rate"] for g in by["day"]]},
                    {"name": "holdout", "values": [g["holdout_rate"] for g in by["day"]]},
                ],
            }
        ],
        "tables": [
            table(
                f"by_{dim}",
                f"By {title.lower()}",
                _group_cols(title),
                [_group_row(g) for g in by[dim]],
            )
            for dim, title in titles.items()
        ],
        "notes": [
            "A session's group is its first decision's; treated is intent to treat "
            "(training/outcomes.py). Rates are null where a group has no treated or no holdout "
            "session."
        ],
        "data": report | {"by": by},
    }


# -- Segments ----------------------------------------------------------------------------------


async def segments(ctx: ConsoleContext, query: Mapping[str, str]) -> View:
    """The model's K-means segments: sessions at their first decision by segment (tallies) and
    their conversion, treated against holdout (the outcome report)."""
    sites, days = sites_of(ctx, query), days_of(query)
    tallies = await day_tallies(ctx, sites, days)
    counts = totals(tallies.values())
    site = query.get("site") or None
    report = await outcome_report(ctx, site, _day_ms(days[0]))
    conv = {g["key"]: g for g in report["by"]["segment"]}
    names = sorted(
        {f[4:].rsplit(":", 1)[0] for f in counts if f.startswith("seg:")} | set(conv),
        key=lambda n: (n == NO_SEGMENT, n),
    )
    rows = []
    for name in names:
        g = conv.get(name)
        rows.append(
            {
                "segment": name,
                "treated": _n(counts, f"seg:{name}:t"),
                "holdout": _n(counts, f"seg:{name}:h"),
                "treated_rate": g["treated_rate"] if g else None,
                "holdout_rate": g["holdout_rate"] if g else None,
                "uplift": g["uplift"] if g else None,
                "low": g["low"] if g else None,
                "high": g["high"] if g else None,
            }
        )
    return {
        "kpis": [{"label": "Segments", "value": len([n for n in names if n != NO_SEGMENT])}],
        "charts": [
            {
                "id": "segment_sizes",
                "title": "Sessions offered help (or held out), by segment",
                "type": "bar",
                "labels": names,
                "series": [{"name": arm, "values": [r[arm] for r in rows]} for _a, arm in ARMS],
            }
        ],
        "tables": [
            table(
                "segments",
                "Segments",
                [
                    col("segment", "Segment"),
                    col("treated", "Sessions (treated)", True),
                    col("holdout", "Sessions (holdout)", True),
                    col("treated_rate", "Treated conv.", True),
                    col("holdout_rate", "Holdout conv.", True),
                    col("uplift", "Uplift", True),
                    col("low", "Low", True),
                    col("high", "High", True),
                ],
                rows,
            )
        ],
        "notes": [
            "A session is in the segment of its first decision: sessions never offered help "
            "(nor held out) have no segment.",
            NO_VISITOR_ID,
        ],
        "note": NO_VISITOR_ID,
        "returning": None,
        "cohorts": None,
        "data": {"sites": sites, "days": days, "segments": rows},
    }


# -- CSV and routes ----------------------------------------------------------------------------


def table_csv(view: Mapping[str, Any], table_id: str) -> str:
    """A table of a view as CSV (:func:`serve.console.shapes.to_csv`); KeyError if absent."""
    for t in view.get("tables", []):
        if t["id"] == table_id:
            return to_csv(t)
    raise KeyError(table_id)


def _handler(fn):
    async def handler(request: web.Request) -> web.Response:
        try:
            view = await fn(request.app["ctx"], request.query)
        except BadQuery as exc:
            return error(400, "bad_request", str(exc))
        return web.json_response(view)

    handler.__name__ = f"insights_{fn.__name__}"
    return handler


def _view(fn):
    async def view(request: web.Request) -> View:
        return await fn(request.app["ctx"], request.query)

    view.__name__ = f"{fn.__name__}_view"
    return view


# The same pages as view functions of a request (serve/console/views.py's VIEWS): their
# BadQuery is a ValueError, which the views' handler answers with 400 bad_request.
VIEWS = {
    "business": _view(live_business),
    "outcomes": _view(outcomes),
    "funnel": _view(funnel),
    "segments": _view(segments),
}

ROUTES = (
    Route("GET", "/api/live/business", _handler(live_business), "viewer"),
    Route("GET", "/api/outcomes", _handler(outcomes), "viewer"),
    Route("GET", "/api/funnel", _handler(funnel), "viewer"),
    Route("GET", "/api/segments", _handler(segments), "viewer"),
)
