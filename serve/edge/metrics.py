"""The gateway's latency histograms, and its metrics published to Redis for the console.

Latencies are Prometheus histograms (``prometheus_client``), in seconds, with
buckets fine where the SLOs are (ack p99 under 25 ms, intervention p99 under
50 ms): ``lifeline_gateway_ack_seconds`` (frame read to its ack written),
``lifeline_gateway_intervention_seconds`` (the frame carrying the triggering
event read to the intervention frame written), ``lifeline_gateway_shard_call_seconds``
(one batch's round trip to its shard) and ``lifeline_gateway_redis_append_seconds``
(one append round sent to Redis to its reply). Each :class:`GatewayMetrics`
has a registry of its own, since tests run several gateways in one process.

Every gateway process publishes :func:`snapshot` (its counters and cumulative
buckets) to Redis about once a second (:func:`publish`): extra gateway
processes have no HTTP port, so the console's ``/metrics`` and Live page read
every gateway of the host from there (serve/console/live_metrics.py). The
snapshots of the last ~75 s are kept, newest first, in a list per gateway
that expires when the gateway stops publishing.

Cost: ``Histogram.observe`` took 0.9-1.8 us per call on the 2-core
development machine (3.4 us while other jobs loaded it; ``python -m
serve.edge.metrics``), one call per acked frame, shard call, append round
and intervention: 2-5 ms of CPU a second at 2,000 frames/s. A snapshot
(``histograms()``, ~1.7 KB of JSON with the counters) takes 0.2-0.8 ms, once
a second.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from cluster.keys import Keys

# Seconds. Fine from 1 to 100 ms (the SLOs: ack p99 25 ms, intervention p99 50 ms), coarse
# beyond, so that a quantile computed from them is off by at most a few ms where it matters.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.06,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

HISTOGRAMS = {
    "ack": ("lifeline_gateway_ack_seconds", "events frame read to its ack written"),
    "intervention": (
        "lifeline_gateway_intervention_seconds",
        "frame carrying the triggering event read to the intervention frame written",
    ),
    "shard_call": ("lifeline_gateway_shard_call_seconds", "one batch's round trip to its shard"),
    "redis_append": (
        "lifeline_gateway_redis_append_seconds",
        "one append round sent to Redis to its reply",
    ),
}

PUBLISH_EVERY_S = 1.0
HISTORY = 75  # snapshots kept per gateway: a little over the Live page's minute
EXPIRES_S = 10  # a gateway that stopped publishing drops out of /metrics this soon
INDEX_KEEP_S = 3600  # gateways gone longer than this leave the index


class GatewayMetrics:
    """One gateway's latency histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        made = {
            key: Histogram(name, doc, buckets=LATENCY_BUCKETS, registry=self.registry)
            for key, (name, doc) in HISTOGRAMS.items()
        }
        # Bound methods, looked up once: observed on the hot path.
        self.ack = made["ack"].observe
        self.intervention = made["intervention"].observe
        self.shard_call = made["shard_call"].observe
        self.redis_append = made["redis_append"].observe

    def histograms(self) -> dict[str, dict[str, Any]]:
        """Each histogram's cumulative buckets: ``{name: {"le": [...], "counts": [...], "sum", "count"}}``.

        ``le`` are the upper bounds (the last is ``inf``), ``counts`` the
        cumulative counts, as Prometheus exposes them.
        """
        out: dict[str, dict[str, Any]] = {}
        for family in self.registry.collect():
            h: dict[str, Any] = {"le": [], "counts": [], "sum": 0.0, "count": 0}
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    h["le"].append(float(s.labels["le"]))
                    h["counts"].append(int(s.value))
                elif s.name.endswith("_sum"):
                    h["sum"] = s.value
                elif s.name.endswith("_count"):
                    h["count"] = int(s.value)
            out[family.name] = h
        return out


def snapshot(gateway_id: str, counters: dict[str, Any], metrics: GatewayMetrics) -> dict[str, Any]:
    """What a gateway publishes: its id, pid, start and current time, counters, histograms."""
    return {
        "gateway": gateway_id,
        "pid": os.getpid(),
        "started": metrics.started,
        "ts": time.time(),
        "counters": counters,
        "histograms": metrics.histograms(),
    }


async def publish(redis: Any, keys: Keys, snap: dict[str, Any]) -> None:
    """Push one snapshot onto the gateway's list (newest first) and note the gateway in the index."""
    gw, now = snap["gateway"], snap["ts"]
    key = keys.gateway_metrics(gw)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(key, json.dumps(snap, separators=(",", ":")))
        pipe.ltrim(key, 0, HISTORY - 1)
        pipe.expire(key, EXPIRES_S)
        pipe.zadd(keys.gateway_metrics_index, {gw: now})
        pipe.zremrangebyscore(keys.gateway_metrics_index, "-inf", now - INDEX_KEEP_S)
        await pipe.execute()


def _bench(n: int = 200_000) -> None:
    """Cost of one ``observe`` (``python -m serve.edge.metrics``)."""
    m = GatewayMetrics()
    values = [((i * 7919) % 1000) / 10_000.0 for i in range(n)]  # 0-100 ms, spread over buckets
    observe = m.ack
    t = time.perf_counter()
    for v in values:
        observe(v)
    per = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _v in values:
        pass
    loop = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(200):
        m.histograms()
    snap = (time.perf_counter() - t) / 200
    print(f"observe: {(per - loop) * 1e6:.2f} us per call; histograms(): {snap * 1e6:.0f} us")


if __name__ == "__main__":
    _bench()
