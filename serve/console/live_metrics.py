"""Every gateway process's metrics, read from Redis: for ``/metrics`` and the Live page.

Each gateway process publishes a snapshot of its counters and cumulative
histogram buckets about once a second (serve/edge/metrics.py), including the
extra gateway processes, which have no HTTP port. The history stays in Redis
(the last ~75 s per gateway, newest first), so any console process, however
recently started and however rarely asked, can compute the last minute:
:func:`gateway_totals` takes the difference between each gateway's newest
snapshot and its snapshot about 60 s older (or, for a gateway younger than
that, everything since it started) and reads percentiles from the summed
bucket differences as Prometheus' ``histogram_quantile`` does.

Limits: a percentile is only as fine as the buckets (linear within one, the
highest finite bound when it falls in the ``+Inf`` bucket); a gateway that
stopped less than 10 s ago still counts, with its last snapshot.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from serve.console.context import ConsoleContext
from serve.edge.metrics import EXPIRES_S, HISTOGRAMS

WINDOW_S = 60.0
QUANTILES = (0.5, 0.95, 0.99)


def quantile_from_buckets(q: float, le: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q`` quantile (0-1) of a histogram with upper bounds ``le`` and cumulative ``counts``.

    As Prometheus' ``histogram_quantile``: the rank's bucket is found and the
    value interpolated linearly inside it (from 0 for the first bucket); a
    rank in the ``+Inf`` bucket gives the highest finite bound. None without
    observations.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    i = bisect_left(counts, rank)  # the first bucket holding the rank (counts never fall)
    cum = counts[i]
    upper = le[i]
    if upper == float("inf"):
        return le[i - 1] if i > 0 else None
    lower = le[i - 1] if i > 0 else 0.0
    below = counts[i - 1] if i > 0 else 0.0
    inside = cum - below
    if inside <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / inside


async def read_snapshots(ctx: ConsoleContext, history: bool = False) -> list[list[dict[str, Any]]]:
    """Each live gateway's snapshots, newest first (only the newest unless ``history``)."""
    keys = ctx.keys
    ids = await ctx.redis.zrangebyscore(keys.gateway_metrics_index, time.time() - EXPIRES_S, "+inf")
    if not ids:
        return []
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for gw in ids:
            key = keys.gateway_metrics(gw.decode() if isinstance(gw, bytes) else gw)
            if history:
                pipe.lrange(key, 0, -1)
            else:
                pipe.lrange(key, 0, 0)
        lists = await pipe.execute()
    out = []
    for raw in lists:
        snaps = []
        for item in raw:
            try:
                snaps.append(json.loads(item))
            except ValueError:  # a snapshot cut short: skipped, the next one replaces it
                continue
        if snaps:
            out.append(snaps)
    return out


def _older(snaps: list[dict[str, Any]], window_s: float) -> dict[str, Any] | None:
    """The snapshot closest to ``window_s`` before the newest; None: the gateway is younger."""
    newest = snaps[0]["ts"]
    for snap in snaps[1:]:
        if snap["ts"] <= newest - window_s:
            return snap
    # Not a minute of history: the oldest kept, unless it is the gateway's first minute.
    oldest = snaps[-1]
    if len(snaps) > 1 and oldest["ts"] - snaps[0].get("started", oldest["ts"]) > 2.0:
        return oldest
    return None


def _diff(new: dict[str, Any], old: dict[str, Any] | None) -> tuple[float, dict[str, Any]]:
    """(seconds covered, counters and histograms counted in between) of two snapshots."""
    if old is None:  # everything since the gateway started
        since = new.get("started", new["ts"])
        return new["ts"] - since, {"counters": new["counters"], "histograms": new["histograms"]}
    counters = {
        k: v - old["counters"].get(k, 0)
        for k, v in new["counters"].items()
        if isinstance(v, (int, float))
    }
    hists = {}
    for name, h in new["histograms"].items():
        o = old["histograms"].get(name)
        if o is None or o["le"] != h["le"]:
            hists[name] = h
            continue
        hists[name] = {
            "le": h["le"],
            "counts": [a - b for a, b in zip(h["counts"], o["counts"], strict=True)],
            "sum": h["sum"] - o["sum"],
            "count": h["count"] - o["count"],
        }
    return new["ts"] - old["ts"], {"counters": counters, "histograms": hists}


def _percentiles_ms(le: list[float], counts: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": int(counts[-1]) if counts else 0}
    for q in QUANTILES:
        v = quantile_from_buckets(q, le, counts) if counts else None
        out[f"p{round(q * 100)}"] = None if v is None else round(v * 1000.0, 2)
    return out


def totals(gateways: list[list[dict[str, Any]]], window_s: float = WINDOW_S) -> dict[str, Any]:
    """The Live page's figures from each gateway's snapshots (newest first): see :func:`gateway_totals`."""
    rates = {"events_acked": 0.0, "acks": 0.0, "events_scored": 0.0, "interventions": 0.0}
    merged: dict[str, tuple[list[float], list[float]]] = {}
    connections = 0
    spans = []
    for snaps in gateways:
        newest = snaps[0]
        connections += int(newest["counters"].get("connections", 0))
        dt, d = _diff(newest, _older(snaps, window_s))
        spans.append(dt)
        if dt > 0:
            for k in rates:
                rates[k] += max(0.0, d["counters"].get(k, 0)) / dt
        for name, h in d["histograms"].items():
            le, counts = merged.get(name, (h["le"], [0.0] * len(h["le"])))
            if le != h["le"]:  # another release's buckets: not summable, left out
                continue
            merged[name] = (le, [a + b for a, b in zip(counts, h["counts"], strict=True)])
    out: dict[str, Any] = {
        "gateways": len(gateways),
        "connections": connections,
        "window_s": round(max(spans), 1) if spans else 0.0,
        "events_per_s": round(rates["events_acked"], 1),
        "acks_per_s": round(rates["acks"], 1),
        "scored_per_s": round(rates["events_scored"], 1),
        "interventions_per_s": round(rates["interventions"], 2),
    }
    for key in ("ack", "intervention"):
        le, counts = merged.get(HISTOGRAMS[key][0], ([], []))
        out[f"{key}_ms"] = _percentiles_ms(le, counts)
    return out


async def gateway_totals(ctx: ConsoleContext) -> dict[str, Any]:
    """The host's gateways over the last minute, for the Live page.

    ``{"gateways", "connections", "window_s", "events_per_s", "acks_per_s",
    "scored_per_s", "interventions_per_s", "ack_ms": {"count", "p50", "p95",
    "p99"}, "intervention_ms": {...}}``; a percentile is None without
    observations in the window. ``events_per_s`` counts acknowledged events,
    ``acks_per_s`` acknowledged frames; connections are the newest counts.
    """
    return totals(await read_snapshots(ctx, history=True))
