"""The event log's append script against a real Redis: order, deduplication, expiry."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from cluster.keys import Keys
from serve.edge.store import Append, EventStore

pytestmark = pytest.mark.asyncio(loop_scope="session")


def events(first: int, last: int) -> list[dict]:
    return [{"type": "click", "seq": s, "ts": 1000 + s} for s in range(first, last + 1)]


async def test_runs_append_in_order_once_and_every_key_expires(redis_url, prefix):
    r = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    store = EventStore(r, keys)
    try:
        # A session whose first run was refused entirely (it consumes 1..2, logs nothing),
        # then runs that do log, across a TTL refresh boundary (64).
        runs = [
            Append.of("demo", "sa", 1, 2, []),
            Append.of("demo", "sa", 3, 40, events(3, 40)),
            Append.of("demo", "sb", 1, 5, events(1, 5)),
            Append.of("demo", "sa", 41, 70, events(41, 70)),
        ]
        assert await store.append_many(runs) == [(2, True), (40, True), (5, True), (70, True)]
        # A resend of what is durable, and a gap, are both refused with the durable seq.
        again = await store.append_many(
            [
                Append.of("demo", "sa", 41, 70, events(41, 70)),
                Append.of("demo", "sb", 7, 8, events(7, 8)),
            ]
        )
        assert again == [(70, False), (5, False)]
        assert [e["seq"] for e in await store.read_events("demo", "sa")] == list(range(3, 71))
        assert [e["seq"] for e in await store.read_events("demo", "sb")] == [1, 2, 3, 4, 5]
        for sid in ("sa", "sb"):
            assert await r.ttl(keys.events("demo", sid)) > 0, f"the log of {sid} never expires"
            assert await r.ttl(keys.session("demo", sid)) > 0
        # Within one 64-block the TTLs are not refreshed (that was 40 % of the script's calls),
        # but a crossing refreshes them.
        await r.expire(keys.session("demo", "sa"), 100)
        await r.expire(keys.events("demo", "sa"), 100)
        await store.append_many([Append.of("demo", "sa", 71, 72, events(71, 72))])
        assert await r.ttl(keys.session("demo", "sa")) <= 100
        await store.append_many([Append.of("demo", "sa", 73, 130, events(73, 130))])
        assert await r.ttl(keys.session("demo", "sa")) > 100
        assert await r.ttl(keys.events("demo", "sa")) > 100
    finally:
        store.close()
        await r.aclose()


async def test_a_round_short_of_replicas_is_unconfirmed_but_logged_and_a_resend_is_not_stored_twice(
    redis_url, prefix
):
    from serve.edge.store import Unconfirmed

    r = aioredis.Redis.from_url(redis_url)
    replicas = (await r.info("replication"))["connected_slaves"]
    store = EventStore(r, Keys(prefix), wait=(replicas + 1, 20))
    try:
        run = Append.of("demo", "sw", 1, 4, events(1, 4))
        with pytest.raises(Unconfirmed) as caught:
            await store.append_many([run])
        assert caught.value.results == [(4, True)]  # what Redis did, though unconfirmed
        with pytest.raises(Unconfirmed) as again:
            await store.append_many([run])  # the client's resend
        assert again.value.results == [(4, False)]
        assert [e["seq"] for e in await store.read_events("demo", "sw")] == [1, 2, 3, 4]
    finally:
        store.close()
        await r.aclose()


async def test_a_run_that_needs_its_session_never_brings_an_erased_one_back(redis_url, prefix):
    """A beacon's run (``existing``) that reaches the store after an erasure writes nothing."""
    from actors.core.retention import Retention
    from serve.rights.erasure import Eraser

    r = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    store = EventStore(r, keys)
    try:
        live = Append.of("demo", "s-live-1", 1, 2, events(1, 2))
        assert await store.append_many([live]) == [(2, True)]
        more = Append.of("demo", "s-live-1", 3, 3, events(3, 3))._replace(existing=True)
        assert await store.append_many([more]) == [(3, True)]  # a live session: as any run
        await Eraser(r, keys).erase_session("demo", "s-live-1", Retention())
        late = Append.of("demo", "s-live-1", 1, 2, events(1, 2))._replace(existing=True)
        assert await store.append_many([late]) == [(-1, False)]
        assert (
            await r.exists(keys.events("demo", "s-live-1"), keys.session("demo", "s-live-1")) == 0
        )
        assert await store.erased("demo", "s-live-1")
    finally:
        store.close()
        await r.aclose()
