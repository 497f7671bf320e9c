"""Fill a Redis prefix with sessions and events the way the service stores them, for the console's benchmarks.

What it writes, under ``prefix`` (cluster/keys.py):

* each session's event log (``ev:{site}:{sid}``, entries ``f``, ``l``,
  ``ev``: msgpack of the normalised events, as serve/edge/store.py appends
  them, a run of up to 8 events per entry), its hash (``s:{site}:{sid}``:
  seq, created, site, consent) and its owner key;
* for about 15 % of the sessions, one decision: its record (``iv:{iid}``,
  the fields actors/shard/actor.py writes, with the visitor's reaction and
  the session's conversion after it), its ``ivs`` set and an ``ivlog``
  entry (oldest first), and the visitor's ``intervention_*`` events in the log;
* the console's tallies, computed by running every generated session
  through :class:`actors.core.session.Session` and
  :class:`actors.core.tally.Tally` (the shards' own code), written with the
  shards' flush script.

Journeys are the training simulator's (training/simulator.py), cut or
repeated to spread ``events`` over ``sessions``, over the last 7 days (2 %
of the sessions in the last hour, so the Live page has a last hour). Sites
are the sites file's ``demo`` and ``loadtest``.

    python loadtests/seed_console.py --sessions 100000 --events 1000000 [--prefix P] [--time]

``--time`` then times the console's page functions (serve/console/insights.py)
on it: median and p95 of 20 calls each, as JSON.

Reusable: :func:`seed` ``(redis_url, prefix, sessions, events)`` returns
what it wrote. Delete with ``cluster.redis_server.delete_prefix``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.core.events import validate_event  # noqa: E402
from actors.core.kinds import KINDS  # noqa: E402
from actors.core.policy import Decision, in_holdout  # noqa: E402
from actors.core.session import Session  # noqa: E402
from actors.core.sites import load_sites  # noqa: E402
from actors.core.tally import MINUTE_MS, Tally  # noqa: E402
from actors.shard.tallies import FLUSH_LUA  # noqa: E402
from actors.shard.tallies import hashes as tally_hashes  # noqa: E402
from cluster.keys import SESSION_TTL_S, TALLY_MINUTE_TTL_S, Keys  # noqa: E402
from cluster.lua import script_arg  # noqa: E402
from cluster.redis_client import redis_client  # noqa: E402

SITES = ("demo", "loadtest")
SEGMENTS = ("browsers", "deal seekers", "hesitant buyers", "form fillers")
DECIDED_SHARE = 0.15
RUN = 8  # events per log entry
CONSENT = ["necessary", "analytics"]
PIPE = 5000  # commands per pipeline round


def _journeys(n: int, seed: int) -> list[list[dict[str, Any]]]:
    from training.simulator import simulate

    return [j.events for j in simulate(n, seed=seed) if j.events]


_STEPS = {"page_view", "add_to_cart", "purchase"}


def _events(raw: list[dict[str, Any]], n: int, start: int, rng: random.Random) -> list[dict]:
    """``n`` raw events of a journey (repeated if short), numbered and timed from ``start``."""
    # Keep the journey's steps (pages, cart, purchase) before its other events, in order:
    # cut to n events, a journey still reaches the cart and checkout it reached.
    keep = [i for i, e in enumerate(raw) if e["type"] in _STEPS]
    rest = [i for i, e in enumerate(raw) if e["type"] not in _STEPS]
    picked = sorted(keep[:n] + rng.sample(rest, min(len(rest), max(0, n - len(keep)))))
    chosen = [raw[i] for i in picked] or raw
    out, ts = [], start
    for i in range(n):
        e = dict(chosen[i % len(chosen)])
        e["seq"] = i + 1
        e["ts"] = ts
        ts += rng.randint(300, 8000)
        out.append(e)
    return out


def seed(
    redis_url: str, prefix: str, sessions: int, events: int, seed_value: int = 7
) -> dict[str, Any]:
    """Write ``sessions`` sessions with ``events`` events in all under ``prefix``; what was written."""
    t0 = time.perf_counter()
    rng = random.Random(seed_value)
    keys = Keys(prefix)
    sites = load_sites(str(ROOT / "cluster" / "sites.toml"))
    share = {s: sites[s].policy.holdout if s in sites else 0.1 for s in SITES}
    journeys = _journeys(2000, seed_value)
    r = redis_client(redis_url)
    pipe = r.pipeline(transaction=False)
    tally = Tally()
    now = int(time.time() * 1000)
    week = 7 * 86_400_000
    per = events / sessions
    written_events = 0
    decisions: list[tuple[int, str, dict[str, Any]]] = []  # (ts, iid, fields)
    pending = 0
    for i in range(sessions):
        site = SITES[0] if rng.random() < 0.8 else SITES[1]
        sid = f"s-{uuid.UUID(int=rng.getrandbits(128)).hex[:20]}"
        # The share of the total still to place, spread evenly: exactly ``events`` in all.
        n = max(2, round((i + 1) * per) - round(i * per)) if i < sessions - 1 else 0
        n = n or max(2, events - written_events)
        recent = rng.random() < 0.02
        start = now - rng.randint(60_000, 3_000_000 if recent else week - 3_600_000)
        raw = _events(rng.choice(journeys), n, start, rng)
        decided = n >= 4 and rng.random() < DECIDED_SHARE
        iid = ""
        at = 0
        if decided:
            at = rng.randint(2, n - 2)  # the event (index) that triggers it
            iid = uuid.UUID(int=rng.getrandbits(128)).hex
            holdout = in_holdout(sid, share[site])
            reaction = (
                None
                if holdout
                else rng.choices(("accepted", "dismissed", "shown", None), (15, 25, 40, 20))[0]
            )
            if reaction is not None:  # the visitor's answers replace the next events
                answers = ["shown"] + ([reaction] if reaction != "shown" else [])
                for k, what in enumerate(answers):
                    j = at + 1 + k
                    if j < n:
                        raw[j] = {
                            "type": f"intervention_{what}",
                            "iid": iid,
                            "seq": raw[j]["seq"],
                            "ts": raw[j]["ts"],
                        }
        evs = [validate_event(e, e["ts"]) for e in raw]
        evs = [e for e in evs if isinstance(e, dict)]
        if not evs:
            continue
        session = Session(sid, site)
        for e in evs:
            session.apply(e)
        made: list[Decision] = []
        if decided and at < len(evs):
            trig = evs[at]
            seg = rng.randrange(len(SEGMENTS))
            kind = rng.choice(KINDS)
            d = Decision(
                iid, sid, trig["seq"], trig["ts"], kind, 0.8, "risk", (), holdout, segment=seg
            )
            made.append(d)
            fields: dict[str, Any] = {
                "sid": sid,
                "site": site,
                "seq": d.seq,
                "ts": d.ts,
                "kind": kind,
                "score": d.score,
                "trigger": d.trigger,
                "holdout": int(holdout),
                "page_type": "product",
                "reasons": "[]",
                "model": "seeded",
                "drivers": "[]",
                "segment": seg,
                "segment_name": SEGMENTS[seg],
            }
            for e in evs:
                if e["type"].startswith("intervention_") and e.get("iid") == iid:
                    what = e["type"].removeprefix("intervention_")
                    fields[what] = e["ts"]
                    fields["outcome"] = what
            bought = [e for e in evs if e["type"] == "purchase" and e["seq"] > d.seq]
            if bought:
                fields |= {"converted": bought[0]["ts"], "converted_seq": bought[0]["seq"]}
                fields["goal"] = "purchase"
            decisions.append((d.ts, iid, fields))
            pipe.sadd(keys.interventions_of(site, sid), iid)
            pipe.expire(keys.interventions_of(site, sid), SESSION_TTL_S)
            pipe.hset(keys.session(site, sid), mapping={"iv_count": 1, "iv_last": d.ts})
            pending += 3
        tally.add(
            session,
            evs,
            made,
            share[site],
            sites[site].conversion if site in sites else None,
            SEGMENTS,
        )
        ev_key = keys.events(site, sid)
        for k in range(0, len(evs), RUN):
            run = evs[k : k + RUN]
            pipe.xadd(
                ev_key,
                {"f": run[0]["seq"], "l": run[-1]["seq"], "ev": msgpack.packb(run)},
                id=f"{run[-1]['ts']}-{k}",
            )
            pending += 1
        pipe.expire(ev_key, SESSION_TTL_S)
        pipe.hset(
            keys.session(site, sid),
            mapping={
                "seq": evs[-1]["seq"],
                "created": evs[0]["ts"],
                "site": site,
                "consent": json.dumps(CONSENT),
                "log_ttl": 1,
            },
        )
        pipe.expire(keys.session(site, sid), SESSION_TTL_S)
        pipe.set(keys.owner(sid), site, ex=SESSION_TTL_S)
        pending += 4
        written_events += len(evs)
        if pending >= PIPE:
            pipe.execute()
            pending = 0
    pipe.execute()
    # The intervention log, oldest first, as the shards append it.
    decisions.sort(key=lambda x: x[0])
    last_ms, n_same = -1, 0
    for ts, iid, fields in decisions:
        n_same = n_same + 1 if ts == last_ms else 0
        last_ms = ts
        log_id = f"{ts}-{n_same}"
        flat = {k: str(v) for k, v in fields.items()}
        pipe.xadd(keys.intervention_log, {"iid": iid, **flat}, id=log_id)
        pipe.hset(keys.intervention(iid), mapping={**flat, "log_id": log_id})
        pipe.expire(keys.intervention(iid), SESSION_TTL_S)
        if len(pipe) >= PIPE:
            pipe.execute()
    pipe.execute()
    # The tallies, as the shards' flush writes them (minutes of the last two hours only:
    # older ones would have expired).
    tally.minutes = {
        k: v
        for k, v in tally.minutes.items()
        if (now // MINUTE_MS) - k[1] < TALLY_MINUTE_TTL_S // 60
    }
    hashes = tally_hashes(keys, tally)
    flush = r.register_script(FLUSH_LUA)
    for k in range(0, len(hashes), 500):
        flush(args=[script_arg({"h": hashes[k : k + 500]})])
    r.close()
    return {
        "prefix": prefix,
        "sessions": sessions,
        "events": written_events,
        "decisions": len(decisions),
        "tally_hashes": len(hashes),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def time_pages(redis_url: str, prefix: str, calls: int = 20) -> dict[str, Any]:
    """Median and p95 (ms) of ``calls`` calls of each insights page function on ``prefix``.

    Outcomes and Segments are timed cold (the outcome report's 30 s cache
    emptied before each call: a full read of the intervention log) and warm.
    """
    import asyncio
    import statistics

    from cluster.config import Settings
    from serve.console import insights
    from serve.console.context import ConsoleContext

    sites = load_sites(str(ROOT / "cluster" / "sites.toml"))

    async def run() -> dict[str, Any]:
        ctx = ConsoleContext(Settings(), redis_url, Keys(prefix), sites=sites)
        out: dict[str, Any] = {}
        pages = {
            "live": (insights.live_business, {}, False),
            "funnel": (insights.funnel, {"site": "demo"}, False),
            "outcomes_cold": (insights.outcomes, {}, True),
            "outcomes_cached": (insights.outcomes, {}, False),
            "segments_cold": (insights.segments, {"site": "demo"}, True),
            "segments_cached": (insights.segments, {"site": "demo"}, False),
        }
        for name, (fn, query, cold) in pages.items():
            times = []
            for _ in range(calls):
                if cold:
                    insights._outcomes_cache.clear()
                t0 = time.perf_counter()
                await fn(ctx, query)
                times.append((time.perf_counter() - t0) * 1000.0)
            times.sort()
            out[name] = {
                "median_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1),
                "calls": calls,
            }
        await ctx.redis.aclose()
        return out

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--prefix", default=None, help="default: a fresh llcon-XXXXXX: prefix")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--time", action="store_true", help="then time the console's page functions")
    ap.add_argument("--no-seed", action="store_true", help="time an already seeded --prefix")
    ap.add_argument("--delete", action="store_true", help="delete the prefix at the end")
    args = ap.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = args.prefix or f"llcon-{uuid.uuid4().hex[:6]}:"
    doc: dict[str, Any] = {}
    if not args.no_seed:
        doc["seeded"] = seed(url, prefix, args.sessions, args.events, args.seed)
        print(json.dumps(doc["seeded"]), flush=True)
    if args.time:
        doc["pages"] = time_pages(url, prefix)
        print(json.dumps(doc, indent=1))
    if args.delete:
        from cluster.redis_server import delete_prefix

        delete_prefix(url, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
