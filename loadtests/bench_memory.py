"""Memory per live session, and 100,000 live sessions held by one node.

Two measurements, each a median over ``--runs``:

* **host** (in-process): a :class:`actors.core.host.SessionHost` holding N sessions
  after a few events each, measured with tracemalloc (Python heap bytes per
  session), while active and after idle compaction;
* **shard** (a real SessionShard Ray actor, fed through its ``handle`` method
  exactly as the gateway feeds it): the actor's resident memory before and
  after taking N sessions, and after compaction.

The baseline for the ratio is one session's msgpack snapshot (what the state
is worth on the wire), measured in the same run.

    python loadtests/bench_memory.py --sessions 100000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.core.events import validate_event  # noqa: E402
from actors.core.host import EVENTS, SessionHost, pack_batch  # noqa: E402

# Recent: sessions idle for 30 minutes would be retired by the shard, as they should be.
T0 = int(time.time() * 1000) - 10_000


def session_events(i: int) -> list[dict]:
    """A short realistic start of a visit: landing, scroll, a click, a product view."""
    t = T0 + i
    raw = [
        {"type": "page_view", "seq": 1, "ts": t, "path": "/", "page_type": "home"},
        {"type": "scroll", "seq": 2, "ts": t + 2000, "depth": 0.4, "dir": "down"},
        {
            "type": "click",
            "seq": 3,
            "ts": t + 4000,
            "selector": "a.card",
            "x": 100,
            "y": 200,
            "reacted": True,
        },
        {
            "type": "page_view",
            "seq": 4,
            "ts": t + 4200,
            "path": f"/product.html?id=p{i % 40:02d}",
            "page_type": "product",
        },
    ]
    return [validate_event(e, now_ms=e["ts"]) for e in raw]


def zero_scores(rows):
    return [0.0] * len(rows)


def measure_host(n: int) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    host = SessionHost()
    for start in range(0, n, 1000):
        items = [
            (f"s-{i:08d}", "demo", ["analytics"], session_events(i))
            for i in range(start, min(n, start + 1000))
        ]
        host.process(items, zero_scores)
    gc.collect()
    active = tracemalloc.get_traced_memory()[0] - base
    host.sweep(T0 + n + 4200 + 61_000)  # idle for a minute: compacted, not yet retired
    gc.collect()
    idle = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    snapshot = len(msgpack.packb(next(iter(host.dormant.values()))[0])) if host.dormant else 0
    return {
        "active_bytes": active / n,
        "idle_bytes": idle / n,
        "dormant": len(host.dormant),
        "snapshot_bytes": snapshot,
    }


async def measure_shard(n: int, redis_url: str) -> dict[str, float]:
    import ray

    from actors.shard.actor import SessionShard
    from cluster.config import Settings
    from cluster.redis_server import delete_prefix

    prefix = f"llbenchmem-{uuid.uuid4().hex[:6]}:"
    shard = SessionShard.remote(0, redis_url, prefix, Settings().sites_file, 1800.0, False)
    await shard.warm_up.remote()
    before = await shard.memory.remote()
    for start in range(0, n, 2000):
        items = [
            (EVENTS, f"s-{i:08d}", "demo", ["analytics"], msgpack.packb(session_events(i)))
            for i in range(start, min(n, start + 2000))
        ]
        await shard.handle.remote(pack_batch(items), "")
    info = await shard.ping.remote()
    active = await shard.memory.remote()
    await shard.compact_idle.remote()
    idle = await shard.memory.remote()
    held = await shard.ping.remote()
    ray.kill(shard)
    delete_prefix(redis_url, prefix)
    return {
        "sessions_held": held["sessions_active"] + held["sessions_dormant"],
        "events": info["events"],
        "rss_before_mb": before["rss"] / 2**20,
        "active_bytes_rss": (active["rss"] - before["rss"]) / n,
        "idle_bytes_rss": (idle["rss"] - before["rss"]) / n,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--host-runs", type=int, default=1, help="the in-process measurement is deterministic"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "memory.json")
    args = ap.parse_args()

    hosts = [measure_host(args.sessions) for _ in range(args.host_runs)]
    print("host runs:", json.dumps(hosts))

    import ray

    from cluster.redis_server import ensure_redis
    from cluster.stack import RAY_SYSTEM_CONFIG

    server = ensure_redis(os.environ.get("REDIS_URL", ""))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        _system_config=RAY_SYSTEM_CONFIG,  # as `lifeline up` runs them
    )
    shards = [asyncio.run(measure_shard(args.sessions, server.url)) for _ in range(args.runs)]
    ray.shutdown()
    server.stop()
    print("shard runs:", json.dumps(shards))
    summary = {
        "sessions": args.sessions,
        "host_active_bytes_per_session": statistics.median(h["active_bytes"] for h in hosts),
        "host_idle_bytes_per_session": statistics.median(h["idle_bytes"] for h in hosts),
        "snapshot_bytes": statistics.median(h["snapshot_bytes"] for h in hosts),
        "shard_sessions_held": min(s["sessions_held"] for s in shards),
        "shard_active_bytes_per_session_rss": statistics.median(
            s["active_bytes_rss"] for s in shards
        ),
        "shard_idle_bytes_per_session_rss": statistics.median(s["idle_bytes_rss"] for s in shards),
        "shard_rss_before_mb": statistics.median(s["rss_before_mb"] for s in shards),
        "host_runs": hosts,
        "shard_runs": shards,
    }
    summary["idle_to_snapshot_ratio"] = (
        summary["host_idle_bytes_per_session"] / summary["snapshot_bytes"]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    for k, v in summary.items():
        if not isinstance(v, list):
            print(f"{k:>40}: {v:,.1f}" if isinstance(v, float) else f"{k:>40}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
