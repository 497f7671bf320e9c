"""How fast the session explorer answers with 100,000 sessions indexed, and what the index costs.

Seeds the explorer's index only (not event logs: a search never reads
them): ``--sessions`` session hashes with analytics consent and their index
entries, written through the shards' own script
(:meth:`actors.shard.index.SessionIndex.write`), last seen spread over the
retention week, one in ten with an intervention decision and a segment.
Then times :func:`serve.console.explorer.search` (20 calls each, median and
p95 in ms): by site and a one-hour window, by segment, by intervened, by
id prefix, and the whole week's newest 50 across every site; and a
timeline of a ``--timeline-events`` session (its log written with the
gateway's append script, replayed and scored).

And the shard's side: ``seen_entries`` (under the batch lock, per session a
snapshot tick takes) and the index script (per session, Redis and client),
per session-tick; a session is taken at most once per 5 s however many
events it sent, so that is the most it costs per event.

    python loadtests/bench_explorer.py --sessions 100000
    python loadtests/bench_explorer.py --seed-console --sessions 100000 --events 1000000
    python loadtests/bench_explorer.py --prefix 'llbench-console-...:'

``--seed-console`` seeds with ``loadtests/seed_console.py`` instead (event
logs, session hashes, records and tallies, as the console benchmark does)
and indexes it with :func:`actors.shard.index.reindex`; ``--prefix`` times
a prefix seeded already (reindexed, kept). Prints JSON. Uses its own key
prefixes and deletes them afterwards (not a ``--prefix``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from actors.core.host import SessionHost  # noqa: E402
from actors.core.sites import load_sites  # noqa: E402
from actors.shard.index import SessionIndex, reindex, seen_entries  # noqa: E402
from cluster.config import Settings  # noqa: E402
from cluster.keys import SESSION_TTL_S, Keys  # noqa: E402
from cluster.redis_client import redis_client  # noqa: E402
from cluster.redis_server import delete_prefix, ensure_redis  # noqa: E402
from serve.console.context import ConsoleContext  # noqa: E402
from serve.console.explorer import search, timeline  # noqa: E402
from serve.edge.store import Append, EventStore  # noqa: E402
from training.simulator import scripted  # noqa: E402

SEGMENTS = ("cart_builders", "quick_visits", "rage_clickers", "u_turners")
CALLS = 20


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def seed(r: aioredis.Redis, keys: Keys, sites: list[str], n: int, now: int) -> list[str]:
    """``n`` sessions over ``sites``, indexed as the shards index them; returns their sids."""
    rng = random.Random(7)
    index = SessionIndex(r, keys, sites)
    sids = [f"s{rng.getrandbits(48):012x}" for _ in range(n)]
    week = SESSION_TTL_S * 1000
    for start in range(0, n, 2000):
        chunk = sids[start : start + 2000]
        pipe = r.pipeline(transaction=False)
        entries = []
        for sid in chunk:
            site = sites[rng.randrange(len(sites))]
            seen = now - rng.randrange(week)
            fields: dict[str, Any] = {
                "consent": '["necessary", "analytics"]',
                "seq": rng.randrange(3, 40),
                "created": seen - rng.randrange(600_000),
                "site": site,
            }
            if rng.random() < 0.1:
                fields.update(iv_count=1, iv_last=seen, seg=rng.choice(SEGMENTS))
            pipe.hset(keys.session(site, sid), mapping=fields)
            entries.append((site, sid, seen))
        await pipe.execute()
        await index.write(entries)
    return sids


async def timed(fn, calls: int = CALLS) -> dict[str, Any]:
    ms, result = [], None
    for _ in range(calls):
        t = time.perf_counter()
        result = await fn()
        ms.append((time.perf_counter() - t) * 1000.0)
    return {
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "found": len(result["sessions"]) if "sessions" in result else len(result["events"]),
    }


def shard_side(n_sessions: int = 5000) -> dict[str, float]:
    """``seen_entries`` per session (the work under the batch lock), in-process."""
    from actors.core.session import Session

    host = SessionHost()
    events = scripted("calm", "", int(time.time() * 1000) - 60_000)
    for i in range(n_sessions):
        s = Session(f"b{i}", "demo")
        for ev in events[:3]:
            s.apply(ev)
        host.active[s.sid] = s
    states = [(sid, "demo", b"") for sid in host.active]
    now = int(time.time() * 1000)
    runs = []
    for _ in range(7):
        t = time.perf_counter()
        seen_entries(host, states, now)
        runs.append((time.perf_counter() - t) / n_sessions * 1e6)
    return {"seen_entries_us_per_session": round(statistics.median(runs), 3)}


async def index_write_cost(r: aioredis.Redis, keys: Keys, n: int = 5000) -> dict[str, float]:
    """The index script per session: client CPU and wall time (a tick's batch of ``n``)."""
    index = SessionIndex(r, keys, ["demo"])
    now = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    sids = [f"w{i}" for i in range(n)]
    for sid in sids:
        pipe.hset(keys.session("demo", sid), mapping={"consent": '["analytics"]', "seq": 1})
    await pipe.execute()
    walls, cpus = [], []
    for k in range(5):
        entries = [("demo", sid, now + k) for sid in sids]
        t, c = time.perf_counter(), time.process_time()
        await index.write(entries)
        walls.append((time.perf_counter() - t) / n * 1e6)
        cpus.append((time.process_time() - c) / n * 1e6)
    return {
        "index_write_wall_us_per_session": round(statistics.median(walls), 2),
        "index_write_client_cpu_us_per_session": round(statistics.median(cpus), 2),
    }


async def time_searches(ctx: ConsoleContext, r: aioredis.Redis, keys: Keys, now: int) -> dict:
    """Each kind of search, 20 calls each, on whatever the prefix's index holds."""
    site = "demo"
    one = await r.zrandmember(keys.session_index(site, "seen"))
    segs = sorted(m.decode() for m in await r.smembers(keys.session_index(site, "segs")))
    seg = segs[0] if segs else "none"
    sid = one.decode() if one else "x"
    hour = now - 3_600_000
    return {
        "site_and_hour": await timed(lambda: search(ctx, site=site, since_ms=hour)),
        "site_newest_50": await timed(lambda: search(ctx, site=site)),
        "all_sites_newest_50": await timed(lambda: search(ctx)),
        "segment": await timed(lambda: search(ctx, site=site, segment=seg)),
        "intervened": await timed(lambda: search(ctx, site=site, intervened=True)),
        "not_intervened_site_and_hour": await timed(
            lambda: search(ctx, site=site, intervened=False, since_ms=hour)
        ),
        "segment_and_intervened_all_sites": await timed(
            lambda: search(ctx, segment=seg, intervened=True)
        ),
        "id_prefix": await timed(lambda: search(ctx, sid_prefix=sid[:8])),
        # The worst cases: a prefix most ids share (PREFIX_MAX matches per site, truncated),
        # and criteria no session meets (every candidate of the segment examined).
        "id_prefix_matching_many": await timed(lambda: search(ctx, sid_prefix=sid[:1])),
        "segment_not_intervened_none_match": await timed(
            lambda: search(ctx, segment=seg, intervened=False)
        ),
    }


async def long_timeline(ctx: ConsoleContext, r: aioredis.Redis, keys: Keys, n: int, now: int):
    """A session of ``n`` events (its log written as the gateway writes it), its timeline timed."""
    store = EventStore(r, keys)
    sid = f"long-session-{uuid.uuid4().hex[:6]}"
    await store.claim(sid, "demo", ["necessary", "analytics"], token=False)
    base = scripted("struggling", "", now - 3_600_000)
    events: list[dict[str, Any]] = []
    while len(events) < n:
        for ev in base:
            events.append(dict(ev, seq=len(events) + 1, ts=ev["ts"] + len(events) * 50))
    events = events[:n]
    for i in range(0, len(events), 100):
        chunk = events[i : i + 100]
        await store.append_many([Append.of("demo", sid, chunk[0]["seq"], chunk[-1]["seq"], chunk)])
    out = await timed(lambda: timeline(ctx, "demo", sid))
    out["events"] = len(events)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000, help="with --seed-console")
    ap.add_argument("--timeline-events", type=int, default=2000)
    src = ap.add_mutually_exclusive_group()
    src.add_argument(
        "--seed-console",
        action="store_true",
        help="seed with loadtests/seed_console.py (event logs, records, tallies), then reindex",
    )
    src.add_argument("--prefix", help="an already seeded prefix: reindex it and time (kept)")
    args = ap.parse_args()
    server = ensure_redis(os.environ.get("REDIS_URL", ""))
    prefix = args.prefix or f"llbench-explorer-{uuid.uuid4().hex[:8]}:"
    keys = Keys(prefix)
    r = redis_client(server.url, aio=True)
    sites = load_sites(str(ROOT / "cluster" / "sites.toml"))
    ctx = ConsoleContext(Settings(redis_url=server.url, prefix=prefix), server.url, keys, sites)
    now = int(time.time() * 1000)
    out: dict[str, Any] = {"sites": sorted(sites)}
    scratch = Keys(f"llbench-explorer-scratch-{uuid.uuid4().hex[:8]}:")
    try:
        t = time.perf_counter()
        if args.seed_console:
            sys.path.insert(0, str(ROOT / "loadtests"))
            from seed_console import seed as seed_console

            out["seeded"] = await asyncio.to_thread(
                seed_console, server.url, prefix, args.sessions, args.events
            )
        if args.seed_console or args.prefix:
            out["seed_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            out["reindex"] = await reindex(r, keys)
            out["reindex_s"] = round(time.perf_counter() - t, 1)
            out["source"] = "seed_console" if args.seed_console else f"prefix {prefix}"
        else:
            await seed(r, keys, sorted(sites), args.sessions, now)
            out["seed_s"] = round(time.perf_counter() - t, 1)
            out["source"] = "index only (bench_explorer.seed)"
        out["sessions_indexed"] = sum(
            [await r.zcard(keys.session_index(site, "seen")) for site in sites]
        )
        out["search"] = await time_searches(ctx, r, keys, now)
        # On a scratch prefix: a kept, seeded one is not written to.
        sctx = ConsoleContext(ctx.settings, server.url, scratch, sites)
        out["timeline"] = await long_timeline(sctx, r, scratch, args.timeline_events, now)
        out["shard"] = {**shard_side(), **await index_write_cost(r, scratch)}
        await sctx.redis.aclose()
    finally:
        await r.aclose()
        await ctx.redis.aclose()
        delete_prefix(server.url, scratch.prefix)
        if not args.prefix:
            delete_prefix(server.url, prefix)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
