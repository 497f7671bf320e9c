"""Intervention records against a real Redis: decisions, outcomes, and erasure on withdrawal."""

from __future__ import annotations

import pytest

from actors.core.policy import Decision, Reason
from actors.shard.records import ShardRecords
from cluster.keys import Keys
from cluster.redis_client import redis_client

pytestmark = pytest.mark.asyncio(loop_scope="session")


def decision(iid: str, sid: str, seq: int) -> Decision:
    return Decision(
        iid=iid,
        sid=sid,
        seq=seq,
        ts=1_000 + seq,
        kind="help_offer",
        score=0.81,
        trigger="risk",
        reasons=(Reason("exit_risk", 0.81),),
        holdout=False,
        page_type="cart",
    )


def fields(d: Decision) -> dict:
    return {"sid": d.sid, "site": "demo", "seq": d.seq, "kind": d.kind, "score": d.score}


async def test_decisions_and_outcomes_are_recorded_and_a_withdrawal_erases_only_its_session(
    store_url, prefix
):
    r = redis_client(store_url, aio=True)
    keys = Keys(prefix)
    records = ShardRecords(r, keys)
    try:
        mine = [decision("i-a1", "gone", 4), decision("i-a2", "gone", 9)]
        other = decision("i-b1", "stays", 3)
        ds = [*mine, other]
        await records.record(ds, [fields(d) for d in ds], {"gone": 2, "stays": 1}, [])
        await r.hset(keys.session("demo", "gone"), mapping={"consent": '["necessary"]', "seq": 9})
        await r.set(keys.snapshot("demo", "gone"), b"state")
        await r.xadd(keys.events("demo", "gone"), {"ev": b"events"})

        # Outcomes land on their record; one for an unknown iid creates nothing.
        await records.record(
            [],
            [],
            {},
            [
                ("intervention_shown", "i-a1", 5, "gone", "demo"),
                ("intervention_accepted", "i-zz", 6, "gone", "demo"),
            ],
        )
        iv = await r.hgetall(keys.intervention("i-a1"))
        assert iv[b"outcome"] == b"shown" and iv[b"shown"] == b"5" and iv[b"kind"] == b"help_offer"
        assert await r.ttl(keys.intervention("i-a1")) > 0
        assert not await r.exists(keys.intervention("i-zz"))
        log = await r.xrange(keys.intervention_log)
        assert [e[b"iid"] for _, e in log] == [b"i-a1", b"i-a2", b"i-b1"]
        assert iv[b"log_id"] == log[0][0]
        assert await r.hmget(keys.session("demo", "gone"), "iv_count", "iv_last") == [b"2", b"1009"]

        assert await records.erase([("demo", "gone")]) == 2  # its two log entries
        assert [e[b"iid"] for _, e in await r.xrange(keys.intervention_log)] == [b"i-b1"]
        left = [keys.intervention(d.iid) for d in mine]
        left += [
            keys.interventions_of("demo", "gone"),
            keys.snapshot("demo", "gone"),
            keys.events("demo", "gone"),
        ]
        assert await r.exists(*left) == 0
        # The consent (the record of the withdrawal) stays; what the visitor did goes.
        assert await r.hgetall(keys.session("demo", "gone")) == {
            b"consent": b'["necessary"]',
            b"seq": b"9",
        }
        assert (
            await r.exists(keys.intervention("i-b1"), keys.interventions_of("demo", "stays")) == 2
        )
    finally:
        await r.aclose()


async def test_a_conversion_marks_the_decisions_it_came_after_once(store_url, prefix):
    r = redis_client(store_url, aio=True)
    keys = Keys(prefix)
    records = ShardRecords(r, keys)
    conv = ("converted", "converted_seq", "goal")
    try:
        early, late = decision("i-c4", "buyer", 4), decision("i-c9", "buyer", 9)
        # The lead at seq 7 comes after the first decision and before the second.
        await records.record(
            [early], [fields(early)], {"buyer": 1}, [], [("buyer", "demo", "lead", 7, 5_007)]
        )
        assert await r.hmget(keys.intervention("i-c4"), *conv) == [b"5007", b"7", b"lead"]
        # The second decision and a purchase in one call: the decision is written first.
        await records.record(
            [late],
            [fields(late)],
            {"buyer": 2},
            [],
            [("buyer", "demo", "purchase", 12, 5_012)],
        )
        assert await r.hmget(keys.intervention("i-c4"), *conv) == [b"5007", b"7", b"lead"]
        assert await r.hmget(keys.intervention("i-c9"), *conv) == [b"5012", b"12", b"purchase"]
        # A session without decisions, or another site's session of the same id: nothing.
        await records.record(
            [],
            [],
            {},
            [],
            [("browser", "demo", "purchase", 3, 1), ("buyer", "other", "purchase", 20, 1)],
        )
        assert await r.keys(f"{prefix}*browser*") == []
        assert await r.hget(keys.intervention("i-c9"), "converted") == b"5012"
        # Erasing the session takes the conversions with the records they are on.
        await records.erase([("demo", "buyer")])
        assert await r.exists(keys.intervention("i-c4"), keys.intervention("i-c9")) == 0
    finally:
        await r.aclose()


async def test_snapshots_are_written_in_one_call_and_expire(store_url, prefix):
    r = redis_client(store_url, aio=True)
    keys = Keys(prefix)
    try:
        states = [("s1", "demo", b"\x93\xa2s1\x00\xff"), ("s2", "demo", bytes(range(256)))]
        await ShardRecords(r, keys).snapshots(states)  # any bytes survive
        for sid, _site, packed in states:
            assert await r.get(keys.snapshot("demo", sid)) == packed
            assert await r.ttl(keys.snapshot("demo", sid)) > 0
    finally:
        await r.aclose()
