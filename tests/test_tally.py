"""The console's tallies: pure counting on hand-built sessions, the CSV of a view, the seeding script."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import msgpack
import pytest

from actors.core.events import validate_event
from actors.core.policy import Decision, in_holdout
from actors.core.session import Session
from actors.core.tally import DAY_MS, FUNNEL, Tally, day_text
from cluster.config import Settings
from cluster.keys import Keys
from serve.console import insights
from serve.console.context import ConsoleContext

T0 = 1_764_806_400_000  # 2025-12-04 00:00 UTC
DAY = day_text(T0 // DAY_MS)


def sid_in(holdout: bool, share: float = 0.5) -> str:
    while True:
        sid = f"t-tally-{uuid.uuid4().hex[:8]}"
        if in_holdout(sid, share) == holdout:
            return sid


class Visitor:
    """A session and the events it sends, numbered and timed as the gateway would."""

    def __init__(self, sid: str, site: str = "demo", ts: int = T0 + 3_600_000) -> None:
        self.session = Session(sid, site)
        self.seq = 0
        self.ts = ts

    def events(self, *raw: dict) -> list[dict]:
        out = []
        for e in raw:
            self.seq += 1
            self.ts += 1000
            ev = validate_event({**e, "seq": self.seq, "ts": self.ts}, self.ts)
            assert isinstance(ev, dict), ev
            self.session.apply(ev)
            out.append(ev)
        return out


def page(path: str) -> dict:
    return {"type": "page_view", "path": path}


def reach(t: Tally, arm: str = "t", site: str = "demo", day: int = T0 // DAY_MS) -> list[int]:
    counts = t.days.get((site, day), {})
    return [counts.get(f"reach:{s}:{arm}", 0) for s in FUNNEL]


def test_funnel_counts_each_step_once_per_day_at_the_furthest_step():
    t = Tally()
    v = Visitor(sid_in(False))
    t.add(v.session, v.events(page("/"), page("/list.html?cat=cards")), holdout_share=0.5)
    assert reach(t) == [1, 1, 0, 0, 0, 0]
    # Straight to the checkout: the product and cart steps it skipped count, once.
    t.add(v.session, v.events(page("/checkout.html")), holdout_share=0.5)
    assert reach(t) == [1, 1, 1, 1, 1, 0]
    # Back to a listing and to the checkout again, the same day: nothing new.
    t.add(
        v.session,
        v.events(page("/list.html?cat=loans"), page("/checkout.html")),
        holdout_share=0.5,
    )
    assert reach(t) == [1, 1, 1, 1, 1, 0]
    t.add(v.session, v.events({"type": "purchase", "value": 10.0}), holdout_share=0.5)
    assert reach(t) == [1, 1, 1, 1, 1, 1]
    counts = t.days[("demo", T0 // DAY_MS)]
    assert counts["conv:t"] == 1 and counts["goal:purchase:t"] == 1
    # The next day the session counts again, from its landing.
    v.ts += DAY_MS
    t.add(v.session, v.events(page("/product.html?id=p-1")), holdout_share=0.5)
    assert reach(t, day=T0 // DAY_MS + 1) == [1, 1, 1, 0, 0, 0]
    assert reach(t) == [1, 1, 1, 1, 1, 1]


def test_arms_are_the_sessions_holdout_draw_whether_or_not_they_got_help():
    t = Tally()
    for holdout in (True, False, False):
        v = Visitor(sid_in(holdout))
        t.add(v.session, v.events(page("/")), holdout_share=0.5)
    assert reach(t, "h")[0] == 1
    assert reach(t, "t")[0] == 2
    # Every session starting its day counts in its minute too.
    assert sum(c.get("sessions", 0) for c in t.minutes.values()) == 3


def test_decisions_reactions_and_segments():
    t = Tally()
    v = Visitor(sid_in(False))
    evs = v.events(
        page("/product.html?id=p-2"),
        {"type": "click", "selector": "#b", "x": 1, "y": 1, "reacted": True},
    )
    shown = Decision(
        "iv-1", v.session.sid, 2, evs[-1]["ts"], "help_offer", 0.9, "risk", (), False, segment=1
    )
    held = Decision(
        "iv-2", v.session.sid, 2, evs[-1]["ts"], "form_hint", 0.9, "risk", (), True, segment=0
    )
    t.add(v.session, evs, [shown, held], 0.5, segment_names=("calm", "hesitant"))
    later = v.events(
        {"type": "intervention_shown", "iid": "iv-1"},
        {"type": "intervention_accepted", "iid": "iv-1"},
    )
    t.add(v.session, later, [], 0.5, segment_names=("calm", "hesitant"))
    counts = t.days[("demo", T0 // DAY_MS)]
    assert counts["iv:help_offer:t"] == 1 and counts["iv:form_hint:h"] == 1
    assert counts["react:shown"] == 1 and counts["react:accepted"] == 1
    # A session is in the segment of its first decision, counted once.
    assert counts["seg:hesitant:t"] == 1 and "seg:calm:t" not in counts
    minute = t.minutes[("demo", evs[-1]["ts"] // 60_000)]
    assert minute["iv:help_offer:t"] == 1


def test_a_site_goal_converts_once_and_a_signal_rise_counts_on_its_page():
    t = Tally()
    v = Visitor(sid_in(False))
    goals = {"lead"}

    def goal(ev: dict) -> str | None:
        if ev["type"] == "purchase":
            return "purchase"
        return ev["name"] if ev["type"] == "custom" and ev["name"] in goals else None

    evs = v.events(page("/product.html?id=p-3"))
    # Rapid clicks in one place, none reacting: rage and dead clicks on the product page.
    clicks = [
        {"type": "click", "selector": "#buy", "x": 10, "y": 10, "reacted": False} for _ in range(6)
    ]
    for c in clicks:
        v.seq += 1
        v.ts += 100
        ev = validate_event({**c, "seq": v.seq, "ts": v.ts}, v.ts)
        v.session.apply(ev)
        evs.append(ev)
    evs += v.events({"type": "custom", "name": "lead"}, {"type": "custom", "name": "lead"})
    t.add(v.session, evs, [], 0.5, goal)
    counts = t.days[("demo", T0 // DAY_MS)]
    assert counts["conv:t"] == 1 and counts["goal:lead:t"] == 1
    rose = {f for f in counts if f.startswith("sig:")}
    assert rose and all(f.endswith(":product") for f in rose), rose
    # Still strong in the next batch: not a new rise.
    before = dict(counts)
    t.add(v.session, v.events({"type": "scroll", "depth": 0.5, "dir": "down"}), [], 0.5, goal)
    assert {f: n for f, n in counts.items() if f.startswith("sig:")} == {
        f: n for f, n in before.items() if f.startswith("sig:")
    }


def test_tally_state_survives_a_snapshot():
    t = Tally()
    v = Visitor(sid_in(False))
    t.add(v.session, v.events(page("/cart.html")), holdout_share=0.5)
    back = Session.from_state(msgpack.unpackb(v.session.packed()))
    assert back.tally == v.session.tally
    again = Tally()
    again.add(back, [], holdout_share=0.5)
    v2 = Visitor(v.session.sid, ts=v.ts)
    v2.session = back
    v2.seq = v.seq
    again.add(back, v2.events(page("/cart.html")), holdout_share=0.5)
    assert reach(again) == [0, 0, 0, 0, 0, 0]


def test_take_and_merge_keep_every_increment():
    t = Tally()
    v = Visitor(sid_in(False))
    t.add(v.session, v.events(page("/")), holdout_share=0.5)
    taken = t.take()
    assert not t and taken
    t.merge(taken)
    t.merge(taken)
    assert reach(t)[0] == 2


def test_bad_queries_are_refused_clearly():
    ctx = ConsoleContext(Settings(), "redis://127.0.0.1:6379/0", Keys("x:"), sites={"demo": None})
    with pytest.raises(insights.BadQuery, match="YYYY-MM-DD"):
        insights.days_of({"from": "yesterday"})
    with pytest.raises(insights.BadQuery, match="at most"):
        insights.days_of({"from": "2020-01-01", "to": "2025-01-01"})
    with pytest.raises(insights.BadQuery, match="after"):
        insights.days_of({"from": "2025-01-02", "to": "2025-01-01"})
    with pytest.raises(insights.BadQuery, match="no site"):
        insights.sites_of(ctx, {"site": "nope"})
    assert insights.days_of({"to": "2025-03-02"})[0] == "2025-02-24"


@pytest.mark.asyncio(loop_scope="session")
async def test_seeded_prefix_reads_back_as_views_and_csv(redis_url: str, prefix: str):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "loadtests"))
    from seed_console import ROOT, seed

    from actors.core.sites import load_sites

    done = await asyncio.to_thread(seed, redis_url, prefix, 300, 3000)
    assert done["events"] == 3000 and done["decisions"] > 0
    sites = load_sites(str(ROOT / "cluster" / "sites.toml"))
    ctx = ConsoleContext(Settings(), redis_url, Keys(prefix), sites=sites)
    try:
        week = {"from": insights.days_of({}, None)[0]}
        week["from"] = str(date.fromisoformat(week["from"]) - timedelta(days=1))  # 8 days
        funnel = await insights.funnel(ctx, week)
        steps = {r["step"]: r for r in funnel["tables"][0]["rows"]}
        # Every seeded session landed once, on one day of the last week.
        assert steps["landing"]["treated"] + steps["landing"]["holdout"] == 300
        assert steps["cart"]["treated"] <= steps["product"]["treated"]
        outcomes = await insights.outcomes(ctx, week)
        assert outcomes["data"]["format"] == "lifeline-outcomes/1"
        assert outcomes["data"]["sessions"] == done["decisions"]
        # Past its 30 s, the cached report is served at once and read again in the background.
        key = next(k for k in insights._outcomes_cache if k[1] == prefix)
        t, cached = insights._outcomes_cache[key]
        insights._outcomes_cache[key] = (t - insights.OUTCOMES_CACHE_S - 1, cached)
        stale = await insights.outcomes(ctx, week)
        assert stale["data"]["source"]["age_s"] > insights.OUTCOMES_CACHE_S
        await insights._refreshing[key]
        fresh = await insights.outcomes(ctx, week)
        assert fresh["data"]["source"]["age_s"] < insights.OUTCOMES_CACHE_S
        assert fresh["data"]["sessions"] == done["decisions"]
        seg = await insights.segments(ctx, week)
        assert (
            sum(r["treated"] + r["holdout"] for r in seg["tables"][0]["rows"]) == done["decisions"]
        )
        assert "issue #23" in seg["note"] and seg["returning"] is None
        # CSV round trip: the table's rows come back, column by column.
        text = insights.table_csv(funnel, "steps")
        rows = list(csv.reader(io.StringIO(text)))
        cols = funnel["tables"][0]["columns"]
        assert rows[0] == [c["label"] for c in cols]
        for got, want in zip(rows[1:], funnel["tables"][0]["rows"], strict=True):
            assert got == ["" if want[c["key"]] is None else str(want[c["key"]]) for c in cols]
        with pytest.raises(KeyError):
            insights.table_csv(funnel, "nope")
    finally:
        await ctx.redis.aclose()


ORIGIN = "http://127.0.0.1:8080"


async def _visit(stack, holdout: bool, journey: str, after: list[dict], react: bool) -> str:
    """One visitor over a real WebSocket; returns once the shard has scored all they sent."""
    from serve.dev.pyclient import LifelineClient
    from training.simulator import scripted

    sid = sid_in(holdout, 0.10)  # the demo site's holdout share
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    now = int(time.time() * 1000)
    events = [dict(e, seq=i + 1) for i, e in enumerate(scripted(journey, sid, now - 60_000))]
    for i in range(0, len(events), 6):
        await client.send_events(events[i : i + 6])
    await client.wait_acked(len(events))
    more = list(after)
    if react:
        iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
        more = [
            {"type": t, "iid": iv["iid"]} for t in ("intervention_shown", "intervention_accepted")
        ] + more
    ts, seq = events[-1]["ts"], len(events)
    more = [dict(e, seq=seq + i + 1, ts=ts + 300 * (i + 1)) for i, e in enumerate(more)]
    if more:
        await client.send_events(more)
        await client.wait_acked(seq + len(more))
    await stack.gateway.wait_scored(sid, seq + len(more))
    await client.close()
    return sid


async def _views(ctx: ConsoleContext) -> tuple[dict, dict]:
    return (await insights.funnel(ctx, {"site": "demo"}))["data"]["totals"], (
        await insights.live_business(ctx, {"site": "demo"})
    )["data"]


async def test_shards_tally_real_sessions_and_the_pages_read_them(any_stack):
    stack = any_stack
    ctx = ConsoleContext(
        Settings(),
        stack.redis_url,
        Keys(stack.prefix),
        sites=stack.sites,
        shard_info=stack.shard_info,
    )
    try:
        await asyncio.gather(*(sh.flush.remote() for sh in stack.shards))
        before, live_before = await _views(ctx)
        buy = [page("/cart.html"), page("/checkout.html"), {"type": "purchase", "value": 30.0}]
        await asyncio.gather(
            _visit(stack, False, "struggling", buy, react=True),
            _visit(stack, True, "calm", [], react=False),
        )
        # A clean flush writes what the shards counted (their loop would within a second).
        await asyncio.gather(*(sh.flush.remote() for sh in stack.shards))
        after, live = await _views(ctx)
    finally:
        await ctx.redis.aclose()

    def delta(field: str) -> int:
        return after.get(field, 0) - before.get(field, 0)

    assert [delta(f"reach:{s}:t") for s in FUNNEL] == [1, 1, 1, 1, 1, 1]
    assert delta("reach:landing:h") == 1 and delta("reach:purchase:h") == 0
    assert delta("conv:t") == 1 and delta("conv:h") == 0
    assert sum(delta(f) for f in after if f.startswith("iv:") and f.endswith(":t")) >= 1
    assert delta("react:accepted") == 1 and delta("react:shown") == 1
    assert any(delta(f) > 0 for f in after if f.startswith("sig:")), "the struggle rose somewhere"
    hour = live["reactions_hour"]
    assert hour["accepted"] - live_before["reactions_hour"]["accepted"] == 1
    assert live["sessions_active"] >= 2 and live["shards"]["healthy"] == len(stack.shards)


def test_a_clean_stop_writes_the_counts_still_in_memory(ray_cluster, redis_url, prefix):
    """Counted, not yet flushed (the loop never ran): ShardCore.stop writes them."""
    import redis as sync_redis

    from actors.core.host import EVENTS, pack_batch
    from actors.shard.actor import ShardCore

    core = ShardCore(0, redis_url, prefix, Settings().sites_file, enrich=False)
    now = int(time.time() * 1000) - 60_000
    evs = [validate_event({"type": "page_view", "seq": 1, "ts": now, "path": "/cart.html"}, now)]
    sid = sid_in(False, 0.10)
    r = sync_redis.Redis.from_url(redis_url)
    try:
        core._started = True  # the background loops stay off: only stop() may write
        core.handle(pack_batch([(EVENTS, sid, "demo", ["analytics"], msgpack.packb(evs))]))
        key = Keys(prefix).tally_day("demo", day_text(now // DAY_MS))
        assert not r.exists(key)
    finally:
        core.stop()
    counts = {k.decode(): int(v) for k, v in r.hgetall(key).items()}
    assert counts["reach:cart:t"] == 1 and counts["reach:landing:t"] == 1
    assert 0 < r.ttl(key) <= 7 * 86_400
    minute = Keys(prefix).tally_minute("demo", now // 60_000)
    assert int(r.hget(minute, "sessions")) == 1 and 0 < r.ttl(minute) <= 7200
    r.close()


def test_the_shard_hook_counts_resent_events_once():
    """A gateway's retry resends events the host already applied: they are not counted again."""
    from actors.core.host import SessionHost
    from actors.shard.tallies import ShardTallies
    from cluster.redis_client import redis_client

    host = SessionHost()
    tallies = ShardTallies(
        redis_client("redis://127.0.0.1:6379/0", aio=True, max_connections=64),
        Keys("x:"),
        {},
        lambda _s: 0.1,
    )
    sid = sid_in(False, 0.10)
    t = T0 + 1000
    evs = [
        validate_event({"type": "page_view", "seq": 1, "ts": t, "path": "/cart.html"}, t),
        validate_event({"type": "intervention_shown", "seq": 2, "ts": t + 1, "iid": "i1"}, t + 1),
    ]

    def score(rows):
        return [0.0] * len(rows)

    for batch in ([(sid, "demo", ["analytics"], evs)], [(sid, "demo", ["analytics"], evs)]):
        tallies.batch(batch, host.process(batch, score), host.active)
    counts = tallies.tally.days[("demo", T0 // DAY_MS)]
    assert counts["reach:cart:t"] == 1 and counts["react:shown"] == 1


async def test_routes_answer_json_and_refuse_a_bad_query(redis_url: str, prefix: str):
    """The insights ROUTES over real HTTP (without the sign-in middleware: the lead's)."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from actors.core.sites import Site

    ctx = ConsoleContext(Settings(), redis_url, Keys(prefix), sites={"demo": Site("demo")})
    app = web.Application()
    app["ctx"] = ctx
    for route in insights.ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    assert {r.role for r in insights.ROUTES} == {"viewer"}
    async with TestClient(TestServer(app)) as client:
        for path in ("/api/funnel", "/api/segments", "/api/outcomes", "/api/live/business"):
            resp = await client.get(path, params={"site": "demo"})
            assert resp.status == 200, path
            body = await resp.json()
            assert {"kpis", "tables", "data"} <= set(body), path
        resp = await client.get("/api/funnel", params={"from": "2025-13-01"})
        assert resp.status == 400
        assert (await resp.json())["code"] == "bad_request"
        resp = await client.get("/api/segments", params={"site": "elsewhere"})
        assert resp.status == 400 and "no site" in (await resp.json())["detail"]
    await ctx.redis.aclose()
