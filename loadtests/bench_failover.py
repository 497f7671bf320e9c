"""A Redis primary killed under the spine's load: what an acknowledgement survived.

Starts a local Redis primary, two replicas and three Sentinels
(cluster/sentinel_local.py), a stack in this process (its own Ray cluster,
one gateway, as ``lifeline up``) given their ``redis+sentinel://`` URL, and
load generator processes driving bench_spine.py's visitors (its
``Visitor`` and ``drive``: one socket and session each, Poisson events at
``--rate``, the real client's batching and resends). At ``--kill-at`` seconds
into the run the primary gets SIGKILL; Sentinel promotes a replica; the
visitors keep sending until the end. Reports:

* acked lost: events acknowledged before the kill that the new primary's
  log lacks (each generator notes every visitor's acked seq at the kill);
* duplicated: seqs logged twice, over every session's whole log;
* rescored: for every session, from the kill until its first event sent
  after the kill has been scored (the gateway's ``wait_scored``): max and p99;
* ack p50/p99 over the minute around the fault (``kill-at`` +- 30 s, as far
  as the run covers it), intervention p50/p99 over the whole run (the same
  minute with the defaults), and the failover time.

    python loadtests/bench_failover.py --sessions 2000 --rate 5 --kill-at 30 --duration 60 --wait 1

``--wait 0`` measures the primary's ack alone (appendfsync everysec,
asynchronous replication). Results go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.bench_spine import Visitor, drive, pct, split  # noqa: E402
from loadtests.journeys import load_journeys  # noqa: E402

AROUND_S = 30.0  # the "minute around the fault": this much either side of the kill
KILL_MARGIN_S = 0.5  # when the generators note what was acked "before the kill" (worker says why)


def worker(
    ws_url: str,
    sessions: int,
    rate: float,
    duration: float,
    kill_at: float,
    seed: int,
    q: mp.Queue,
    start_at: float,
) -> None:
    """One generator: its visitors for ``duration`` s from ``start_at`` (wall clock)."""
    journeys = load_journeys("sim", 500, seed=seed)
    res: dict[str, Any] = {"sent": 0, "acked": 0, "ack_lat": [], "ack_at": [], "iv_lat": []}
    res.update(interventions=0, errors={})

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter()
        # The window is the whole run: ack_at is then seconds since t0 (= start_at).
        rng = random.Random(seed)
        visitors = [
            Visitor(journeys, rate, res, (t0, t0 + duration), random.Random(rng.random()))
            for _ in range(sessions)
        ]
        for i in range(0, len(visitors), 50):  # ramp the connections, as bench_spine does
            await asyncio.gather(*(v.connect(ws_url) for v in visitors[i : i + 50]))
        runner = asyncio.create_task(drive(visitors, t0 + duration))
        # Half a second after the kill (the coordinator kills at t0 + kill_at, wall clock):
        # every ack the old primary's rounds earned has arrived by then, and none from the
        # new primary can have (Sentinel waits down-after-milliseconds, 1 s, to act).
        await asyncio.sleep(max(0.0, t0 + kill_at + KILL_MARGIN_S - time.perf_counter()))
        at_kill = {v.sid: (v.acked, v.seq + 1) for v in visitors}
        q.put(("kill", at_kill))
        await runner
        deadline = time.perf_counter() + 10.0
        while any(v.unacked for v in visitors) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)  # the last acks: nothing to await across the sockets
        final = {v.sid: v.acked for v in visitors}
        for v in visitors:
            assert v.ws is not None
            v.ws.close()
        q.put(("done", {"res": res, "final": final}))

    asyncio.run(main())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from cluster.config import Settings
    from cluster.sentinel_local import SentinelSet
    from cluster.stack import Stack

    sset = await asyncio.to_thread(SentinelSet, 2)
    data_dir = tempfile.TemporaryDirectory(prefix="lifeline-bench-failover-")
    prefix = f"llbench-{uuid.uuid4().hex[:6]}:"
    stack = Stack(
        Settings(
            redis_url=sset.url,
            prefix=prefix,
            ws_port=0,
            http_port=0,
            console_port=0,
            shards=args.shards,
            data_dir=data_dir.name,
            redis_wait_replicas=args.wait,
            redis_wait_ms=args.wait_ms,
        )
    )
    procs: list[mp.Process] = []
    try:
        await stack.start()
        gw = stack.gateway
        assert gw is not None
        q: mp.Queue = mp.Queue()
        start_at = time.time() + 3.0
        for i, n in enumerate(split(args.sessions, args.procs)):
            p = mp.Process(
                target=worker,
                args=(stack.ws_url, n, args.rate, args.duration, args.kill_at, i, q, start_at),
            )
            p.start()
            procs.append(p)
        await asyncio.sleep(max(0.0, start_at + args.kill_at - time.time()))
        old = await asyncio.to_thread(sset.kill_primary)
        killed = time.perf_counter()
        kill_wall = time.time()
        at_kill: dict[str, tuple[int, int]] = {}
        for _ in procs:
            kind, part = await asyncio.to_thread(q.get)
            assert kind == "kill"
            at_kill.update(part)
        new = await asyncio.to_thread(sset.wait_failover, old, 60.0)
        failover_s = time.perf_counter() - killed

        async def rescored(sid: str, seq: int) -> float:
            try:
                await gw.wait_scored(sid, seq, timeout=args.duration + 30)
            except asyncio.TimeoutError:
                return float("inf")
            return time.perf_counter() - killed

        rescore = await asyncio.gather(*(rescored(sid, nxt) for sid, (_a, nxt) in at_kill.items()))
        parts = [(await asyncio.to_thread(q.get))[1] for _ in procs]
        for p in procs:
            p.join()
        # What the new primary holds, read through Sentinel.
        lost = duplicated = unacked_final = 0
        for part in parts:
            for sid, acked in part["final"].items():
                seqs = [e["seq"] for e in await gw.store.read_events("loadtest", sid)]
                have = set(seqs)
                duplicated += len(seqs) - len(have)
                lost += sum(1 for s in range(1, at_kill[sid][0] + 1) if s not in have)
                unacked_final += sum(1 for s in range(1, acked + 1) if s not in have)
        kill_t = kill_wall - start_at  # seconds into the run
        ack_near: list[float] = []
        for part in parts:
            r = part["res"]
            ack_near += [
                lat
                for at, lat in zip(r["ack_at"], r["ack_lat"], strict=True)
                if abs(at - kill_t) <= AROUND_S
            ]
        # Interventions carry no arrival time in bench_spine's results: the whole run's
        # (the minute around the fault when --duration is 60 s and --kill-at 30).
        iv = [x for part in parts for x in part["res"]["iv_lat"]]
        errors: dict[str, int] = {}
        for part in parts:
            for k, v in part["res"]["errors"].items():
                errors[k] = errors.get(k, 0) + v
        finite = [x for x in rescore if x != float("inf")]
        return {
            "sessions": args.sessions,
            "rate": args.rate,
            "duration_s": args.duration,
            "kill_at_s": round(kill_t, 2),
            "wait_replicas": args.wait,
            "wait_ms": args.wait_ms,
            "old_primary": old,
            "new_primary": new,
            "failover_s": round(failover_s, 2),
            "acked_before_kill": sum(a for a, _n in at_kill.values()),
            "acked_lost": lost,
            "acked_missing_at_end": unacked_final,
            "duplicated": duplicated,
            "rescored_max_s": round(max(rescore), 2),
            "rescored_p99_s": round(pct(finite, 99), 2) if finite else None,
            "not_rescored": len(rescore) - len(finite),
            "acked_total": sum(p["res"]["acked"] for p in parts),
            "ack_p50_ms_around": round(pct(ack_near, 50) * 1000, 1),
            "ack_p99_ms_around": round(pct(ack_near, 99) * 1000, 1),
            "iv_p50_ms": round(pct(iv, 50) * 1000, 1),
            "iv_p99_ms": round(pct(iv, 99) * 1000, 1),
            "iv_samples": len(iv),
            "errors": errors,
        }
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        await stack.stop()
        await asyncio.to_thread(sset.stop)
        data_dir.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=5.0, help="events/s per visitor")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--kill-at", type=float, default=30.0, help="seconds into the load")
    ap.add_argument("--wait", type=int, default=1, help="LIFELINE_REDIS_WAIT_REPLICAS (0: off)")
    ap.add_argument("--wait-ms", type=int, default=100, help="LIFELINE_REDIS_WAIT_MS")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "failover.json")
    args = ap.parse_args()
    if not 0 < args.kill_at < args.duration:
        ap.error("--kill-at must fall inside --duration")
    os.environ.setdefault("LIFELINE_TRACE_SAMPLE", "0")
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
