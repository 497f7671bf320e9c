"""Sessions stored by a release before site-scoped keys keep everything across the upgrade."""

from __future__ import annotations

import msgpack
import redis

from cluster.keys import Keys
from cluster.migrate import scope_sessions_by_site


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
