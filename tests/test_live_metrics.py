"""Gateway histograms, their snapshots in Redis, and what the console makes of them.

Percentiles read from cumulative buckets are checked against numpy's
percentiles of the same samples: they may differ by at most the width of
the bucket the true value falls in (that is all a histogram knows).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.config import Settings
from cluster.keys import Keys
from serve.console.context import ConsoleContext
from serve.console.live_metrics import gateway_totals, quantile_from_buckets, totals
from serve.console.ops import metrics_text
from serve.edge.metrics import LATENCY_BUCKETS, GatewayMetrics, publish, snapshot

ACK = "lifeline_gateway_ack_seconds"


def _width_at(value: float) -> float:
    """Width of the bucket ``value`` falls in."""
    lower = 0.0
    for upper in LATENCY_BUCKETS:
        if value <= upper:
            return upper - lower
        lower = upper
    raise AssertionError("beyond the last finite bucket")


def _observed(samples: np.ndarray) -> dict:
    m = GatewayMetrics()
    for v in samples:
        m.ack(float(v))
    return m.histograms()[ACK]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_from_buckets_match_numpy_within_a_bucket(seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = rng.lognormal(mean=np.log(0.012), sigma=0.6, size=20_000)  # ~12 ms, tail to 100+
    samples = samples[samples < 2.0]
    h = _observed(samples)
    assert h["count"] == len(samples) and h["counts"][-1] == len(samples)
    for q in (0.5, 0.9, 0.95, 0.99):
        truth = float(np.percentile(samples, q * 100))
        est = quantile_from_buckets(q, h["le"], h["counts"])
        assert est is not None
        assert abs(est - truth) <= _width_at(truth), (q, est, truth)


def test_uniform_samples_are_interpolated_closely() -> None:
    """Linear interpolation is exact for samples spread evenly inside their buckets."""
    samples = np.linspace(0.0, 0.1, 100_001)[1:]
    h = _observed(samples)
    for q in (0.5, 0.95, 0.99):
        est = quantile_from_buckets(q, h["le"], h["counts"])
        assert est == pytest.approx(float(np.percentile(samples, q * 100)), abs=2e-5)


def test_quantile_edge_cases() -> None:
    le = [0.01, 0.02, float("inf")]
    assert quantile_from_buckets(0.99, le, [0, 0, 0]) is None
    assert quantile_from_buckets(0.5, le, [0, 0, 5]) == 0.02  # all beyond the last bound
    assert quantile_from_buckets(0.5, le, [10, 10, 10]) == pytest.approx(0.005)
    with pytest.raises(ValueError):
        quantile_from_buckets(1.5, le, [1, 1, 1])


def _snap(gw: str, m: GatewayMetrics, ts: float, started: float, **counters: float) -> dict:
    s = snapshot(gw, dict(counters), m)
    s["ts"], s["started"] = ts, started
    return s


def test_last_minute_is_the_difference_of_two_snapshots() -> None:
    """What happened before the window does not count: only the newest minute's samples."""
    rng = np.random.default_rng(7)
    m = GatewayMetrics()
    now = time.time()
    for v in rng.uniform(0.2, 0.4, 5_000):  # slow, but more than a minute ago
        m.ack(float(v))
    old = _snap("a", m, now - 61, now - 300, events_acked=1000, acks=100, connections=3)
    recent = rng.lognormal(np.log(0.008), 0.5, 3_000)
    for v in recent:
        m.ack(float(v))
    mid = _snap("a", m, now - 30, now - 300, events_acked=2000, acks=150, connections=4)
    new = _snap("a", m, now, now - 300, events_acked=7100, acks=700, connections=5)
    out = totals([[new, mid, old]])
    assert out["window_s"] == pytest.approx(61, abs=0.1)
    assert out["events_per_s"] == pytest.approx(6100 / 61, abs=0.1)
    assert out["acks_per_s"] == pytest.approx(600 / 61, abs=0.1)
    assert out["connections"] == 5
    assert out["ack_ms"]["count"] == len(recent)
    truth = float(np.percentile(recent, 99))
    assert abs(out["ack_ms"]["p99"] / 1000 - truth) <= _width_at(truth)
    assert out["intervention_ms"] == {"count": 0, "p50": None, "p95": None, "p99": None}


def test_a_young_gateway_counts_from_its_start() -> None:
    m = GatewayMetrics()
    now = time.time()
    m.ack(0.004)
    first = _snap("b", m, now - 20, now - 20, events_acked=0)
    m.ack(0.006)
    new = _snap("b", m, now, now - 20, events_acked=400)
    out = totals([[new, first]])
    assert out["window_s"] == pytest.approx(20, abs=0.1)
    assert out["events_per_s"] == pytest.approx(20, abs=0.1)
    assert out["ack_ms"]["count"] == 2


async def test_gateway_totals_sum_every_gateway_published_to_redis(
    redis_url: str, prefix: str
) -> None:
    ctx = ConsoleContext(Settings(redis_url=redis_url, prefix=prefix), redis_url, Keys(prefix))
    rng = np.random.default_rng(11)
    now = time.time()
    everything = []
    for gw in ("gw-one", "gw-two"):
        m = GatewayMetrics()
        await publish(ctx.redis, ctx.keys, _snap(gw, m, now - 61, now - 600, events_acked=0))
        samples = rng.lognormal(np.log(0.01 if gw == "gw-one" else 0.03), 0.4, 2_000)
        for v in samples:
            m.ack(float(v))
        everything.append(samples)
        await publish(ctx.redis, ctx.keys, _snap(gw, m, now, now - 600, events_acked=610))
    # A gateway gone quiet for longer than the expiry is not counted.
    stale = GatewayMetrics()
    stale.ack(9.0)
    await ctx.redis.zadd(ctx.keys.gateway_metrics_index, {"gw-gone": now - 60})
    await ctx.redis.lpush(ctx.keys.gateway_metrics("gw-gone"), json.dumps(_snap("x", stale, 0, 0)))
    try:
        out = await gateway_totals(ctx)
    finally:
        await ctx.redis.aclose()
    both = np.concatenate(everything)
    assert out["gateways"] == 2
    assert out["events_per_s"] == pytest.approx(2 * 610 / 61, abs=0.1)
    assert out["ack_ms"]["count"] == len(both)
    for q in (50, 95, 99):
        truth = float(np.percentile(both, q))
        assert abs(out["ack_ms"][f"p{q}"] / 1000 - truth) <= _width_at(truth)


def test_metrics_text_labels_every_gateway_and_parses() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.ack(0.003)
    b.ack(0.03)
    b.intervention(0.04)
    now = time.time()
    snaps = [
        _snap("aaa", a, now, now, frames=3, connections=1, errors_by_code={"bad_event": 2}),
        _snap("bbb", b, now, now, frames=5, connections=2, shard_restarts={"0": 1}),
    ]
    families = {f.name: f for f in text_string_to_metric_families(metrics_text(snaps).decode())}
    frames = {s.labels["gateway"]: s.value for s in families["lifeline_gateway_frames"].samples}
    assert frames == {"aaa": 3.0, "bbb": 5.0}
    assert families["lifeline_gateway_connections"].type == "gauge"
    errors = families["lifeline_gateway_errors_by_code"].samples
    assert [(s.labels, s.value) for s in errors] == [({"gateway": "aaa", "code": "bad_event"}, 2)]
    restarts = families["lifeline_gateway_shard_restarts"].samples
    assert [(s.labels, s.value) for s in restarts] == [({"gateway": "bbb", "shard": "0"}, 1)]
    ack = families[ACK]
    assert ack.type == "histogram"
    counts = {
        (s.labels["gateway"], s.labels["le"]): s.value
        for s in ack.samples
        if s.name == ACK + "_bucket"
    }
    assert counts[("aaa", "0.003")] == 1 and counts[("aaa", "0.002")] == 0
    assert counts[("bbb", "0.03")] == 1 and counts[("bbb", "+Inf")] == 1


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
