"""The gateway under hostile input and failing parts, over real sockets and a real Redis.

Each test names the defect it guards against: a
frame that stopped every acknowledgement, a Redis restart that stopped
pushes for good, uncounted error frames, sessions open to any site, a
beacon that could start sessions and grant consent, a consent log any
visitor could flush, and handshakes that never ended.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid

import aiohttp
import msgpack
import pytest
import redis.asyncio as aioredis
import websockets

from cluster.keys import Keys
from cluster.redis_server import _free_port, _redis_binary, answers
from serve.dev.pyclient import LifelineClient
from serve.edge.gateway import Gateway
from serve.edge.protocol import CLOSE_RATE_ABUSE, sign_token

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"
LOADTEST_ORIGIN = "http://loadtest.local"


def new_sid(tag: str) -> str:
    return f"t-{tag}-{uuid.uuid4().hex[:12]}"


def clicks(first: int, last: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [
        {"type": "click", "seq": s, "ts": now, "selector": "#b", "x": 1, "y": 2, "reacted": True}
        for s in range(first, last + 1)
    ]


def side_gateway(stack, redis_url: str | None = None, **options) -> Gateway:
    """Another gateway over the shared stack's shards, with its own settings (and Redis)."""
    return stack.side_gateway(redis_url, **options)


async def until(cond, timeout: float = 15.0, what: str = "condition") -> None:
    """Await a condition on state this test cannot subscribe to (Redis, a gateway's counters).

    ``cond``: a function returning a bool or an awaitable of one.
    """
    deadline = time.monotonic() + timeout
    while True:
        ok = cond()
        if asyncio.iscoroutine(ok) or isinstance(ok, asyncio.Future):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_frame_that_cannot_be_stored_stops_no_other_acknowledgement(lifeline_stack):
    """A qty of 2**70 once ended the append loop: no visitor on the gateway was acked again."""
    url = lifeline_stack.ws_url
    bad = LifelineClient(url, "demo", new_sid("huge"), ORIGIN, binary=False)
    other = LifelineClient(url, "demo", new_sid("bystander"), ORIGIN)
    assert (await bad.connect())["t"] == "welcome"
    assert (await other.connect())["t"] == "welcome"
    event = {"type": "add_to_cart", "seq": 1, "ts": int(time.time() * 1000), "item": "x"}
    await bad.send_raw(
        json.dumps({"t": "events", "sid": bad.sid, "events": [{**event, "qty": 2**70}]})
    )
    refusal = await bad.wait_for(lambda f: f["t"] == "error")
    assert refusal.get("seq") == 1, refusal
    # The refused event consumed its number; the next one and the other visitor are acked.
    await bad.send_events(clicks(2, 2))
    await bad.wait_acked(2)
    await other.send_events(clicks(1, 3))
    await other.wait_acked(3)
    stored = await lifeline_stack.gateway.store.read_events("demo", bad.sid)
    assert [e["seq"] for e in stored] == [2]
    assert lifeline_stack.gateway.health()["ok"]
    await bad.close()
    await other.close()


def _redis(port: int, workdir: str) -> subprocess.Popen:
    """A redis-server of the test's own, with AOF: a restart keeps what was acknowledged."""
    binary = _redis_binary()
    assert binary is not None
    return subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "yes", "--appendfsync", "always", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_redis_restart_counts_overloaded_and_pushes_resume(lifeline_stack, tmp_path):
    """During an outage every refusal is counted by code; after it, updates reach visitors again.

    The gateway has a Redis of its own here, which the test stops and starts
    again on the same port (the shards keep the shared one; this session's
    first events start it, so they need nothing from the gateway's Redis).
    """
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _redis(port, str(tmp_path))
    await until(lambda: asyncio.to_thread(answers, url), what="redis up")
    gw = side_gateway(lifeline_stack, redis_url=url)
    ws_port = await gw.start("127.0.0.1", 0)
    client = LifelineClient(f"ws://127.0.0.1:{ws_port}/ws", "demo", new_sid("outage"), ORIGIN)
    try:
        assert (await client.connect())["t"] == "welcome"
        await client.send_events(clicks(1, 2))
        await client.wait_acked(2)

        server.terminate()
        server.wait(10)
        start = len(client.frames)
        await client.send_events(clicks(3, 3))
        await client.wait_for(lambda f: f.get("code") == "overloaded", timeout=15, start=start)
        assert gw.stats.errors_by_code.get("overloaded", 0) >= 1
        assert gw.stats.snapshot()["overloaded"] >= 1
        # Its push loop cannot subscribe while Redis is down: health says so.
        await until(lambda: not gw.health()["ok"], what="health to turn red")

        server = _redis(port, str(tmp_path))
        await until(lambda: asyncio.to_thread(answers, url), what="redis back")
        await client.resend_unacked()
        await client.wait_acked(3, timeout=20)
        assert [e["seq"] for e in await gw.store.read_events("demo", client.sid)] == [1, 2, 3]

        # The push loop subscribes again by itself; an update published now reaches the page.
        r = aioredis.Redis.from_url(url)
        channel = Keys(lifeline_stack.settings.prefix).push(gw.id)

        async def subscribed() -> bool:
            return (await r.pubsub_numsub(channel))[0][1] == 1

        await until(subscribed, timeout=20, what="the push loop to subscribe again")
        assert gw.stats.loop_failures["push"] >= 1
        update = {"t": "update", "sid": client.sid, "iid": "x", "text": "hello again"}
        await r.publish(channel, msgpack.packb(update))
        got = await client.wait_for(lambda f: f["t"] == "update", timeout=10)
        assert got["text"] == "hello again"
        await r.aclose()
    finally:
        await client.close()
        await gw.stop()
        server.terminate()
        server.wait(10)


async def test_two_sites_racing_for_one_fresh_session_get_one_welcome(lifeline_stack):
    """The resume token was checked against the connection's site, not the session's."""
    url = lifeline_stack.ws_url
    both = 0
    for _ in range(20):
        sid = new_sid("race")
        a = LifelineClient(url, "demo", sid, ORIGIN)
        b = LifelineClient(url, "loadtest", sid, LOADTEST_ORIGIN)
        replies = await asyncio.gather(a.connect(), b.connect())
        welcomed = [c for c, w in zip((a, b), replies, strict=True) if w["t"] == "welcome"]
        both += len(welcomed) == 2
        assert len(welcomed) == 1, replies
        (owner,) = welcomed
        loser = b if owner is a else a
        assert loser.of_type("error")[0]["code"] == "bad_token"
        # The loser cannot resume it with a token signed for its own site either.
        loser.token = sign_token(lifeline_stack.settings.secret.encode(), loser.site, sid)
        await loser.close()
        assert (await loser.connect())["code"] == "bad_token"
        await owner.send_events(clicks(1, 2))
        await owner.wait_acked(2)
        store = lifeline_stack.gateway.store
        info = await store.session_info(owner.site, sid)
        assert info.known and info.seq == 2
        assert not (await store.session_info(loser.site, sid)).known
        assert await store.r.get(Keys(lifeline_stack.prefix).owner(sid)) == owner.site.encode()
        await asyncio.gather(a.close(), b.close())
    assert both == 0


async def test_a_beacon_cannot_start_a_session_or_grant_consent(lifeline_stack):
    """A beacon for a never-seen id was stored and logged as a consent grant."""
    keys = Keys(lifeline_stack.settings.prefix)
    r = aioredis.Redis.from_url(lifeline_stack.redis.url)
    url = f"{lifeline_stack.http_url}/beacon?site=demo"
    sid = new_sid("ghost")
    body = {"sid": sid, "now": int(time.time() * 1000), "events": clicks(1, 3)}
    forged = sign_token(b"not-the-secret", "demo", sid)
    async with aiohttp.ClientSession() as http:
        for extra in ({}, {"token": forged}):
            async with http.post(
                url, data=json.dumps({**body, **extra}), headers={"Origin": ORIGIN}
            ) as resp:
                assert resp.status == 403, await resp.text()
                assert (await resp.json())["code"] in ("bad_token", "unknown_session")
    assert not await r.exists(
        keys.session("demo", sid), keys.events("demo", sid), keys.consent_records("demo", sid)
    )

    # A session of another site is not this site's to add to, even with its own token.
    owner = LifelineClient(lifeline_stack.ws_url, "loadtest", new_sid("other"), LOADTEST_ORIGIN)
    assert (await owner.connect())["t"] == "welcome"
    async with aiohttp.ClientSession() as http:
        crossed = {**body, "sid": owner.sid, "token": owner.token}
        async with http.post(url, data=json.dumps(crossed), headers={"Origin": ORIGIN}) as resp:
            assert resp.status == 403
    assert await lifeline_stack.gateway.store.read_events("loadtest", owner.sid) == []
    assert await lifeline_stack.gateway.store.read_events("demo", owner.sid) == []
    await owner.close()
    await r.aclose()


async def test_beacons_are_rate_limited_per_session(lifeline_stack):
    """Each beacon got a fresh connection's limits, so none ever applied."""
    client = LifelineClient(lifeline_stack.ws_url, "demo", new_sid("beaconflood"), ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    url = f"{lifeline_stack.http_url}/beacon?site=demo"
    limits = lifeline_stack.gateway.limits
    statuses = []
    async with aiohttp.ClientSession() as http:
        # Resends of nothing new: each beacon still costs its events against the session.
        events = clicks(1, limits.batch)
        body = {"sid": client.sid, "token": client.token, "now": int(time.time() * 1000)}
        for _ in range(int(limits.burst // limits.batch) + 3):
            async with http.post(
                url, data=json.dumps({**body, "events": events}), headers={"Origin": ORIGIN}
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    refused = await resp.json()
                    assert (refused["code"], refused["limit"]) == ("rate_limited", "session")
                    break
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    await client.close()


async def test_consent_is_recorded_per_visitor_and_only_when_it_changes(lifeline_stack):
    """Every hello appended to one shared, capped log: a flood of hellos evicted everyone's proof."""
    keys = Keys(lifeline_stack.settings.prefix)
    r = aioredis.Redis.from_url(lifeline_stack.redis.url)
    client = LifelineClient(lifeline_stack.ws_url, "demo", new_sid("consent"), ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    await client.close()
    assert (await client.connect())["t"] == "welcome"  # the same consent again: no new record
    await client.send_frame(
        {"t": "consent", "sid": client.sid, "consent": ["necessary", "analytics"]}
    )
    await client.wait_for(lambda f: f["t"] == "consent")
    records = await r.xrange(keys.consent_records("demo", client.sid))
    assert [json.loads(f[b"consent"]) for _, f in records] == [
        list(client.consent),
        ["necessary", "analytics"],
    ]
    assert [f[b"via"] for _, f in records] == [b"hello", b"change"]
    assert await r.ttl(keys.consent_records("demo", client.sid)) > 0
    # Other visitors' hellos touch only their own records.
    others = [
        LifelineClient(lifeline_stack.ws_url, "demo", new_sid("c"), ORIGIN) for _ in range(20)
    ]
    await asyncio.gather(*(o.connect() for o in others))
    await asyncio.gather(*(o.close() for o in others))
    assert len(await r.xrange(keys.consent_records("demo", client.sid))) == 2
    await client.close()
    await r.aclose()


async def _raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_a_trickled_handshake_is_cut_and_half_open_sockets_are_bounded(lifeline_stack):
    """An upgrade request sent a byte every few seconds stayed open indefinitely."""
    gw = side_gateway(lifeline_stack, handshake_timeout_s=0.3, half_open_per_ip=3)
    port = await gw.start("127.0.0.1", 0)
    try:
        reader, writer = await _raw_connect(port)
        writer.write(b"GET /ws?site=demo HTTP/1.1\r\nHost: x\r\n")  # never finished
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server cut it
        assert gw.stats.handshake_timeouts == 1
        writer.close()

        # Three sockets that say nothing hold this address's slots; a fourth is refused.
        gw.handshake_timeout_s = 30.0
        held = [await _raw_connect(port) for _ in range(3)]
        await until(lambda: gw._half_open.get("127.0.0.1", 0) == 3, what="3 half-open sockets")
        reader4, writer4 = await _raw_connect(port)
        assert await asyncio.wait_for(reader4.read(), 5) == b""
        assert gw.stats.half_open_refused == 1
        writer4.close()
        for _, w in held:
            w.close()
        await until(lambda: gw._half_open.get("127.0.0.1", 0) == 0, what="slots freed")
        # With the slots free, a real visitor connects.
        client = LifelineClient(f"ws://127.0.0.1:{port}/ws", "demo", new_sid("after"), ORIGIN)
        assert (await client.connect())["t"] == "welcome"
        await client.close()
    finally:
        await gw.stop()


async def test_a_flood_of_websocket_pings_is_rate_limited_then_closed(lifeline_stack):
    """WebSocket pings were answered without limit (~45,000 replies/s on one socket)."""
    limits = lifeline_stack.gateway.limits
    url = lifeline_stack.ws_url + "?site=demo"
    async with websockets.connect(url, origin=ORIGIN, compression=None) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            for i in range(int(limits.burst) + 10 * limits.abuse_strikes):
                await ws.ping(str(i).encode())
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == CLOSE_RATE_ABUSE
