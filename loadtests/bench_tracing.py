"""What tracing (cluster/tracing.py) costs on the hot path, measured in-process.

Times the real code, best of ``--repeat`` rounds of ``--n`` calls each, in
this thread's CPU time (so other processes on a shared machine disturb it
less), with the collector off:

* **per frame, gateway** (:meth:`serve.edge.pipeline.Pipeline._to_shard`, which
  every acknowledged frame passes): tracing off, and tracing on at the default
  1 % share (where 99 % of frames are not drawn), against the same body without
  tracing's fields (the code before tracing, copied here for reference);
* **per shard call, gateway**: nothing when no frame of the batch was drawn
  or triggered; else a scan of its frames (timed here, per frame, 64 undrawn);
* **per batch, shard**: the model call timed by the shard's ``_ScoreClock``;
* **per traced frame** (1 % of frames, plus every intervention): the gateway's
  four spans and the shard's five, recorded after the fact into a
  ``BatchSpanProcessor`` (export happens on its thread, not counted).

    python loadtests/bench_tracing.py
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from actors.core.host import EVENTS  # noqa: E402
from actors.core.placement import HashRing  # noqa: E402
from actors.shard.actor import _ScoreClock  # noqa: E402
from cluster.tracing import Tracing  # noqa: E402
from serve.edge.pipeline import Pipeline  # noqa: E402
from serve.edge.protocol import EventsPlan  # noqa: E402
from serve.edge.stats import Stats  # noqa: E402


class _Discard(SpanExporter):
    """Drops spans: the export thread's work is not what is measured."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Conn:
    site = "demo"  # all _to_shard reads of its connection


def best_ns(fn: Any, n: int, repeat: int) -> float:
    """Best per-call time over ``repeat`` rounds of ``n`` calls (ns): the least disturbed round."""
    best = float("inf")
    for _ in range(repeat):
        t = time.thread_time_ns()
        fn(n)
        best = min(best, (time.thread_time_ns() - t) / n)
    return best


def alternated(fns: dict[str, Any], n: int, repeat: int) -> dict[str, float]:
    """Best per-call time of each of ``fns`` (ns), their rounds alternated so drift hits all alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.thread_time_ns()
            fn(n)
            best[name] = min(best[name], (time.thread_time_ns() - t) / n)
    return best


def pipeline(tracing: Tracing | None) -> Pipeline:
    return Pipeline(
        None,
        HashRing(2),
        dict.fromkeys(HashRing(2).names),
        Stats(),
        None,
        {},
        0.0,
        0.0,
        10**9,
        tracing,
    )  # type: ignore[arg-type]


def frames(p: Pipeline, plan: EventsPlan, conn: Any) -> Any:
    def run(n: int) -> None:
        to_shard, pending = p._to_shard, p._pending
        for k in range(n):
            to_shard(plan, b"x", conn, 1.0)
            if k & 1023 == 0:  # keep the lists short, as the shard loop does
                pending["shard-0"].clear()
                pending["shard-1"].clear()

    return run


def before(p: Pipeline, plan: EventsPlan, conn: Any) -> Any:
    """_to_shard as it was before tracing: a 6-field item, no draw."""

    def to_shard(plan: EventsPlan, payload: bytes, conn: Any) -> None:
        i = p.ring.owner(plan.sid)
        p._pending[i].append((plan.sid, conn.site, plan.consent, payload, len(plan.append), EVENTS))
        p._pending_events += len(plan.append)
        p._wake[i].set()

    def run(n: int) -> None:
        pending = p._pending
        for k in range(n):
            to_shard(plan, b"x", conn)
            if k & 1023 == 0:
                pending["shard-0"].clear()
                pending["shard-1"].clear()

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n, rep = args.n, args.repeat
    gc.disable()  # as in the gateway, whose start-up heap is frozen (cluster/gc_tuning.py)
    # A queue deep enough that no span is dropped (the default 2,048 would drop, and be quicker).
    tr = Tracing("bench", 0.01, _Discard(), BatchSpanProcessor(_Discard(), max_queue_size=2**22))
    plan = EventsPlan("s-1", [{"seq": 1}], 1, 1, [], ("analytics",))
    conn = _Conn()
    tr0 = Tracing("bench", 0.01, _Discard(), None)
    tr0.sample = 0.0
    out: dict[str, float] = alternated(
        {
            "frame: before tracing (reference)": before(pipeline(None), plan, conn),
            "frame: tracing off": frames(pipeline(None), plan, conn),
            "frame: tracing on, none drawn": frames(pipeline(tr0), plan, conn),
            "frame: tracing on, 1 % drawn": frames(pipeline(tr), plan, conn),
        },
        n,
        rep,
    )

    # Per shard call of 64 frames, none drawn: traceparents before, the check after.
    p = pipeline(tr0)
    for k in range(64):
        p._to_shard(EventsPlan(f"s-{k}", [{"seq": 1}], 1, 1, [], ()), b"x", conn, 1.0)
    items = p._pending["shard-0"] + p._pending["shard-1"]

    def call_overhead(m: int) -> None:
        for _ in range(m):
            p._traceparents(items)
            p._trace(tr0, 0, items, [], [], 1.0, 1.001, 64)

    # What shard_loop skips when none of a batch's frames was drawn and none triggered; paid
    # by the batches with a drawn frame (at 1 %, ~18 % of 20-frame batches), per frame:
    out["call scanned for traced frames, per frame"] = best_ns(call_overhead, n // 64, rep) / 64

    def score(rows: list) -> list:
        return rows

    rows = [[0.0]] * 64

    def clock(m: int) -> None:
        for _ in range(m):
            _ScoreClock().timed(score)(rows)

    def bare(m: int) -> None:
        for _ in range(m):
            score(rows)

    out["batch: timed model call (shard), net"] = best_ns(clock, n, rep) - best_ns(bare, n, rep)

    def gateway_spans(m: int) -> None:
        for _ in range(m):
            t, root, call = tr.new_trace_id(), tr.new_span_id(), tr.new_span_id()
            tr.traceparent(t, call)
            tr.record("lifeline.frame", t, root, None, 1.0, 1.01, {"lifeline.site": "demo"})
            tr.record("lifeline.gateway.append", t, tr.new_span_id(), root, 1.0, 1.003)
            tr.record("lifeline.gateway.shard_call", t, call, root, 1.004, 1.009)
            tr.record("lifeline.gateway.push", t, tr.new_span_id(), root, 1.009, 1.01)

    def shard_spans(m: int) -> None:
        tp = tr.traceparent(tr.new_trace_id(), tr.new_span_id())
        for _ in range(m):
            parent = tr.parent_of(tp)
            assert parent is not None
            t, call = parent.trace_id, parent.span_id
            batch, decide = tr.new_span_id(), tr.new_span_id()
            tr.record("lifeline.shard.batch", t, batch, call, 1.0, 1.004, {"lifeline.shard": 0})
            tr.record("lifeline.shard.apply", t, tr.new_span_id(), batch, 1.0, 1.001)
            tr.record("lifeline.shard.score", t, tr.new_span_id(), batch, 1.001, 1.002)
            tr.record("lifeline.shard.decide", t, decide, batch, 1.002, 1.003)
            tr.traceparent(t, decide)

    out["traced frame: gateway's 4 spans"] = best_ns(gateway_spans, n // 100, rep)
    out["traced frame: shard's 5 spans"] = best_ns(shard_spans, n // 100, rep)
    tr.flush()
    width = max(map(len, out))
    for k, v in out.items():
        print(f"{k:<{width}}  {v / 1000:8.3f} us" if v >= 10_000 else f"{k:<{width}}  {v:8.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
