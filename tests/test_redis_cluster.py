"""The gateway's event log on a real Redis Cluster (three primaries, cluster/redis_cluster_local.py).

Sessions and visitors hash to slots on different nodes, so these tests cross
nodes the way production traffic does: an append round spanning every node,
hellos whose visitor lives on another node than the session, sealed logs
whose data key is elsewhere. Where behaviour must not depend on the Redis,
the same scenario runs on the standalone Redis and the results are compared.
"""

from __future__ import annotations

import uuid
from asyncio import gather as asyncio_gather

import pytest
from redis.crc import key_slot

from cluster.keys import Keys, subject_digest
from cluster.redis_client import RedisConfigError, redis_client
from cluster.sealing import MasterKeys
from serve.edge.store import Append, EventStore

asyncio = pytest.mark.asyncio(loop_scope="session")

MASTER = MasterKeys("test-master-key-" + "c" * 20)


def events(first: int, last: int) -> list[dict]:
    return [{"type": "click", "seq": s, "ts": 1000 + s} for s in range(first, last + 1)]


def test_a_cluster_url_gives_a_cluster_client_and_a_bad_one_a_clear_error(redis_cluster_url):
    r = redis_client(redis_cluster_url)
    try:
        r.set("ll-test:{x}", 1)
        owners = {r.get_node_from_key(f"k{{{i}}}").name for i in range(50)}
        assert len(owners) == 3, "the keys of 50 tags all landed on fewer than three nodes"
    finally:
        r.close()
    for bad, why in [
        ("redis+cluster://127.0.0.1:1/3", "one database"),
        ("redis+cluster://127.0.0.1:x", "host:port"),
        ("redis+cluster://h:1?ssl_ca_certs=/nowhere", "rediss://"),
    ]:
        with pytest.raises(RedisConfigError, match=why):
            redis_client(bad)


def test_a_cluster_that_does_not_answer_or_a_node_named_as_one_redis_is_refused_in_words(
    redis_cluster_url,
):
    from cluster.redis_server import refusal

    assert refusal(redis_cluster_url) is None
    one = redis_cluster_url.removeprefix("redis+cluster://").split(",")[0]
    assert "redis+cluster://" in (refusal(f"redis://{one}/0") or "")
    assert "no Redis Cluster answers" in (refusal("redis+cluster://127.0.0.1:1", timeout=0.5) or "")


def _spread(r, n: int, site: str = "demo") -> list[str]:
    """``n`` sids, with at least one on each primary."""
    keys = Keys("x:")
    sids = [uuid.uuid4().hex for _ in range(n)]
    nodes = {
        r.nodes_manager.get_node_from_slot(key_slot(keys.events(site, s).encode())).name
        for s in sids
    }
    assert len(nodes) == 3
    return sids


@asyncio
async def test_one_append_round_spans_every_node_and_a_resend_is_not_stored_twice(
    redis_cluster_url,
):
    r = redis_client(redis_cluster_url, aio=True)
    await r.initialize()
    keys = Keys(f"t{uuid.uuid4().hex[:6]}:")
    store = EventStore(r, keys, master=MASTER)
    try:
        sids = _spread(r, 24)
        vids = [uuid.uuid4().hex for _ in sids]
        sealers = {}
        for sid, vid in zip(sids, vids, strict=True):
            status, seq, sealer = await store.open_session(sid, "demo", ["analytics"], True, vid)
            assert (status, seq) == ("ok", 0) and sealer is not None
            sealers[sid] = sealer
        runs = [Append.of("demo", s, 1, 10, events(1, 10), sealers[s]) for s in sids]
        runs += [Append.of("demo", s, 11, 70, events(11, 70), sealers[s]) for s in sids[:5]]
        # The data keys of every visitor expire soon; a 64-crossing run must refresh them,
        # wherever the visitor's node is.
        for vid in vids:
            await r.expire(keys.data_key("demo", vid), 100)
        results = await store.append_many(runs)
        assert results == [(10, True)] * 24 + [(70, True)] * 5
        await store.refreshes_done()  # they go off the ack's path
        for vid in vids:
            assert await r.ttl(keys.data_key("demo", vid)) > 100
        # The same round again: nothing appended twice, each run told the durable seq.
        again = await store.append_many(runs)
        assert again == [(70, False)] * 5 + [(10, False)] * 19 + [(70, False)] * 5
        for i, sid in enumerate(sids):
            want = list(range(1, 71 if i < 5 else 11))
            assert [e["seq"] for e in await store.read_events("demo", sid)] == want
        assert store.unreadable == 0
        # A run of an erased (or never opened) session's hash is not written.
        stray = Append.of("demo", "never-opened", 1, 2, events(1, 2))._replace(existing=True)
        assert await store.append_many([stray]) == [(-1, False)]
    finally:
        store.close()
        await r.aclose()


def _apart(r, n: int) -> list[str]:
    """``n`` ids whose subject keys all live on different nodes of cluster client ``r``."""
    out: list[str] = []
    nodes: set[str] = set()
    while len(out) < n:
        i = uuid.uuid4().hex
        node = r.nodes_manager.get_node_from_slot(key_slot(f"{{{i}}}".encode())).name
        if node not in nodes:
            out.append(i)
            nodes.add(node)
    return out


@asyncio
async def test_a_burst_of_hellos_past_the_pool_size_waits_for_connections_instead_of_failing(
    redis_cluster_url,
):
    # The gateway's client (max_connections=64); 600 hellos at once put far more than 64
    # commands in flight on each node, as 2,000 visitors arriving together do.
    r = redis_client(redis_cluster_url, aio=True, max_connections=64)
    store = EventStore(r, Keys(f"b{uuid.uuid4().hex[:6]}:"))
    try:
        await r.initialize()
        # Every node holds its clients for half a second, as a busy Redis does: the hellos
        # pile up with their commands in flight instead of finishing one by one.
        for node in r.get_primaries():
            await r.execute_command("CLIENT", "PAUSE", 500, "ALL", target_nodes=node)
        sids = [uuid.uuid4().hex for _ in range(600)]
        got = await asyncio_gather(
            *(store.claim(s, "demo", ["analytics"], True, uuid.uuid4().hex) for s in sids)
        )
        assert got == [("ok", 0)] * len(sids)
    finally:
        store.close()
        await r.aclose()


async def _scenario(store: EventStore, r, keys: Keys, sid: str, other: str, vid: str) -> dict:
    """Hellos and consent changes across two subjects; what the store holds after."""
    out: dict = {}
    # A session without a visitor records its own consent changes...
    out["hello"] = await store.claim(sid, "demo", ["analytics"], True)
    await store.record_consent(sid, "demo", ["analytics", "personalisation"], "banner")
    # ...which move to the visitor when a hello first names one.
    out["bind"] = await store.claim(sid, "demo", ["analytics", "personalisation"], True, vid)
    out["other_visitor"] = await store.claim(sid, "demo", ["analytics"], True, "someone-else")
    out["other_site"] = await store.claim(sid, "elsewhere", ["analytics"], True)
    out["needs_token"] = await store.claim(sid, "demo", ["analytics"], False)
    await store.record_consent(sid, "demo", ["analytics"], "change")
    out["second"] = await store.claim(other, "demo", ["analytics"], True, vid)
    out["session_records_left"] = await r.exists(keys.consent_records("demo", sid))
    records = await r.xrange(keys.visitor_consent("demo", vid))
    out["records"] = [
        {k: v for k, v in f.items() if k not in (b"ts", b"sid")}
        | {b"sid?": f[b"sid"] == sid.encode()}
        for _, f in records
    ]
    visitor = await r.hgetall(keys.visitor("demo", vid))
    out["visitor"] = {k: v for k, v in visitor.items() if k not in (b"created", b"last")}
    out["sessions"] = [
        m == sid.encode() or m == other.encode()
        for m in await r.zrange(keys.visitor_sessions("demo", vid), 0, -1)
    ]
    out["session"] = {
        k: v for k, v in (await r.hgetall(keys.session("demo", sid))).items() if k != b"created"
    }
    out["session"][b"vid"] = out["session"][b"vid"] == vid.encode()
    # An erased visitor's new session is refused and nothing of it is written.
    await r.set(keys.erased("demo", subject_digest("demo", vid)), 1, ex=60)
    fresh = uuid.uuid4().hex
    out["erased"] = await store.claim(fresh, "demo", ["analytics"], True, vid)
    out["erased_left"] = await r.exists(keys.session("demo", fresh), keys.owner(fresh))
    return out


@asyncio
async def test_hellos_across_nodes_leave_what_one_script_leaves_on_a_standalone_redis(
    redis_cluster_url, redis_url
):
    results = []
    c = redis_client(redis_cluster_url, aio=True)
    await c.initialize()
    ids = _apart(c, 3)  # the session, the visitor and the visitor's second session: 3 nodes
    await c.aclose()
    for url in (redis_cluster_url, redis_url):
        r = redis_client(url, aio=True)
        keys = Keys(f"h{uuid.uuid4().hex[:6]}:")
        store = EventStore(r, keys)
        try:
            results.append(await _scenario(store, r, keys, *ids))
        finally:
            store.close()
            await r.aclose()
    on_cluster, standalone = results
    assert on_cluster["hello"] == ("ok", 0)
    assert on_cluster["other_visitor"][0] == "other_visitor"
    assert on_cluster["other_site"] == ("other_site", 0)
    assert on_cluster["erased"] == ("erased", 0) and on_cluster["erased_left"] == 0
    assert on_cluster["session_records_left"] == 0
    assert len(on_cluster["records"]) == 3, on_cluster["records"]
    assert on_cluster["sessions"] == [True, True]
    assert on_cluster == standalone
