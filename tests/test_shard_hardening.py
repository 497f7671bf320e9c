"""Shard hardening: each defect tested at the depth where it lived.

* 3: a resume on a new connection while the old connection's append round is
  still in flight must not erase the session (real gateway, Ray shards, Redis);
  only an explicit withdrawal erases (a shard hosted in-process, real Redis).
* 2: a session whose state cannot be packed must not stop the other sessions'
  snapshots (the pure host, and a shard's real snapshot loop), and a failing
  background iteration is counted, logged once and survived.
* 9: an intervention outcome reaches only its own session's record (real Redis).
* 17: an erased session's log expires again once the same id resumes (real Redis).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import msgpack
import pytest
import redis.asyncio as aioredis

from actors.core.events import validate_event
from actors.core.host import EVENTS, FORGET, SessionHost, pack_batch
from actors.core.policy import Decision, Reason, in_holdout
from actors.shard.actor import ShardCore
from actors.shard.records import ShardRecords
from cluster.config import Settings
from cluster.keys import Keys
from serve.dev.pyclient import LifelineClient
from serve.edge.gateway import Gateway
from serve.edge.pipeline import ROUNDS_IN_FLIGHT
from serve.edge.store import Append, EventStore
from training.simulator import scripted

aio = pytest.mark.asyncio(loop_scope="session")  # the shared stack lives in the session loop

ORIGIN = "http://127.0.0.1:8080"


def treated_sid(tag: str) -> str:
    """A sid outside the demo site's 10 % holdout: its interventions are shown."""
    while True:
        sid = f"t-{tag}-{uuid.uuid4().hex[:12]}"
        if not in_holdout(sid, 0.10):
            return sid


def journey(kind: str, sid: str) -> list[dict]:
    return scripted(kind, sid, int(time.time() * 1000) - 120_000)


def side_gateway(stack) -> Gateway:
    """Another gateway over the shared stack's shards and Redis (this test holds its rounds)."""
    return stack.side_gateway()


# -- 3: a resume must not erase a consenting visitor's data --------------------------------


@aio
async def test_a_resume_while_the_old_round_is_in_flight_erases_nothing(any_stack):
    stack = any_stack
    gw = side_gateway(stack)
    port = await gw.start("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}/ws"
    keys, r = gw.keys, gw.redis
    held = 0
    old = new = later = None
    try:
        sid = treated_sid("race")
        events = journey("struggling", sid)
        n = len(events)
        old = LifelineClient(url, "demo", sid, ORIGIN)
        assert (await old.connect())["t"] == "welcome"
        for i in range(0, n, 5):
            await old.send_events(events[i : i + 5])
        iv = await old.wait_for(lambda f: f["t"] == "intervention", timeout=15)
        await old.wait_acked(n)
        await gw.wait_scored(sid, n)
        # Records and a snapshot written now (or already, by the periodic flush).
        await stack.shard_for(sid).flush.remote()
        assert (
            await r.exists(
                keys.snapshot("demo", sid),
                keys.events("demo", sid),
                keys.interventions_of("demo", sid),
            )
            == 3
        )

        # Hold the append loop: the next round waits for a slot, its frame validated.
        for _ in range(ROUNDS_IN_FLIGHT):
            await gw.pipeline._slots.acquire()
            held += 1
        shown = {"type": "intervention_shown", "iid": iv["iid"], "ts": events[-1]["ts"] + 500}
        await old.send_events([dict(shown, seq=n + 1)])
        await old.roundtrip()  # the frame before the pong is validated and queued
        # The visitor resumes on a new connection: the session leaves the old one.
        new = LifelineClient(url, "demo", sid, ORIGIN)
        new.token = old.token
        welcome = await new.connect()
        assert welcome["t"] == "welcome" and welcome["acked"] == n  # n + 1 is not durable yet
        for _ in range(held):
            gw.pipeline._slots.release()
        held = 0

        # A session on the same shard whose events come after: once they are
        # scored, the shard has handled the old round (one queue per shard, in order).
        other = treated_sid("after")
        while gw.ring.shard_of(other) != gw.ring.shard_of(sid):
            other = treated_sid("after")
        later = LifelineClient(url, "demo", other, ORIGIN)
        assert (await later.connect())["t"] == "welcome"
        await later.send_events(journey("calm", other)[:1])
        await gw.wait_scored(other, 1)

        # Nothing of the consenting visitor was erased, and the old round's event was applied.
        assert len(await gw.store.read_events("demo", sid)) == n + 1
        assert (
            await r.exists(
                keys.snapshot("demo", sid),
                keys.events("demo", sid),
                keys.interventions_of("demo", sid),
            )
            == 3
        )
        row = await stack.shard_for(sid).session_row.remote(sid)
        assert row is not None and row[0] == n + 1
        await stack.shard_for(sid).flush.remote()  # the outcome's record is written
        assert await r.hget(keys.intervention(iv["iid"]), "outcome") == b"shown"
    finally:
        for _ in range(held):
            gw.pipeline._slots.release()
        for client in (old, new, later):
            if client is not None:
                await client.close()
        await gw.stop()


def _events_item(sid: str, consent: list[str], evs: list[dict]) -> tuple:
    return (EVENTS, sid, "demo", consent, msgpack.packb(evs))


@pytest.fixture
def core(ray_cluster, redis_url, prefix):
    """A shard hosted in this process (its metrics need Ray), over the real Redis."""
    shard = ShardCore(0, redis_url, prefix, Settings().sites_file, enrich=False)
    yield shard
    shard.stop()


@aio
async def test_only_an_explicit_forget_erases_a_session(core, redis_url, prefix):
    keys = Keys(prefix)
    r = aioredis.Redis.from_url(redis_url)
    store = EventStore(r, keys)
    try:
        sid = "s-consenting"
        evs = _calm(1, 4, _recent())
        await store.append_many([Append.of("demo", sid, 1, 4, evs)])
        await asyncio.to_thread(core.handle, pack_batch([_events_item(sid, ["analytics"], evs)]))
        await asyncio.to_thread(core.flush_snapshots)
        assert await r.exists(keys.snapshot("demo", sid), keys.events("demo", sid)) == 2

        # Events whose consent reads empty (their session left its connection
        # meanwhile, say) are events: applied, never a withdrawal.
        more = [dict(evs[-1], seq=5)]
        await store.append_many([Append.of("demo", sid, 5, 5, more)])
        await asyncio.to_thread(core.handle, pack_batch([_events_item(sid, [], more)]))
        assert core.info()["forgotten"] == 0
        assert core.session_row(sid)[0] == 5
        assert await r.exists(keys.snapshot("demo", sid), keys.events("demo", sid)) == 2

        # The explicit withdrawal erases.
        await asyncio.to_thread(core.handle, pack_batch([(FORGET, sid, "demo", (), b"")]))
        assert core.info()["forgotten"] == 1
        assert core.session_row(sid) is None
        assert await r.exists(keys.snapshot("demo", sid), keys.events("demo", sid)) == 0
    finally:
        store.close()
        await r.aclose()


# -- 2: one session's unpackable state, and failing loop iterations ---------------------------


T0 = 1_700_000_000_000


def _calm(start: int, n: int, t0: int = T0) -> list[dict]:
    """``n`` normalised page views from seq ``start``."""
    return [
        validate_event(
            {"type": "page_view", "seq": s, "ts": t0 + s * 100, "path": "/"}, t0 + s * 100
        )
        for s in range(start, start + n)
    ]


def _recent() -> int:
    """A start time a shard will not retire as idle during a test."""
    return int(time.time() * 1000) - 60_000


def _overflowing(start: int, t0: int = T0) -> list[dict]:
    """Two add_to_cart events whose quantities sum past what msgpack can hold.

    Built here, not validated: validation refuses such numbers
    (actors/core/events.py); the host must survive such a state whichever way it got in.
    """
    add = validate_event(
        {"type": "add_to_cart", "seq": start, "ts": t0 + start * 100, "item": "x", "qty": 1},
        t0 + start * 100,
    )
    return [dict(add, seq=start + i, ts=add["ts"] + i, qty=2**64 - 1) for i in range(2)]


def _zero(rows):
    return [0.0] * len(rows)


def test_a_session_that_cannot_be_packed_does_not_stop_the_others_snapshots():
    host = SessionHost(snapshot_ticks=1)
    goods = [f"good-{i}" for i in range(5)]
    items = [(sid, "demo", ["analytics"], _calm(1, 3)) for sid in goods[:2]]
    items += [("bad", "demo", ["analytics"], _calm(1, 1) + _overflowing(2))]
    items += [(sid, "demo", ["analytics"], _calm(1, 3)) for sid in goods[2:]]
    host.process(items, _zero)
    with pytest.raises(OverflowError):
        host.active["bad"].packed()  # the state really is one msgpack refuses

    states = {sid: packed for sid, _site, packed in host.take_dirty()}
    assert sorted(states) == goods
    assert all(msgpack.unpackb(states[sid]) == host.snapshot(sid) for sid in goods)
    assert host.unpackable == 1 and "bad" in host.last_pack_error
    assert host.take_dirty() == []  # skipped, not retried every tick

    # The idle sweep compacts the others and lets the unpackable one go (its log has it).
    assert host.sweep(T0 + 10 * 60_000) == []
    assert sorted(host.dormant) == goods and not host.active
    assert host.unpackable == 2


@aio
async def test_the_snapshot_loop_goes_on_past_a_session_that_cannot_be_packed(
    core, redis_url, prefix
):
    keys = Keys(prefix)
    turns = len(core.host.dirty)
    # The loop's first tick takes the sessions of turn 0: the unpackable one is among
    # them; the others are due in later ticks, which a dead loop would never run.
    bad = next(s for s in (f"bad-{i}" for i in range(1000)) if hash(s) % turns == 0)
    goods = [s for s in (f"good-{i}" for i in range(1000)) if hash(s) % turns != 0][:6]
    t0 = _recent()
    items = [_events_item(bad, ["analytics"], _calm(1, 1, t0) + _overflowing(2, t0))]
    items += [_events_item(sid, ["analytics"], _calm(1, 3, t0)) for sid in goods]
    await asyncio.to_thread(core.handle, pack_batch(items))  # starts the loops

    r = aioredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 15  # a changed session is written within 5 s
        while await r.exists(*(keys.snapshot("demo", s) for s in goods)) < len(goods):
            assert time.monotonic() < deadline, "the snapshot loop stopped"
            await asyncio.sleep(0.1)  # no event to await: the loop runs on its own thread
        assert not await r.exists(keys.snapshot("demo", bad))
    finally:
        await r.aclose()
    info = core.info()
    assert info["sessions_unpackable"] == 1
    assert info["healthy"] is True and info["loops_failed"] == []
    # Loops that cannot go on (here: stopped) turn the shard's health red.
    core.stop()
    info = core.info()
    assert info["healthy"] is False
    assert sorted(info["loops_failed"]) == ["model", "sites", "snapshots", "tallies"]


# -- 9: outcomes reach only their own session's record -------------------------------------


def _decision(iid: str, sid: str) -> Decision:
    return Decision(
        iid=iid,
        sid=sid,
        seq=3,
        ts=1_003,
        kind="help_offer",
        score=0.8,
        trigger="risk",
        reasons=(Reason("exit_risk", 0.8),),
        holdout=False,
    )


@aio
async def test_an_outcome_for_another_sessions_intervention_is_refused(redis_url, prefix):
    r = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    records = ShardRecords(r, keys)
    try:
        mine, legacy = _decision("iv-mine", "s-owner"), _decision("iv-legacy", "s-owner")
        await records.record(
            [mine, legacy],
            [{"sid": "s-owner", "site": "demo", "kind": "help_offer"}, {"sid": "s-owner"}],
            {"s-owner": 2},
            [],
        )
        refused = await records.record(
            [],
            [],
            {},
            [
                ("intervention_accepted", "iv-mine", 7, "s-intruder", "demo"),  # another session
                ("intervention_accepted", "iv-mine", 8, "s-owner", "other-site"),  # another site
                ("intervention_dismissed", "iv-legacy", 9, "s-intruder", "demo"),
            ],
        )
        assert refused == 3
        assert await r.hmget(keys.intervention("iv-mine"), "outcome", "accepted") == [None, None]
        assert await r.hget(keys.intervention("iv-legacy"), "outcome") is None

        refused = await records.record(
            [],
            [],
            {},
            [
                ("intervention_shown", "iv-mine", 10, "s-owner", "demo"),
                # A record written before records named their site: its session decides.
                ("intervention_shown", "iv-legacy", 11, "s-owner", "demo"),
            ],
        )
        assert refused == 0
        assert await r.hmget(keys.intervention("iv-mine"), "outcome", "shown") == [b"shown", b"10"]
        assert await r.hget(keys.intervention("iv-legacy"), "outcome") == b"shown"
    finally:
        await r.aclose()


# -- 17: an erased session's log expires again when the id resumes ---------------------------


@aio
async def test_an_erased_sessions_log_expires_again_when_the_same_id_resumes(redis_url, prefix):
    r = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    store = EventStore(r, keys)
    try:
        sid = "s-erased-then-back"
        assert await store.append_many([Append.of("demo", sid, 1, 3, _calm(1, 3))]) == [(3, True)]
        assert await r.ttl(keys.events("demo", sid)) > 0
        await ShardRecords(r, keys).erase([("demo", sid)])
        assert not await r.exists(keys.events("demo", sid))

        assert await store.append_many([Append.of("demo", sid, 4, 5, _calm(4, 2))]) == [(5, True)]
        assert await r.ttl(keys.events("demo", sid)) > 0  # -1 would be: kept forever
    finally:
        store.close()
        await r.aclose()
