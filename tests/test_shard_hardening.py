"""Shard hardening (issue 18), each defect tested at the depth where it lived.

* 9: an intervention outcome reaches only its own session's record (real Redis).
* 17: an erased session's log expires again once the same id resumes (real Redis).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from actors.events import validate_event
from actors.policy import Decision, Reason
from actors.records import ShardRecords
from cluster.keys import Keys
from serve.store import Append, EventStore

aio = pytest.mark.asyncio(loop_scope="session")  # the shared stack lives in the session loop

T0 = 1_700_000_000_000


def _calm(start: int, n: int, t0: int = T0) -> list[dict]:
    """``n`` normalised page views from seq ``start``."""
    return [
        validate_event(
            {"type": "page_view", "seq": s, "ts": t0 + s * 100, "path": "/"}, t0 + s * 100
        )
        for s in range(start, start + n)
    ]


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
        assert await store.append_many([Append.of(sid, 1, 3, _calm(1, 3))]) == [(3, True)]
        assert await r.ttl(keys.events(sid)) > 0
        await ShardRecords(r, keys).erase([sid])
        assert not await r.exists(keys.events(sid))

        assert await store.append_many([Append.of(sid, 4, 5, _calm(4, 2))]) == [(5, True)]
        assert await r.ttl(keys.events(sid)) > 0  # -1 would be: kept forever
    finally:
        store.close()
        await r.aclose()
