"""Per-site retention: parsed from the sites file, applied as TTLs where each kind of key is written.

The stack test gives a site a retention of seconds (a run-time site rule,
as an operator would set from the console), drives a visitor's session
that gets help through it, checks every key's TTL against its kind's
retention, then sees the keys expire.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from actors.core.retention import DAY_S, Retention
from actors.core.sites import SiteConfigError, parse_sites
from cluster import site_rules
from cluster.keys import CONSENT_TTL_S, PROFILE_TTL_S, SESSION_TTL_S
from serve.dev.pyclient import LifelineClient
from tests.test_spine import ORIGIN, journey, send_all


def site(table: dict) -> dict:
    return {"sites": {"x": {"origins": ["http://127.0.0.1:*"], **table}}}


def test_retention_defaults_are_the_keys_ttls_and_days_convert_to_seconds() -> None:
    default = parse_sites(site({}))["x"]
    assert default.retention == Retention(
        SESSION_TTL_S, SESSION_TTL_S, SESSION_TTL_S, PROFILE_TTL_S, CONSENT_TTL_S, SESSION_TTL_S
    )
    assert default.consent_policy == ""
    got = parse_sites(site({"retention": {"events": 2, "consent": 0.5}, "consent_policy": "v3"}))
    keep = got["x"].retention
    assert (keep.events, keep.consent, keep.sessions) == (2 * DAY_S, DAY_S // 2, SESSION_TTL_S)
    assert got["x"].consent_policy == "v3"
    assert keep.days()["events"] == 2


@pytest.mark.parametrize(
    "table",
    [
        {"retention": {"event": 3}},
        {"retention": {"events": 0}},
        {"retention": {"events": -1}},
        {"retention": {"events": True}},
        {"retention": {"events": "7"}},
        {"retention": {"events": 10**6}},
        {"retention": 7},
        {"consent_policy": "v" * 65},
        {"consent_policy": 3},
    ],
)
def test_bad_retention_or_policy_is_refused_with_where(table: dict) -> None:
    with pytest.raises(SiteConfigError, match=r"\[sites\.x\]"):
        parse_sites(site(table))


@pytest.mark.asyncio(loop_scope="session")
async def test_short_retention_sets_every_ttl_and_the_keys_expire(any_stack) -> None:
    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    key = f"ret-{uuid.uuid4().hex[:8]}"
    seconds = {"events": 3, "sessions": 4, "decisions": 3, "profiles": 4, "consent": 5}
    table = {
        "origins": ["http://127.0.0.1:*"],
        "policy": {"holdout": 0.0},
        "consent_policy": "2026-12",
        "retention": {k: s / DAY_S for k, s in seconds.items()},
    }
    version = await site_rules.store_override(r, keys, key, table)
    try:
        await stack.gateway.site_rules.wait_version(version)
        await asyncio.gather(*(sh.wait_sites.remote(version) for sh in stack.shards))
        vid, sid = f"v-{uuid.uuid4().hex[:16]}", f"t-ret-{uuid.uuid4().hex[:12]}"
        client = LifelineClient(stack.ws_url, key, sid, ORIGIN, vid=vid)
        assert (await client.connect())["t"] == "welcome"
        events = journey("struggling", sid)
        await send_all(client, events)
        iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
        await client.wait_acked(len(events))
        await stack.gateway.wait_scored(sid, len(events))
        await stack.shard_for(sid).flush.remote()
        await client.close()
        expected = {
            keys.events(key, sid): seconds["events"],
            keys.session(key, sid): seconds["sessions"],
            keys.snapshot(key, sid): seconds["sessions"],
            keys.owner(sid): seconds["sessions"],
            # Longer (serve/edge/hello.py visitor_ttl): an erasure must find every session in the list.
            keys.visitor(key, vid): 2 * seconds["sessions"],
            keys.visitor_sessions(key, vid): 2 * seconds["sessions"],
            keys.intervention(iv["iid"]): seconds["decisions"],
            keys.interventions_of(key, sid): seconds["decisions"],
            keys.visitor_consent(key, vid): seconds["consent"],
        }
        for k, limit in expected.items():
            ttl = await r.ttl(k)
            assert 0 < ttl <= limit, (k, ttl, limit)
        records = await r.xrange(keys.visitor_consent(key, vid))
        assert records[0][1][b"policy"] == b"2026-12"
        # Expiry is Redis's own: wait for it (bounded) rather than sleep a fixed time.
        deadline = time.monotonic() + max(expected.values()) + 5
        while await r.exists(*expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        assert await r.exists(*expected) == 0
    finally:
        await site_rules.remove_override(r, keys, key)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_shared_intervention_log_is_trimmed_by_each_sites_decisions_retention(
    store_url: str, prefix: str
) -> None:
    from actors.shard.records import ShardRecords
    from cluster.keys import Keys
    from cluster.redis_client import redis_client

    keys = Keys(prefix)
    r = redis_client(store_url, aio=True)
    keep = {"short": Retention(decisions=60), "long": Retention(decisions=3600)}
    records = ShardRecords(r, keys, lambda site: keep.get(site, Retention()))
    now = int(time.time() * 1000)
    entries = [("short", 30), ("short", 120), ("long", 120), ("long", 7200)]
    entries += [("other", 120), ("other", 8 * 86400)]  # (site, seconds ago)
    for i, (site, age) in enumerate(sorted(entries, key=lambda e: -e[1])):  # ids only grow
        entry = {"site": site, "iid": f"{site}-{age}"}
        await r.xadd(keys.intervention_log, entry, id=f"{now - age * 1000}-{i}")
    # Older than its site's retention: short's 120 s (> 60), long's 7200 s (> 3600),
    # other's 8 days (> the default week). Younger ones stay.
    assert await records.trim_log(["short", "long"], now) == 3
    left = {f[b"iid"].decode() for _id, f in await r.xrange(keys.intervention_log)}
    assert left == {"short-30", "long-120", "other-120"}
    await r.aclose()
