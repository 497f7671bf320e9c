"""Benchmark: add a shard and then remove it under load (issue #24, shard count change).

Starts a stack in this process (Ray shards as in ``lifeline up``, the
gateway on this process's event loop, the Redis at $REDIS_URL or
127.0.0.1:6379) and drives it from ``--procs`` load-generator processes
with bench_spine's visitors (one socket and one session each, Poisson
events at ``--rate``, the real client's batching and resends). At
``--add-at`` seconds a shard is added, at ``--remove-at`` it is removed
again, through the same code path as ``lifeline shards add|remove``.

Reports: acknowledged events lost (acked by the gateway but not in the log)
and duplicated (logged twice), per change how many sessions moved and the
time from the request until every moved session had an event scored by its
new shard, and the ack and intervention p50/p99 over the window from 30 s
before the first change to 30 s after the last (the whole run when shorter).

    python loadtests/bench_reshard.py --sessions 2000 --rate 5 --duration 90 \\
        --add-at 30 --remove-at 60

Small (what proves it runs): ``--sessions 200 --duration 20 --add-at 6 --remove-at 13``.
The stack runs here, not in a ``lifeline up`` subprocess, so that the
gateway's own record of what each shard scored (``wait_scored``) times the
handover; the load generators are separate processes, as in bench_spine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.bench_spine import Visitor, drive, pct  # noqa: E402
from loadtests.journeys import load_journeys  # noqa: E402


def worker(
    ws_url: str,
    sessions: int,
    rate: float,
    duration: float,
    journeys: list[list[dict]],
    seed: int,
    q: mp.Queue,
) -> None:
    """Run ``sessions`` visitors for ``duration`` s; puts their results and (sid, acked) pairs."""
    res: dict[str, Any] = {"sent": 0, "acked": 0, "ack_lat": [], "ack_at": [], "iv_lat": []}
    res.update(interventions=0, errors={})

    async def main() -> None:
        t0 = time.perf_counter()
        # ack_at is measured from the window's start: the run's start in wall-clock time.
        res["t0_wall"] = time.time()
        rng = random.Random(seed)
        visitors = [
            Visitor(journeys, rate, res, (t0, t0 + duration + 30), random.Random(rng.random()))
            for _ in range(sessions)
        ]
        for i in range(0, sessions, 50):  # ramp: 50 hellos at a time
            await asyncio.gather(*(v.connect(ws_url) for v in visitors[i : i + 50]))
        await drive(visitors, t0 + duration)
        for v in visitors:
            v.next_at = float("inf")
        deadline = time.perf_counter() + 15
        while any(v.unacked or v.pending for v in visitors) and time.perf_counter() < deadline:
            for v in visitors:
                v.step(time.perf_counter())
            await asyncio.sleep(0.05)  # resends and their acks, across many sockets
        res["visitors"] = [(v.sid, v.acked, len(v.unacked)) for v in visitors]
        for v in visitors:
            v.ws.close()

    asyncio.run(main())
    q.put(res)


async def handover_times(gw: Any, old: Any, asked: float) -> dict[str, Any]:
    """Seconds from the request until each moved session was scored by its new shard."""
    new = gw.ring
    waits = []
    for sid, peer in list(gw.peers_by_sid.items()):
        if old.owner(sid) == new.owner(sid):
            continue
        cursor = peer.conn.sessions.get(sid) if peer.conn is not None else None
        if cursor is not None:
            waits.append((sid, cursor.scored + 1))

    async def one(sid: str, seq: int) -> float | None:
        try:
            await gw.wait_scored(sid, seq, timeout=30)
        except asyncio.TimeoutError:
            return None
        return time.perf_counter() - asked

    times = await asyncio.gather(*(one(s, q) for s, q in waits))
    done = [t for t in times if t is not None]
    return {
        "moved": len(waits),
        "not_scored_in_30s": len(times) - len(done),
        "all_scored_after_s": round(max(done, default=0.0), 3),
        "p50_s": round(pct(done, 50), 3) if done else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from cluster.config import Settings
    from cluster.stack import Stack

    prefix = f"llbench-reshard-{uuid.uuid4().hex[:6]}:"
    settings = Settings(prefix=prefix, ws_port=0, http_port=0, console_port=0, shards=args.shards)
    stack = await Stack(settings).start(shard_name_suffix=f"-{uuid.uuid4().hex[:4]}")
    gw = stack.gateway
    journeys = load_journeys("mix", 500, seed=1)  # needs LIFELINE_DATA_DIR (README)
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    per = [
        args.sessions // args.procs + (i < args.sessions % args.procs) for i in range(args.procs)
    ]
    procs = [
        ctx.Process(
            target=worker, args=(stack.ws_url, n, args.rate, args.duration, journeys, i + 1, q)
        )
        for i, n in enumerate(per)
    ]
    for p in procs:
        p.start()
    changes: list[dict[str, Any]] = []
    name = ""  # the shard added, then removed
    t_start = time.time()
    try:
        ramp = args.sessions / 50 * 0.05 + 2  # the visitors' hellos (see worker)
        await asyncio.sleep(ramp + args.add_at)
        for op in ("add", "remove"):
            old, asked, wall = gw.ring, time.perf_counter(), time.time()
            outcome = await (stack.add_shard() if op == "add" else stack.remove_shard(name))
            name = outcome["name"]
            took = time.perf_counter() - asked
            info = {"op": op, "name": name, "switch_s": round(took, 3), "at_wall": wall}
            info.update(await handover_times(gw, old, asked))
            changes.append(info)
            print(json.dumps({k: v for k, v in info.items() if k != "at_wall"}), flush=True)
            if op == "add":
                await asyncio.sleep(max(0.0, args.remove_at - args.add_at - took))
        # Off the event loop: the gateway runs on it and must keep serving the visitors.
        results = [await asyncio.to_thread(q.get, timeout=args.duration + 120) for _ in procs]
        for p in procs:
            p.join(10)
        lost = duplicated = unacked = 0
        for res in results:
            for sid, acked, left in res["visitors"]:
                seqs = [e["seq"] for e in await gw.store.read_events("loadtest", sid)]
                lost += len(set(range(1, acked + 1)) - set(seqs))
                duplicated += len(seqs) - len(set(seqs))
                unacked += left
        # The window: 30 s either side of the changes (what the run has of it).
        lo = changes[0]["at_wall"] - 30 - t_start
        hi = changes[-1]["at_wall"] + 30 - t_start
        ack, iv = [], []
        for res in results:
            shift = res["t0_wall"] - t_start
            ack += [
                lat
                for lat, at in zip(res["ack_lat"], res["ack_at"], strict=True)
                if lo <= at + shift <= hi
            ]
            iv += res["iv_lat"]  # per visitor window: the whole run
        acked = sum(r["acked"] for r in results)
        errors: dict[str, int] = {}
        for res in results:
            for k, n in res["errors"].items():
                errors[k] = errors.get(k, 0) + n
        return {
            "sessions": args.sessions,
            "rate": args.rate,
            "duration_s": args.duration,
            "events_acked": acked,
            "acked_lost": lost,
            "duplicated": duplicated,
            "left_unacked_at_end": unacked,
            "changes": [{k: v for k, v in c.items() if k != "at_wall"} for c in changes],
            "ack_ms": {"p50": pct(ack, 50) * 1000, "p99": pct(ack, 99) * 1000, "n": len(ack)},
            "intervention_ms": {"p50": pct(iv, 50) * 1000, "p99": pct(iv, 99) * 1000, "n": len(iv)},
            "errors": errors,
        }
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        await stack.stop()
        from cluster.redis_server import delete_prefix

        delete_prefix(stack.redis_url, prefix)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=5.0, help="events/s per visitor")
    ap.add_argument("--duration", type=float, default=90.0, help="seconds of load")
    ap.add_argument("--add-at", type=float, default=30.0, help="s into the load: add a shard")
    ap.add_argument("--remove-at", type=float, default=60.0, help="s into the load: remove it")
    ap.add_argument("--shards", type=int, default=2, help="shards at start")
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "reshard.json")
    args = ap.parse_args()
    os.environ.setdefault("LIFELINE_TRACE_SAMPLE", "0")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return 0 if out["acked_lost"] == 0 and out["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
