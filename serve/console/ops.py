"""Health, metrics and counters: what a load balancer, Prometheus and an operator poll.

``/healthz`` is public on the console's port, for a load balancer: whether
this host serves, and which part fails, with nothing else (no URL, no
addresses, no counts). ``/api/health`` is the operator's detailed view
(shard internals, gateway processes, Redis persistence), behind sign-in.
``/metrics`` is Prometheus text; it holds counters and latencies, no
personal data and no secrets, and is open so that a scraper needs no
account (the console's port listens on loopback unless told otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from serve.console import live_metrics
from serve.console.context import ConsoleContext

SHARD_INFO_TIMEOUT_S = 5.0


async def health(ctx: ConsoleContext) -> dict[str, Any]:
    """Whether this host serves with all it was given: Redis, loops, gateway processes, shards."""
    gateway = ctx.gateway
    try:
        redis_ok = bool(await ctx.redis.ping())
    except Exception:
        redis_ok = False
    body: dict[str, Any] = {"ok": redis_ok, "redis": redis_ok, "checks": {"redis": redis_ok}}
    if gateway is not None:
        own = gateway.health()  # its background loops: one that keeps failing turns health red
        gateways = ctx.processes() if ctx.processes is not None else []
        # A gateway process down (restarting) means this host serves with less than it was
        # given: not ok, so that a load balancer or an operator hears of it.
        gateway_ok = own["ok"] and all(g.get("state") == "up" for g in gateways)
        body["checks"]["gateway"] = gateway_ok
        body["ok"] = redis_ok and gateway_ok
        body.update(
            gateway=gateway.id,
            loops=own["loops"],
            shards=len(gateway.shards),
            connections=gateway.stats.connections,
        )
        if gateways:
            body["gateways"] = gateways
    if ctx.status is not None:
        body.update(ctx.status())
    if ctx.shard_info is not None:
        await _add_shard_health(ctx, body)
    return body


async def _add_shard_health(ctx: ConsoleContext, body: dict[str, Any]) -> None:
    """Add each shard's own report to a health body; a sick or silent shard is noted."""
    assert ctx.shard_info is not None
    try:
        infos = await asyncio.wait_for(ctx.shard_info(), SHARD_INFO_TIMEOUT_S)
        body["shard_info"] = infos
        # A shard whose background loop is down (snapshots, model polling) is not well.
        sick = [i.get("index") for i in infos if not i.get("healthy", True)]
        body["checks"]["shards"] = not sick
        if sick:
            body["ok"] = False
            body["shards_unhealthy"] = sick
    except Exception as exc:  # a shard restarting: health says so rather than hanging
        body["ok"] = body["checks"]["shards"] = False
        body["shard_info"] = f"unavailable: {type(exc).__name__}"


def public_health(body: dict[str, Any]) -> dict[str, Any]:
    """What a load balancer may see of :func:`health`: ok, and which part is not."""
    return {"ok": bool(body["ok"]), "checks": body["checks"]}


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz`` (public): 200 while this host serves, 503 and the failing part otherwise."""
    body = await health(request.app["ctx"])
    return web.json_response(public_health(body), status=200 if body["ok"] else 503)


async def health_detail(request: web.Request) -> web.Response:
    """``GET /api/health``: everything :func:`health` knows (signed-in operators)."""
    body = await health(request.app["ctx"])
    return web.json_response(body, status=200 if body["ok"] else 503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format, every gateway process of this host.

    This process's gateway is read in-process (fresh); the others (extra
    gateway processes, which have no HTTP port) from the snapshots they
    publish to Redis about once a second. Each series has a ``gateway`` label.
    """
    ctx = request.app["ctx"]
    snaps = [ctx.gateway.metrics_snapshot()] if ctx.gateway is not None else []
    own = {s["gateway"] for s in snaps}
    try:
        published = await live_metrics.read_snapshots(ctx)
    except Exception:  # Redis down: this process's gateway still answers
        published = []
    snaps += [g[0] for g in published if g[0]["gateway"] not in own]
    return web.Response(body=metrics_text(snaps), content_type="text/plain", charset="utf-8")


async def stats(request: web.Request) -> web.Response:
    """``GET /api/stats``: the gateway's counters as JSON."""
    gateway = request.app["ctx"].gateway
    return web.json_response(gateway.stats.snapshot() if gateway is not None else {})


# Counters that are maps: one labelled series per entry, under this name and label.
_LABELLED = {
    "errors_by_code": ("errors_by_code", "code"),
    "loop_failures": ("loop_failures", "loop"),
    "shard_restarts": ("shard_restarts", "shard"),
}
_GAUGES = ("connections", "mean_shard_batch")


class _Snapshots(Collector):
    """Gateway snapshots (serve/edge/metrics.py) as metric families, each series labelled by gateway."""

    def __init__(self, snapshots: list[dict[str, Any]]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}

        def family(name: str, kind: type, doc: str, labels: list[str]) -> Any:
            if name not in families:
                families[name] = kind(name, doc, labels=labels)
            return families[name]

        for snap in self.snapshots:
            gw = str(snap["gateway"])
            for key, value in snap["counters"].items():
                if key in _LABELLED:
                    base, label = _LABELLED[key]
                    f = family(
                        f"lifeline_gateway_{base}", CounterMetricFamily, key, ["gateway", label]
                    )
                    for k, v in sorted(value.items()):
                        f.add_metric([gw, str(k)], float(v))
                elif key in _GAUGES:
                    f = family(f"lifeline_gateway_{key}", GaugeMetricFamily, key, ["gateway"])
                    f.add_metric([gw], float(value))
                elif isinstance(value, (int, float)):
                    f = family(f"lifeline_gateway_{key}", CounterMetricFamily, key, ["gateway"])
                    f.add_metric([gw], float(value))
            for name, h in snap["histograms"].items():
                f = family(name, HistogramMetricFamily, name, ["gateway"])
                buckets = [
                    (floatToGoString(le), float(c))
                    for le, c in zip(h["le"], h["counts"], strict=True)
                ]
                f.add_metric([gw], buckets, float(h["sum"]))
        yield from families.values()


def metrics_text(snapshots: list[dict[str, Any]]) -> bytes:
    """Gateway snapshots (:meth:`serve.edge.gateway.Gateway.metrics_snapshot`) in Prometheus text format.

    Counters keep their names (``lifeline_gateway_<counter>_total``), the maps
    become labelled series, the latencies histograms (``..._seconds_bucket``).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshots(snapshots))
    return generate_latest(registry)
