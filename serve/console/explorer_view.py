"""The Sessions and Session pages' views: :mod:`serve.console.explorer`'s data shaped for display.

``sessions`` (``/sessions``): the search's filters and a page of results,
each linking to its timeline, and a link to the next page. ``session``
(``/sessions/{site}/{sid}``): KPIs, the exit-risk curve after each event
and the signals as they rose (charts), the decisions with their reasons,
the events. Views are the generic documents of :mod:`serve.console.views`.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from serve.console import explorer
from serve.console.shapes import View, col, table, when

WINDOWS = (("", "any time"), ("1h", "last hour"), ("24h", "last 24 hours"), ("7d", "last 7 days"))
_WINDOW_MS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000}
MAX_CHART_POINTS = 2_000


async def _segments(ctx: Any) -> list[str]:
    """Segment names the index has sets for, over every site."""
    names: set[str] = set()
    for site in ctx.sites:
        names |= {
            m.decode() for m in await ctx.redis.smembers(ctx.keys.session_index(site, "segs"))
        }
    return sorted(names)


async def sessions_view(request: web.Request) -> View:
    """``/api/view/sessions``: filters (site, id prefix, window, segment, intervened) and results."""
    ctx, q = request.app["ctx"], request.query
    window = q.get("window", "")
    if window and window not in _WINDOW_MS:
        raise ValueError("window must be 1h, 24h or 7d")
    result = await explorer.search(
        ctx,
        site=q.get("site") or None,
        sid_prefix=q.get("sid") or None,
        since_ms=int(time.time() * 1000) - _WINDOW_MS[window] if window else None,
        segment=q.get("segment") or None,
        intervened=explorer.query_bool(q, "intervened"),
        cursor=q.get("cursor") or None,
    )
    rows = [
        {
            **s,
            "last_seen": when(s["last_seen_ms"]),
            "started": when(s["started_ms"]),
            "segment": s["segment"] or "",
            "href": f"/sessions/{s['site']}/{s['sid']}",
        }
        for s in result["sessions"]
    ]
    tables = [
        table(
            "sessions",
            "Sessions, newest first",
            [
                col("sid", "Session", link="href"),
                col("site", "Site"),
                col("last_seen", "Last seen"),
                col("started", "Started"),
                # The last seq: every event the page numbered, refused ones included
                # (the Session page counts the events logged).
                col("last_seq", "Events sent", num=True),
                col("interventions", "Decisions", num=True),
                col("segment", "Segment"),
            ],
            rows,
            empty="No session matches.",
        )
    ]
    if result["cursor"]:
        params = {k: v for k, v in q.items() if k != "cursor"}
        params["cursor"] = result["cursor"]
        tables.append(
            table(
                "more",
                "More",
                [col("label", "More sessions", link="href")],
                [{"label": "Next page", "href": "/sessions?" + urlencode(params)}],
                csv=False,
            )
        )
    notes = []
    if result["partial"]:
        notes.append(f"Looked at {result['examined']} sessions; the next page goes on from there.")
    if result["truncated"]:
        notes.append(
            f"Only the first {explorer.PREFIX_MAX} ids per site with that prefix are searched."
        )
    return {
        "filters": [
            {
                "name": "site",
                "label": "Site",
                "options": [["", "all"]] + [[s, s] for s in sorted(ctx.sites)],
            },
            {"name": "sid", "label": "Session id starts with", "placeholder": "id prefix"},
            {"name": "window", "label": "Last seen", "options": [list(w) for w in WINDOWS]},
            {
                "name": "segment",
                "label": "Segment",
                "options": [["", "any"]] + [[s, s] for s in await _segments(ctx)],
            },
            {
                "name": "intervened",
                "label": "Intervention",
                "options": [["", "any"], ["true", "got one"], ["false", "none"]],
            },
        ],
        "tables": tables,
        "notes": notes,
    }


def _so_far(seqs: list[int | None], labels: list[int]) -> list[int]:
    """How many of ``seqs`` are at or before each label (event seq)."""
    marks = sorted(s for s in seqs if s is not None)
    out, i = [], 0
    for seq in labels:
        while i < len(marks) and marks[i] <= seq:
            i += 1
        out.append(i)
    return out


def _fields_text(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in fields.items())


async def session_view(request: web.Request) -> View:
    """``/api/view/session?site=&sid=``: one session's timeline."""
    ctx, q = request.app["ctx"], request.query
    return await timeline_view(ctx, q.get("site", ""), q.get("sid", ""))


async def timeline_view(ctx: Any, site: str, sid: str) -> View:
    """One session's timeline as a view (the Session page's; the Support chat page's journey)."""
    tl = await explorer.timeline(ctx, site, sid)
    events = tl["events"]
    shown = events[:MAX_CHART_POINTS]
    labels = [e["seq"] for e in shown]
    rising = list(tl["signals"])
    decisions = tl["decisions"]
    info = tl["session"]
    kpis = [
        {"label": "Events logged", "value": f"{len(events)}+" if tl["cut"] else len(events)},
        {"label": "Decisions", "value": len(decisions)},
        {"label": "Peak exit risk", "value": round(max((e["risk"] for e in events), default=0), 3)},
        {"label": "Segment", "value": info["segment"] or "none"},
        {"label": "Model", "value": tl["model"]},
        {"label": "Consent", "value": ", ".join(info["consent"]) or "none"},
    ]
    charts = [
        {
            "id": "risk",
            "title": "Exit risk after each event",
            "type": "line",
            "labels": labels,
            "x": "event seq",
            "ymax": 1,
            "series": [
                {"name": "exit risk", "values": [round(e["risk"], 4) for e in shown]},
                # Steps where decisions were made (shown or holdout), on the right-hand axis.
                {
                    "name": "decisions so far",
                    "values": _so_far([d["seq"] for d in decisions], labels),
                    "stepped": True,
                    "axis": "y2",
                },
            ],
            "y2": "decisions",
        }
    ]
    if rising:
        charts.append(
            {
                "id": "signals",
                "title": "Struggle signals as they rose",
                "type": "line",
                "labels": labels,
                "x": "event seq",
                "ymax": 1,
                "series": [
                    {"name": s, "values": [e["signals"].get(s, 0) for e in shown]} for s in rising
                ],
            }
        )
    decision_rows = [
        {
            "seq": d["seq"],
            "when": when(d["ts"]),
            "kind": d["kind"],
            "shown": "shown" if d["shown"] else "holdout (not shown)",
            "text": d["text"] or "",
            "trigger": d["trigger"],
            "reasons": ", ".join(f"{r['signal']} {r['strength']}" for r in d["reasons"]),
            "drivers": ", ".join(str(x["words"]) for x in d["drivers"]),
            "model": d["model"],
            "segment": d["segment"] or "",
            "outcome": d["outcome"] or "",
            "converted": d["goal"] or "",
        }
        for d in decisions
    ]
    signal_rows = [
        {
            "signal": s,
            "crossed": r["crossed_seq"] or "",
            "peak": r["peak"],
            "peak_seq": r["peak_seq"],
        }
        for s, r in tl["signals"].items()
    ]
    event_rows = [
        {
            "seq": e["seq"],
            "when": when(e["ts"]),
            "type": e["type"],
            "fields": _fields_text(e["fields"]),
            "risk": round(e["risk"], 4),
        }
        for e in events
    ]
    notes = ["Events show the fields the tracker sends; what visitors type is never collected."]
    if tl["cut"]:
        notes.append(f"A long session: its first {tl['max_events']} events are shown.")
    return {
        "kpis": kpis,
        "charts": charts,
        "tables": [
            table(
                "decisions",
                "Decisions",
                [
                    col("seq", "At event", num=True),
                    col("when", "When"),
                    col("kind", "Kind"),
                    col("shown", "Shown"),
                    col("text", "Text"),
                    col("trigger", "Trigger"),
                    col("reasons", "Reasons"),
                    col("drivers", "What drove the risk"),
                    col("model", "Model"),
                    col("segment", "Segment"),
                    col("outcome", "Visitor did"),
                    col("converted", "Converted"),
                ],
                decision_rows,
                empty="No intervention was decided in this session.",
            ),
            table(
                "signals",
                "Signals",
                [
                    col("signal", "Signal"),
                    col("crossed", "Strong from event", num=True),
                    col("peak", "Peak", num=True),
                    col("peak_seq", "Peak at event", num=True),
                ],
                signal_rows,
                empty="No struggle signal rose.",
            ),
            table(
                "events",
                "Events",
                [
                    col("seq", "Seq", num=True),
                    col("when", "When"),
                    col("type", "Type"),
                    col("fields", "Fields"),
                    col("risk", "Exit risk after", num=True),
                ],
                event_rows,
            ),
        ],
        "notes": notes,
    }
