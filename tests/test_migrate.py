"""Sessions stored by an earlier release's key layout keep everything across the upgrade."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgpack
import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from actors.core.events import validate_event
from cluster.keys import Keys
from cluster.migrate import await_layout, migrate, scope_sessions_by_site
from cluster.sealing import MasterKeys
from serve.edge.store import Append, EventStore

MASTER = MasterKeys("test-master-key-" + "m" * 20)


def test_old_layout_sessions_move_to_site_scoped_keys_with_their_ttls(redis_url, prefix):
    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    events = [{"type": "click", "seq": s, "ts": 1000 + s} for s in (1, 2, 3)]
    # What the earlier release wrote for one session (and a hash it left without a site).
    r.xadd(f"{prefix}ev:old-sid-1", {"f": 1, "l": 3, "ev": msgpack.packb(events)})
    r.expire(f"{prefix}ev:old-sid-1", 1000)
    r.hset(f"{prefix}s:old-sid-1", mapping={"seq": 3, "site": "demo", "consent": "[]"})
    r.expire(f"{prefix}s:old-sid-1", 1000)
    r.set(f"{prefix}snap:old-sid-1", b"state", ex=1000)
    r.hset(f"{prefix}s:nosite-1", mapping={"seq": 1})
    try:
        assert scope_sessions_by_site(r, keys) == 1
        entries = r.xrange(keys.events("demo", "old-sid-1"))
        assert msgpack.unpackb(entries[0][1][b"ev"]) == events
        assert r.hget(keys.session("demo", "old-sid-1"), "seq") == b"3"
        assert r.get(keys.snapshot("demo", "old-sid-1")) == b"state"
        assert r.get(keys.owner("old-sid-1")) == b"demo"
        for key in ("ev", "s", "snap"):
            assert not r.exists(f"{prefix}{key}:old-sid-1")
        assert 0 < r.ttl(keys.events("demo", "old-sid-1")) <= 1000  # TTLs move with the keys
        assert r.exists(f"{prefix}s:nosite-1")  # nothing to go by: left alone
        assert scope_sessions_by_site(r, keys) == 0  # a second start finds nothing to move
    finally:
        r.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_bare_id_keys_move_to_hash_tagged_names_and_their_sealed_events_still_open(
    redis_url, prefix
):
    """A sealed session with a visitor, stored under the bare-id layout, reads back whole after
    the migration, resumes at its seq, and every key of it then shares one Cluster slot."""
    r = redis.Redis.from_url(redis_url)
    ar = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    store = EventStore(ar, keys, MASTER)
    sid, vid = "s-" + uuid.uuid4().hex[:12], "v-" + uuid.uuid4().hex[:16]
    t0 = int(time.time() * 1000) - 60_000
    evs = [
        validate_event({"type": "page_view", "seq": s, "ts": t0 + s, "path": "/p"}, t0 + s)
        for s in (1, 2, 3)
    ]
    try:
        status, seq, sealer = await store.open_session(sid, "demo", ["analytics"], True, vid)
        assert status == "ok"
        await store.append_many([Append.of("demo", sid, 1, 3, evs, sealer)])
        tagged = [k.decode() for k in r.scan_iter(match=f"{prefix}*{sid}*")]
        tagged += [k.decode() for k in r.scan_iter(match=f"{prefix}*{vid}*")]
        assert len(tagged) >= 7, tagged  # s, ev, owner, consent records, v, vs, vc, dk
        # What the bare-id release had: the same keys without the braces, and the
        # entries' subject reference ("demo:{vid}") bare too.
        bare = {k: k.replace("{", "").replace("}", "") for k in tagged}
        log = keys.events("demo", sid)
        entries = r.xrange(log)
        r.delete(log)
        for _, fields in entries:
            fields[b"k"] = fields[b"k"].replace(b"{", b"").replace(b"}", b"")
            r.xadd(log, fields)
        r.expire(log, 900)
        for old, new in bare.items():
            r.rename(old, new)
        r.delete(keys.layout)
        # Keys used together by a transaction or script, under their bare names.
        groups = {
            f"{prefix}model:live": keys.model("live"),
            f"{prefix}sites:version": keys.sites("version"),
            f"{prefix}shards:members": keys.shards("members"),
            f"{prefix}op:user:ada": keys.operator("user:ada"),
            f"{prefix}ix:demo:seg:quick": keys.session_index("demo", "seg:quick"),
        }
        for old in groups:
            r.set(old, old, ex=900)

        moved = migrate(r, keys)
        assert moved["keys"] == len(tagged) + len(groups) and moved["kept"] == 0
        assert [r.get(new) for new in groups.values()] == [old.encode() for old in groups]
        assert key_slot(keys.session_index("demo", "seen").encode()) == key_slot(
            keys.session_index("demo", "seg:quick").encode()
        )
        assert not any(r.exists(k) for k in bare.values())
        assert 0 < r.ttl(log) <= 900  # TTLs move with the keys
        assert await store.read_events("demo", sid) == evs  # old references open
        assert store.unreadable == 0
        assert (await store.open_session(sid, "demo", ["analytics"], True, vid))[:2] == ("ok", 3)
        assert len({key_slot(k.encode()) for k in tagged if sid in k}) == 1
        assert len({key_slot(k.encode()) for k in tagged if vid in k}) == 1
        assert migrate(r, keys) == {"sessions": 0, "keys": 0, "kept": 0}  # layout is recorded
    finally:
        store.close()
        await ar.aclose()
        r.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_gateway_worker_waits_for_the_migration_before_it_reads_or_writes(
    redis_url, prefix
):
    """A process that does not migrate waits, while Redis is in an earlier layout, until the
    control process has migrated it."""
    r = redis.Redis.from_url(redis_url)
    ar = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    try:
        waiting = asyncio.ensure_future(await_layout(ar, keys, poll_s=0.05))
        done, _ = await asyncio.wait([waiting], timeout=0.3)
        assert not done  # no layout marker: still waiting
        migrate(r, keys)
        await asyncio.wait_for(waiting, timeout=5)
    finally:
        await ar.aclose()
        r.close()
