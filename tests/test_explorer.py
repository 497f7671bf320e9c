"""The session explorer on a real stack: its index, search, timeline and their API.

Sessions are driven through the gateway by the Python WebSocket client (one
that gets an intervention, one that does not), and one straight through a
shard's own batch call, whose reply carries the score of every event: the
timeline's replay must give exactly those. Index writes ride on the shards'
snapshot tick; ``flush`` makes a shard write them (and its records) now.
"""

from __future__ import annotations

import time
import uuid

import aiohttp
import msgpack
import pytest
import pytest_asyncio

from actors.core.events import FIELDS
from actors.core.host import EVENTS, pack_batch
from actors.core.policy import in_holdout
from actors.shard.index import SessionIndex, reindex
from cluster.keys import Keys
from cluster.redis_client import redis_client
from serve.console.accounts import Accounts
from serve.console.context import ConsoleContext
from serve.console.explorer import ExplorerError, search, timeline
from serve.dev.pyclient import LifelineClient
from serve.edge.store import Append, EventStore
from training.simulator import scripted

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"


def new_sid(tag: str) -> str:
    return f"x-{tag}-{uuid.uuid4().hex[:12]}"


def treated_sid(tag: str) -> str:
    while True:
        sid = new_sid(tag)
        if not in_holdout(sid, 0.10):
            return sid


def journey(kind: str) -> list[dict]:
    return scripted(kind, "", int(time.time() * 1000) - 120_000)


@pytest_asyncio.fixture(loop_scope="session")
async def ctx(any_stack):
    """The console's context for the stack under test; its client closed after the test."""
    stack = any_stack
    c = ConsoleContext(stack.settings, stack.redis_url, Keys(stack.prefix), sites=stack.sites)
    yield c
    await c.redis.aclose()


async def drive(stack, sid: str, kind: str) -> tuple[LifelineClient, list[dict], dict | None]:
    """Send a scripted journey through the gateway; (client, events, intervention or None)."""
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    events = journey(kind)
    for i in range(0, len(events), 5):
        await client.send_events(events[i : i + 5])
    await client.wait_acked(len(events))
    await stack.gateway.wait_scored(sid, len(events))
    iv = None
    if kind == "struggling":
        iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
    return client, events, iv


async def flush(stack, *sids: str) -> None:
    """Have the shards of ``sids`` write their records, snapshots and index entries now."""
    for sid in sids:
        await stack.shard_for(sid).flush.remote()


def found(result: dict) -> set[str]:
    return {s["sid"] for s in result["sessions"]}


async def every(ctx: ConsoleContext, **criteria) -> list[str]:
    """Every sid a search finds, page after page (2 a page: many pages), checking the order."""
    out, cursor, last = [], None, float("inf")
    while True:
        page = await search(ctx, limit=2, cursor=cursor, **criteria)
        for s in page["sessions"]:
            assert s["last_seen_ms"] <= last, "newest first, across pages too"
            last = s["last_seen_ms"]
            out.append(s["sid"])
        cursor = page["cursor"]
        if cursor is None:
            return out


async def test_search_finds_each_session_by_each_criterion_and_not_the_others(any_stack, ctx):
    stack = any_stack
    t0 = int(time.time() * 1000) - 300_000  # before the journeys' first events
    tag = uuid.uuid4().hex[:8]
    helped, calm = treated_sid(f"h{tag}"), new_sid(f"c{tag}")
    c1, _, iv = await drive(stack, helped, "struggling")
    c2, _, _ = await drive(stack, calm, "calm")
    await flush(stack, helped, calm)
    info = await stack.shard_for(helped).ping.remote()
    assert info["sessions_indexed"] >= 1 and info["index_failures"] == 0

    by_id = await search(ctx, site="demo", sid_prefix=f"x-h{tag}")
    assert found(by_id) == {helped}
    row = by_id["sessions"][0]
    assert row["interventions"] >= 1 and row["last_seq"] > 0 and row["started_ms"] > 0
    (calm_row,) = (await search(ctx, sid_prefix=f"x-c{tag}"))["sessions"]  # every site
    assert calm_row["sid"] == calm and calm_row["interventions"] == 0
    assert found(await search(ctx, site="demo", sid_prefix=f"x-none{tag}")) == set()

    # Time windows: around the two sessions' last events, paged to the end (other tests'
    # sessions of the shared stack may fall in them too).
    lo = min(by_id["sessions"][0]["last_seen_ms"], calm_row["last_seen_ms"])
    hi = max(by_id["sessions"][0]["last_seen_ms"], calm_row["last_seen_ms"])
    window = await every(ctx, site="demo", since_ms=lo, until_ms=hi)
    assert {helped, calm} <= set(window) and len(window) == len(set(window))
    assert not {helped, calm} & set(await every(ctx, site="demo", until_ms=lo - 1, since_ms=t0))
    assert not {helped, calm} & set(await every(ctx, site="demo", since_ms=hi + 1))
    assert not {helped, calm} & set(await every(ctx, site="loadtest", since_ms=lo, until_ms=hi))
    assert set(window) <= set(await every(ctx, since_ms=lo, until_ms=hi))  # all sites

    with_help = await every(ctx, site="demo", since_ms=lo, until_ms=hi, intervened=True)
    assert helped in with_help and calm not in with_help
    without = await every(ctx, site="demo", since_ms=lo, until_ms=hi, intervened=False)
    assert calm in without and helped not in without
    assert sorted(with_help + without) == sorted(window)

    segment = row["segment"]
    assert segment, "the bundled model has segments: a decision names one"
    in_segment = await every(ctx, site="demo", since_ms=lo, until_ms=hi, segment=segment)
    assert helped in in_segment and calm not in in_segment
    assert found(
        await search(ctx, site="demo", sid_prefix=f"x-h{tag}", segment=segment, intervened=True)
    ) == {helped}
    assert not found(await search(ctx, site="demo", sid_prefix=f"x-h{tag}", intervened=False))

    for bad, code in (
        ({"limit": 0}, "bad_limit"),
        ({"sid_prefix": "a b"}, "bad_sid_prefix"),
        ({"site": "nowhere"}, "unknown_site"),
        ({"cursor": "%%%"}, "bad_cursor"),
        ({"since_ms": -1}, "bad_time"),
        ({"since_ms": 2, "until_ms": 1}, "bad_time"),
        ({"cursor": "eyJwIjogWzFdfQ=="}, "bad_cursor"),  # {"p": [1]}
        ({"sid_prefix": "x", "cursor": "eyJvIjogLTF9"}, "bad_cursor"),  # {"o": -1}
    ):
        with pytest.raises(ExplorerError) as err:
            await search(ctx, **bad)
        assert err.value.code == code
    await c1.close()
    await c2.close()
    assert iv is not None


async def test_timeline_risk_is_what_the_shard_scored_with_decisions_and_reasons(any_stack, ctx):
    stack = any_stack
    # 1. Through a shard's own batch call, whose reply carries every event's score.
    sid = treated_sid("direct")
    events = journey("struggling")
    store = EventStore(stack.gateway.redis, stack.gateway.keys)
    consent = ["necessary", "analytics"]
    assert (await store.claim(sid, "demo", consent, token=False))[0] == "ok"
    run = Append.of("demo", sid, 1, len(events), events)
    assert await store.append_many([run]) == [(len(events), True)]
    reply = await stack.shard_for(sid).handle.remote(
        pack_batch([(EVENTS, sid, "demo", consent, run.payload)])
    )
    rows, _triggered = msgpack.unpackb(reply)  # (per session, traces the shard started)
    ((_sid, seqs, scores, frames),) = rows
    tl = await timeline(ctx, "demo", sid)
    assert [e["seq"] for e in tl["events"]] == seqs == [e["seq"] for e in events]
    assert [e["risk"] for e in tl["events"]] == scores  # the same core, the same model
    assert tl["model"] == (await stack.shard_for(sid).ping.remote())["model"]
    assert frames, "the struggling journey gets help"
    short = await timeline(ctx, "demo", sid, max_events=5)
    assert short["cut"] and len(short["events"]) == 5 and not tl["cut"]

    # 2. Through the gateway: the decision's record with its reasons, and what the visitor did.
    sid = treated_sid("gw")
    client, events, iv = await drive(stack, sid, "struggling")
    shown = {"type": "intervention_shown", "iid": iv["iid"], "ts": events[-1]["ts"] + 500}
    await client.send_events([dict(shown, seq=len(events) + 1)])
    await client.wait_acked(len(events) + 1)
    await stack.gateway.wait_scored(sid, len(events) + 1)
    await flush(stack, sid)
    tl = await timeline(ctx, "demo", sid)
    (d,) = [d for d in tl["decisions"] if d["iid"] == iv["iid"]]
    assert d["kind"] == iv["kind"] and d["shown"] and not d["holdout"]
    assert d["seq"] == iv["seq"] and d["outcome"] == "shown"
    assert d["text"] == iv["text"]  # what the visitor saw
    assert d["reasons"] == iv["reasons"] and d["reasons"][-1]["signal"] == "exit_risk"
    assert d["drivers"] and all(x["push"] > 0 for x in d["drivers"])
    assert d["model"] == tl["model"] and d["segment"] == tl["session"]["segment"]
    at = next(e for e in tl["events"] if e["seq"] == d["seq"])
    assert round(at["risk"], 4) == d["score"] == iv["score"]
    assert tl["events"][-1]["type"] == "intervention_shown"
    strong = stack.sites["demo"].policy.signal_strength
    for r in d["reasons"][:-1]:  # each strong signal had crossed by the decision's event
        rise = tl["signals"][r["signal"]]
        assert rise["crossed_seq"] is not None and rise["crossed_seq"] <= d["seq"]
        assert at["signals"][r["signal"]] >= strong
    logged = {e["seq"]: e for e in events}
    for e in tl["events"]:  # what the tracker sent, as declared: never what a visitor typed
        sent = {k: v for k, v in logged.get(e["seq"], shown).items() if k not in ("seq", "ts")}
        assert e["fields"] == {k: v for k, v in sent.items() if k != "type"}, e
        assert set(e["fields"]) <= set(FIELDS[e["type"]]) and "value" not in e["fields"]
    with pytest.raises(ExplorerError) as err:
        await timeline(ctx, "demo", new_sid("never"))
    assert err.value.code == "unknown_session" and err.value.status == 404
    await client.close()


async def test_an_erased_session_leaves_the_index(any_stack, ctx):
    stack = any_stack
    keys = Keys(stack.prefix)
    tag = uuid.uuid4().hex[:8]
    sid = treated_sid(f"e{tag}")
    client, _, _ = await drive(stack, sid, "struggling")
    await flush(stack, sid)
    assert found(await search(ctx, site="demo", sid_prefix=f"x-e{tag}", intervened=True)) == {sid}
    await client.send_frame({"t": "consent", "sid": sid, "consent": ["necessary"]})
    assert (await client.wait_for(lambda f: f["t"] == "consent"))["consent"] == ["necessary"]
    # A later session on the same shard: once it is scored, the withdrawal was handled.
    other = new_sid("after")
    while stack.gateway.ring.shard_of(other) != stack.gateway.ring.shard_of(sid):
        other = new_sid("after")
    later, _, _ = await drive(stack, other, "calm")
    await flush(stack, sid)  # a tick after the erase writes nothing back
    assert found(await search(ctx, site="demo", sid_prefix=f"x-e{tag}")) == set()
    r = stack.gateway.redis
    for part in ("seen", "ids", "iv"):
        assert await r.zscore(keys.session_index("demo", part), sid) is None, part
    segs = await r.smembers(keys.session_index("demo", "segs"))
    for seg in segs:
        assert await r.zscore(keys.session_index("demo", f"seg:{seg.decode()}"), sid) is None
    await client.close()
    await later.close()


async def test_reindex_puts_sessions_stored_before_the_index_back(any_stack, ctx):
    stack = any_stack
    keys = Keys(stack.prefix)
    tag = uuid.uuid4().hex[:8]
    sid = treated_sid(f"r{tag}")
    client, events, _ = await drive(stack, sid, "struggling")
    await flush(stack, sid)
    before = (await search(ctx, site="demo", sid_prefix=f"x-r{tag}"))["sessions"]
    # As a release before the index left it: no entries, no segment in the session hash.
    r = stack.gateway.redis
    seg = before[0]["segment"]
    for part in ("seen", "ids", "iv", f"seg:{seg}"):
        await r.zrem(keys.session_index("demo", part), sid)
    await r.hdel(keys.session("demo", sid), "seg", "ix_seg", "iv_count")
    assert found(await search(ctx, site="demo", sid_prefix=f"x-r{tag}")) == set()
    counts = await reindex(r, keys)
    assert counts["indexed"] >= 1 and counts["sessions"] >= counts["indexed"]
    again = await search(ctx, site="demo", sid_prefix=f"x-r{tag}", intervened=True, segment=seg)
    assert again["sessions"] == before
    logged = await stack.gateway.store.read_events("demo", sid)
    assert before[0]["last_seen_ms"] == logged[-1]["ts"]  # the last event logged, answers included
    await client.close()


async def test_api_routes_are_for_analysts_and_refuse_bad_input(any_stack, ctx):
    stack = any_stack
    acc = Accounts(stack.gateway.redis, Keys(stack.prefix))
    tag = uuid.uuid4().hex[:6]
    await acc.add(f"analyst-{tag}", "analyst", "correct horse battery")
    await acc.add(f"viewer-{tag}", "viewer", "correct horse battery")
    analyst = {"Authorization": f"Bearer {await acc.issue_token(f'analyst-{tag}')}"}
    viewer = {"Authorization": f"Bearer {await acc.issue_token(f'viewer-{tag}')}"}
    sid = new_sid(f"a{tag}")
    client, events, _ = await drive(stack, sid, "calm")
    await flush(stack, sid)
    async with aiohttp.ClientSession(base_url=stack.console_url) as http:
        r = await http.get("/api/sessions", params={"sid": f"x-a{tag}"}, headers=analyst)
        assert r.status == 200, await r.text()
        assert [s["sid"] for s in (await r.json())["sessions"]] == [sid]
        r = await http.get(f"/api/sessions/demo/{sid}", headers=analyst)
        body = await r.json()
        assert r.status == 200 and len(body["events"]) == len(events) and body["decisions"] == []
        for path in ("/api/sessions", f"/api/sessions/demo/{sid}"):
            r = await http.get(path, headers=viewer)
            assert r.status == 403 and (await r.json())["code"] == "forbidden"
        # The pages' views: the results link to the timeline, which charts the risk.
        r = await http.get("/api/view/sessions", params={"sid": f"x-a{tag}"}, headers=analyst)
        (rows,) = [t["rows"] for t in (await r.json())["tables"] if t["id"] == "sessions"]
        assert [row["href"] for row in rows] == [f"/sessions/demo/{sid}"]
        r = await http.get(
            "/api/view/session", params={"site": "demo", "sid": sid}, headers=analyst
        )
        view = await r.json()
        (risk,) = [c for c in view["charts"] if c["id"] == "risk"]
        assert risk["labels"] == [e["seq"] for e in body["events"]]
        assert risk["series"][0]["values"] == [round(e["risk"], 4) for e in body["events"]]
        r = await http.get("/api/view/session", params={"site": "demo", "sid": sid}, headers=viewer)
        assert r.status == 403
        r = await http.get("/api/sessions", params={"limit": "many"}, headers=analyst)
        assert r.status == 400 and (await r.json())["code"] == "bad_request"
        r = await http.get("/api/sessions", params={"intervened": "maybe"}, headers=analyst)
        assert r.status == 400 and (await r.json())["code"] == "bad_request"
        r = await http.get("/api/sessions/nowhere/abc", headers=analyst)
        assert r.status == 404 and (await r.json())["code"] == "unknown_site"
        r = await http.get(f"/api/sessions/demo/{new_sid('never')}", headers=analyst)
        assert r.status == 404 and (await r.json())["code"] == "unknown_session"
    await client.close()


async def test_ties_page_without_loss_and_old_entries_are_trimmed(store_url, prefix):
    """The index alone, on a bare Redis: equal last-seen times, paging, trimming by age."""
    from actors.core.sites import Site
    from cluster.config import Settings

    redis_url = store_url
    r = redis_client(redis_url, aio=True)
    keys = Keys(prefix)
    index = SessionIndex(r, keys, ["s1"])
    now = int(time.time() * 1000)
    sids = [f"tie-{i}" for i in range(7)]
    for sid in [*sids, "old", "nocons"]:
        consent = '["analytics"]' if sid != "nocons" else '["necessary"]'
        await r.hset(keys.session("s1", sid), mapping={"consent": consent, "seq": 3})
    await r.hset(keys.session("s1", "old"), mapping={"iv_count": 1, "seg": "quick_visits"})
    await index.write([("s1", sid, now) for sid in sids])
    await index.write([("s1", "old", now - 10_000), ("s1", "nocons", now)])
    await index.write([("s1", "tie-0", now - 5)])  # scores never move back
    ctx = ConsoleContext(
        Settings(redis_url=redis_url, prefix=prefix), redis_url, keys, sites={"s1": Site("s1")}
    )
    got, cursor = [], None
    while True:
        page = await search(ctx, site="s1", limit=3, cursor=cursor)
        got += [s["sid"] for s in page["sessions"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert got[:7] == sorted(sids, reverse=True) and got[7:] == ["old"]  # no "nocons"
    assert found(await search(ctx, site="s1", segment="quick_visits")) == {"old"}
    assert found(await search(ctx, site="s1", intervened=True)) == {"old"}
    assert await index.trim(now - 1_000) == 1
    assert found(await search(ctx, site="s1", limit=50)) == set(sids)
    assert found(await search(ctx, site="s1", sid_prefix="old")) == set()
    assert found(await search(ctx, site="s1", intervened=True)) == set()
    assert found(await search(ctx, site="s1", segment="quick_visits")) == set()
    await ctx.redis.aclose()
    await r.aclose()


async def test_a_long_log_is_read_a_page_at_a_time_up_to_the_limit(store_url, prefix):

    r = redis_client(store_url, aio=True)
    store = EventStore(r, Keys(prefix))
    now = int(time.time() * 1000)
    await store.claim("long", "s1", ["analytics"], token=False)
    events = [
        {"type": "visibility", "seq": i, "ts": now + i, "state": "hidden"} for i in range(1, 301)
    ]
    for ev in events:  # one stream entry per event: more entries than a page holds
        await store.append_many([Append.of("s1", "long", ev["seq"], ev["seq"], [ev])])
    assert await store.read_events("s1", "long", 200) == events[:200]
    assert (
        await store.read_events("s1", "long", 1000)
        == events
        == await store.read_events("s1", "long")
    )
    await r.aclose()
