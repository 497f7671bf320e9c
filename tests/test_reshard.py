"""Changing the number of shards while visitors send events (issue #24, part 3).

The ring first (pure): shards are placed by name, so adding one moves about
1/(N+1) of the sessions, all of them onto the new shard. Then a real stack
(Ray shards, the gateway, Redis) under continuous load from a few hundred
sockets: one shard is added and then removed through the request path the
``lifeline shards`` command uses; afterwards every acknowledged event is
logged exactly once, every session's features equal a replay of its log, no
event was decided on twice, and every moved session was scored again within
5 s of the change.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest

from actors.core.placement import HashRing
from actors.core.session import replay
from cluster.keys import Keys
from cluster.shard_set import read_members, request

SESSIONS = 200
RATE = 3.0  # events per second per session
CLIENT_TASKS = 4


def test_a_new_shard_takes_about_its_share_and_nothing_moves_between_the_others():
    names = [f"lifeline-shard-{i}" for i in range(4)]
    sids = [f"s-{uuid.uuid4().hex}" for _ in range(20_000)]
    before = HashRing(names)
    after = HashRing([*names, "lifeline-shard-4"])
    moved = [s for s in sids if before.owner(s) != after.owner(s)]
    assert {after.owner(s) for s in moved} == {"lifeline-shard-4"}, "moves only onto the new one"
    share = len(moved) / len(sids)
    assert 0.7 / 5 < share < 1.3 / 5, share
    # Removing it again restores the first placement exactly (names, not positions).
    again = HashRing(names)
    assert all(before.owner(s) == again.owner(s) for s in sids)
    # Removing a middle shard moves only its own sessions.
    fewer = HashRing([n for n in names if n != "lifeline-shard-1"])
    assert all(
        before.owner(s) == fewer.owner(s) for s in sids if before.owner(s) != "lifeline-shard-1"
    )


@pytest.fixture(scope="module")
async def stack(ray_cluster, redis_url):
    from cluster.config import Settings
    from cluster.redis_server import delete_prefix
    from cluster.stack import Stack

    prefix = f"lltest-reshard-{uuid.uuid4().hex[:8]}:"
    st = Stack(
        Settings(
            redis_url=redis_url, prefix=prefix, ws_port=0, http_port=0, console_port=0, shards=2
        )
    )
    await st.start(shard_name_suffix=f"-{uuid.uuid4().hex[:6]}")
    yield st
    await st.stop()
    delete_prefix(redis_url, prefix)


async def test_adding_and_removing_a_shard_under_load_loses_and_repeats_nothing(stack):
    from loadtests.bench_spine import Visitor, drain, drive
    from loadtests.journeys import load_journeys

    gw = stack.gateway
    keys = Keys(stack.prefix)
    journeys = load_journeys("sim", 200, seed=3)
    res = {"sent": 0, "acked": 0, "ack_lat": [], "ack_at": [], "iv_lat": []}
    res.update(interventions=0, errors={})
    rng = random.Random(7)
    visitors = [
        Visitor(journeys, RATE, res, (0.0, 0.0), random.Random(rng.random()))
        for _ in range(SESSIONS)
    ]
    await asyncio.gather(*(v.connect(stack.ws_url) for v in visitors))
    stop_at = time.perf_counter() + 3600
    drivers = [
        asyncio.create_task(drive(visitors[k::CLIENT_TASKS], stop_at)) for k in range(CLIENT_TASKS)
    ]
    moved_after: list[float] = []

    async def change(op: str, name: str = "") -> dict:
        """One change through the operators' request path; waits for the moved sessions' scores."""
        old = gw.ring
        outcome = await request(gw.redis, keys, op, name, timeout=60)
        assert outcome["ok"], outcome
        done = time.perf_counter()
        new = gw.ring
        assert new.names == outcome["shards"]
        moved = [v for v in visitors if old.owner(v.sid) != new.owner(v.sid)]
        assert moved, "some sessions change shards"
        # Each moved session's next event, sent after the switch, is scored by its new shard.
        targets = [(v, v.seq + 1) for v in moved]

        async def scored(v, seq) -> float:
            await gw.wait_scored(v.sid, seq, timeout=10)
            return time.perf_counter() - done

        moved_after.extend(await asyncio.gather(*(scored(v, s) for v, s in targets)))
        return outcome

    await asyncio.sleep(2.0)  # every session under way on the first set
    added = await change("add")
    assert len(added["shards"]) == 3
    assert (await read_members(gw.redis, keys))[1] == added["shards"]
    await asyncio.sleep(2.0)
    removed = await change("remove", added["name"])
    assert removed["shards"] == added["shards"][:2]
    await asyncio.sleep(1.0)
    for t in drivers:
        t.cancel()
    await asyncio.gather(*drivers, return_exceptions=True)
    # Whatever was sent is acknowledged or resent until it is (a visitor resends on errors).
    await drain(visitors, 20)
    assert not any(v.unacked for v in visitors)
    assert max(moved_after) < 5.0, max(moved_after)

    rows = []
    for v in visitors:
        await gw.wait_scored(v.sid, v.acked, timeout=20)
        logged = await gw.store.read_events("loadtest", v.sid)
        seqs = [e["seq"] for e in logged]
        assert seqs == list(range(1, v.acked + 1)), f"{v.sid}: every acked event once, in order"
        rows.append((v, logged, stack.shard_for(v.sid).session_row.remote(v.sid)))
    detectors = stack.sites["loadtest"].detectors
    for v, logged, row in rows:
        assert await row == replay(logged, sid=v.sid, site="loadtest", cfg=detectors)[-1], v.sid

    # No event was decided on twice (a session's decisions are in the intervention log).
    decided = [
        (f[b"sid"], f[b"seq"])
        for _, f in await gw.redis.xrange(keys.intervention_log)
        if b"seq" in f
    ]
    assert len(decided) == len(set(decided))
    for v in visitors:
        v.leave()
