"""The Live page: what the service is doing now, pushed to the browser as server-sent events.

``GET /api/view/live`` is one snapshot; ``GET /api/live/stream`` sends a
fresh one every ``PUSH_EVERY_S`` seconds over one long response (SSE),
so the page updates itself without reloading. Rates (events/s) are the
difference between two successive readings of the shards' counters; the
first reading of a stream has none yet.

Limits: each open Live page costs one ``ping`` of every shard per push
(a few hundred microseconds of each shard's time) and the reads below.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from serve.console import ops
from serve.console.routing import Route
from serve.console.shapes import col, table

PUSH_EVERY_S = 2.0


async def _reading(request: web.Request) -> dict[str, Any]:
    """One reading: health (with each shard's report) and the time it was taken."""
    ctx = request.app["ctx"]
    body = await ops.health(ctx)
    return {"t": time.monotonic(), "health": body}


def _shards(h: dict[str, Any]) -> list[dict[str, Any]]:
    infos = h.get("shard_info")
    return infos if isinstance(infos, list) else []


def live_view(now: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """The Live view from a reading and, for rates, the reading before it."""
    h = now["health"]
    shards = _shards(h)
    events = sum(s.get("events", 0) for s in shards)
    decisions = sum(s.get("decisions", 0) for s in shards)
    rate = None
    if before is not None:
        dt = now["t"] - before["t"]
        prev = sum(s.get("events", 0) for s in _shards(before["health"]))
        rate = round(max(0, events - prev) / dt, 1) if dt > 0 else None
    models = sorted({str(s.get("model")) for s in shards}) or ["?"]
    healthy = sum(1 for s in shards if s.get("healthy"))
    kpis = [
        {
            "label": "Health",
            "value": "ok" if h["ok"] else "degraded",
            "state": "ok" if h["ok"] else "bad",
        },
        {"label": "Sessions active now", "value": sum(s.get("sessions_active", 0) for s in shards)},
        {"label": "Events/s (scored)", "value": rate},
        {"label": "Open connections", "value": h.get("connections")},
        {
            "label": "Shards healthy",
            "value": f"{healthy}/{len(shards)}",
            "state": "ok" if shards and healthy == len(shards) else "bad",
        },
        {"label": "Live model", "value": ", ".join(models)},
        {"label": "Events scored (since start)", "value": events},
        {"label": "Decisions (since start)", "value": decisions},
    ]
    rows = [
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
    checks = [{"part": k, "ok": "yes" if v else "NO"} for k, v in h.get("checks", {}).items()]
    return {
        "kpis": kpis,
        "tables": [
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
                rows,
            ),
            table("checks", "Health checks", [col("part", "Part"), col("ok", "OK")], checks),
        ],
    }


async def view(request: web.Request) -> dict[str, Any]:
    return live_view(await _reading(request), None)


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/live/stream``: the Live view every few seconds, as server-sent events."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    before = None
    try:
        while True:
            now = await _reading(request)
            data = json.dumps(live_view(now, before), default=str)
            await response.write(f"data: {data}\n\n".encode())
            before = now
            await asyncio.sleep(PUSH_EVERY_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


ROUTES = (Route("GET", "/api/live/stream", stream, "viewer"),)
