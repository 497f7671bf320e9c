"""How long erasing a visitor with 100 sessions takes, and building their access document.

Seeds one visitor's sessions through the same scripts the running service
uses: the gateway's hello (``EventStore.claim``: session hash, owner, the
visitor's sessions and record, consent records) and append script
(``--events`` events per session), the shards' record script (``--decisions``
decisions per session, with their intervention-log entries, index entries
and outcomes) and snapshot script. Then times
:meth:`serve.rights.access.AccessReader.visitor` and
:meth:`serve.rights.erasure.Eraser.erase_visitor` (announcing the sessions
on the ``rights`` channel, as an erasure from the console of a process
without a gateway does; the Forgets themselves are the shards' work, not
timed here; with ``--stack`` the events are sealed at rest as the stack's gateway
seals them (cluster/sealing.py), and the erasure goes through its gateway instead, which queues a Forget per session to the Ray shards and
waits for them, as a visitor's request does). ``--runs`` times each, seeding afresh before each erasure;
prints JSON with the median and every run (ms). Checks that nothing of the
visitor is left after each erasure. Uses its own key prefix and deletes it.

    python loadtests/bench_erasure.py --sessions 100 --runs 7
    python loadtests/bench_erasure.py --sessions 100 --runs 7 --stack
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from actors.core.policy import Decision  # noqa: E402
from actors.core.retention import Retention  # noqa: E402
from actors.shard.index import SessionIndex  # noqa: E402
from actors.shard.records import ShardRecords  # noqa: E402
from cluster.keys import Keys  # noqa: E402
from cluster.redis_client import redis_client  # noqa: E402
from cluster.redis_server import delete_prefix, ensure_redis  # noqa: E402
from serve.edge.store import Append, EventStore  # noqa: E402
from serve.rights.access import AccessReader  # noqa: E402
from serve.rights.erasure import Eraser  # noqa: E402
from training.simulator import scripted  # noqa: E402

SITE = "demo"


async def seed(
    r: aioredis.Redis,
    keys: Keys,
    vid: str,
    sessions: int,
    events: int,
    decisions: int,
    master: Any = None,
) -> list[str]:
    """One visitor's ``sessions`` sessions, written by the service's own scripts; their sids.

    With ``master`` (cluster/sealing.py), the events are sealed at rest as a gateway seals them.
    """
    store = EventStore(r, keys, master)
    records = ShardRecords(r, keys)
    index = SessionIndex(r, keys, [SITE])
    sids = []
    now = int(time.time() * 1000)
    for n in range(sessions):
        sid = f"s-bench-{uuid.uuid4().hex[:12]}"
        status, _, sealer = await store.open_session(
            sid, SITE, ["necessary", "analytics"], False, vid
        )
        assert status == "ok", status
        evs = []
        while len(evs) < events:
            evs += scripted("struggling", sid, now - 3_600_000 + n * 1000)
        evs = [dict(e, seq=i + 1) for i, e in enumerate(evs[:events])]
        for i in range(0, events, 50):
            chunk = evs[i : i + 50]
            await store.append_many(
                [Append.of(SITE, sid, chunk[0]["seq"], chunk[-1]["seq"], chunk, sealer)]
            )
        ds = [
            Decision(
                iid=uuid.uuid4().hex,
                sid=sid,
                seq=min(events, 10 * (k + 1)),
                ts=now,
                kind="help_offer",
                score=0.8,
                trigger="risk",
                reasons=(),
                holdout=False,
            )
            for k in range(decisions)
        ]
        fields = [{"sid": sid, "site": SITE, "seq": d.seq, "ts": d.ts, "kind": d.kind} for d in ds]
        outcomes = [("intervention_accepted", d.iid, now, sid, SITE) for d in ds]
        await records.record(ds, fields, {sid: len(ds)}, outcomes)
        await records.snapshots([(sid, SITE, msgpack.packb({"sid": sid, "seq": events}))])
        await index.write([(SITE, sid, now)])
        sids.append(sid)
    store.close()
    return sids


async def left_of(r: aioredis.Redis, keys: Keys, needles: list[str]) -> int:
    """How many keys under the prefix name or hold one of ``needles`` (keys and log entries)."""
    raw = [n.encode() for n in needles]
    n = 0
    async for key in r.scan_iter(match=f"{keys.prefix}*", count=1000):
        if any(x in key for x in raw):
            n += 1
    for _eid, f in await r.xrange(keys.intervention_log):
        if any(x in v for v in f.values() for x in raw):
            n += 1
    return n


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = ensure_redis(args.redis_url)
    prefix = f"llbench-erase-{uuid.uuid4().hex[:8]}:"
    keys = Keys(prefix)
    r = redis_client(server.url, aio=True)
    access_ms, erase_ms, sizes, counts = [], [], [], []
    stack = None
    if args.stack:
        from cluster.config import Settings
        from cluster.stack import Stack

        settings = Settings(redis_url=server.url, prefix=prefix, ws_port=0, http_port=0)
        stack = Stack(settings)
        await stack.start()
        eraser = stack.gateway.eraser
        master = stack.gateway.store.sealing  # sealed at rest, as the stack's gateway seals
    else:
        eraser = Eraser(r, keys)
        master = None
    try:
        for _ in range(args.runs):
            vid = f"v-{uuid.uuid4().hex[:16]}"
            sids = await seed(r, keys, vid, args.sessions, args.events, args.decisions, master)
            t0 = time.perf_counter()
            doc = await AccessReader(r, keys, master).visitor(SITE, vid)
            access_ms.append((time.perf_counter() - t0) * 1000)
            sizes.append(len(json.dumps(doc)))
            assert len(doc["sessions"]) == args.sessions
            assert all(len(s["events"]) == args.events for s in doc["sessions"])
            t0 = time.perf_counter()
            proof = await eraser.erase_visitor(SITE, vid, Retention())
            erase_ms.append((time.perf_counter() - t0) * 1000)
            counts.append({k: proof[k] for k in ("sessions", "keys", "entries")})
            assert proof["sessions"] == args.sessions
            assert await left_of(r, keys, [vid, *sids]) == 0
    finally:
        if stack is not None:
            await stack.stop()
        await r.aclose()
        delete_prefix(server.url, prefix)
        server.stop()
    return {
        "through": "a running stack's gateway and shards" if args.stack else "Redis only",
        "sealed_at_rest": master is not None,
        "sessions": args.sessions,
        "events_per_session": args.events,
        "decisions_per_session": args.decisions,
        "runs": args.runs,
        "erase_ms_median": round(statistics.median(erase_ms), 1),
        "erase_ms": [round(x, 1) for x in erase_ms],
        "access_ms_median": round(statistics.median(access_ms), 1),
        "access_ms": [round(x, 1) for x in access_ms],
        "access_document_bytes": statistics.median(sizes),
        "erased": counts[0],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--events", type=int, default=100, help="events per session")
    ap.add_argument("--decisions", type=int, default=2, help="decisions per session")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--stack", action="store_true", help="erase through a running stack")
    print(json.dumps(asyncio.run(main(ap.parse_args())), indent=2))
