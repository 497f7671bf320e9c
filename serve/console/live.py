"""The Live page: what the service is doing now, pushed to the browser as server-sent events.

``GET /api/view/live`` is one snapshot; ``GET /api/live/stream`` sends a
fresh one every ``PUSH_EVERY_S`` seconds over one long response (SSE),
so the page updates itself without reloading. Three readings make it:
health (Redis, gateways, each shard's report), every gateway's traffic
and latency over the last minute (serve/console/live_metrics.py, from
the histograms the gateways publish), and the business counts the shards
keep as events arrive (serve/console/insights.py).

Limits: each open Live page costs one ``ping`` of every shard per push,
one read of each gateway's published snapshots and of the last hour's
minute counters; an SSE stream
that a proxy buffers does not update (send ``X-Accel-Buffering: no``, set
here).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from serve.console import insights, ops
from serve.console.live_metrics import gateway_totals
from serve.console.routing import Route
from serve.console.shapes import View, col, table

PUSH_EVERY_S = 2.0
ACK_SLO_MS, INTERVENTION_SLO_MS = 25.0, 50.0


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _latency_kpi(label: str, stats: dict[str, Any], slo: float) -> dict[str, Any]:
    p99 = stats.get("p99")
    kpi: dict[str, Any] = {"label": f"{label} p50 / p99 (1 min)", "unit": "ms"}
    kpi["value"] = f"{_ms(stats.get('p50'))} / {_ms(p99)}" if p99 is not None else None
    if p99 is not None:
        kpi["state"] = "ok" if p99 <= slo else "bad"
    return kpi


async def live_view(ctx: Any, query: Any) -> View:
    """The Live view: health, traffic and latency over the last minute, and the business counts."""
    health, traffic = await asyncio.gather(ops.health(ctx), gateway_totals(ctx))
    read = health.get("shard_info")
    shards = read if isinstance(read, list) else []
    # The shards' reports health just read serve the business counts too (one ping, not two);
    # a failed read is retried there, which names the failure.
    business = await insights.live_business(ctx, query, shards if isinstance(read, list) else None)
    kpis = [
        {
            "label": "Health",
            "value": "ok" if health["ok"] else "degraded",
            "state": "ok" if health["ok"] else "bad",
        },
        {"label": "Events/s (acked, 1 min)", "value": round(traffic["events_per_s"], 1)},
        {"label": "Open connections", "value": traffic["connections"]},
        _latency_kpi("Ack", traffic["ack_ms"], ACK_SLO_MS),
        _latency_kpi("Intervention", traffic["intervention_ms"], INTERVENTION_SLO_MS),
        *business["kpis"],
    ]
    latency_rows = [
        {
            "what": name,
            "count": s["count"],
            "p50": _ms(s["p50"]),
            "p95": _ms(s["p95"]),
            "p99": _ms(s["p99"]),
            "slo": slo,
        }
        for name, s, slo in (
            ("ack (frame read to ack written)", traffic["ack_ms"], ACK_SLO_MS),
            (
                "intervention (trigger read to push written)",
                traffic["intervention_ms"],
                INTERVENTION_SLO_MS,
            ),
        )
    ]
    shard_rows = [
        {
            "shard": s.get("index"),
            "healthy": "yes" if s.get("healthy") else "NO",
            "active": s.get("sessions_active"),
            "dormant": s.get("sessions_dormant"),
            "events": s.get("events"),
            "decisions": s.get("decisions"),
            "model": s.get("model"),
            "challenger": s.get("challenger") or "",
        }
        for s in shards
    ]
    checks = [{"part": k, "ok": "yes" if v else "NO"} for k, v in health["checks"].items()]
    return {
        "kpis": kpis,
        "charts": business.get("charts", []),
        "tables": [
            table(
                "latency",
                f"Latency over the last minute ({traffic['gateways']} gateways), ms",
                [
                    col("what", "What"),
                    col("count", "Count", True),
                    col("p50", "p50", True),
                    col("p95", "p95", True),
                    col("p99", "p99", True),
                    col("slo", "SLO (p99)", True),
                ],
                latency_rows,
            ),
            table(
                "shards",
                "Shards",
                [
                    col("shard", "Shard", True),
                    col("healthy", "Healthy"),
                    col("active", "Active", True),
                    col("dormant", "Dormant", True),
                    col("events", "Events", True),
                    col("decisions", "Decisions", True),
                    col("model", "Model"),
                    col("challenger", "Challenger"),
                ],
                shard_rows,
            ),
            table("checks", "Health checks", [col("part", "Part"), col("ok", "OK")], checks),
            *business.get("tables", []),
        ],
        "notes": business.get("notes", []),
    }


async def view(request: web.Request) -> View:
    return await live_view(request.app["ctx"], request.query)


async def event_stream(request: web.Request) -> web.StreamResponse:
    """A prepared server-sent-events response (the Live and Support pages' streams).

    Never cached, and not buffered by a proxy (``X-Accel-Buffering: no``).
    """
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/live/stream``: the Live view every few seconds, as server-sent events."""
    response = await event_stream(request)
    try:
        while True:
            data = json.dumps(await live_view(request.app["ctx"], request.query), default=str)
            await response.write(f"data: {data}\n\n".encode())
            await asyncio.sleep(PUSH_EVERY_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


ROUTES = (Route("GET", "/api/live/stream", stream, "viewer"),)
