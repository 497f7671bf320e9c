"""Shard hardening (issue 18), each defect tested at the depth where it lived.

* 17: an erased session's log expires again once the same id resumes (real Redis).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from actors.events import validate_event
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
