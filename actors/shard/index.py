"""The session explorer's index: which sessions a site had, when, with help or not, in which segment.

The console finds sessions by site and time, by id prefix, by segment and
by "got an intervention" without scanning Redis: it reads sorted sets kept
here (``{p}ix:{site}:seen|ids|iv|seg:{name}``, cluster/keys.py), every one
scored by the session's last-seen time (ms) except ``ids`` (all 0, for
lookups by prefix).

Who writes it, and why there: the shards, on their snapshot tick. A session
whose events changed it is already marked for its next snapshot (within
``SNAPSHOT_EVERY_S``, a tenth of the changed sessions per tick), so the
index costs nothing per event: under the batch lock a tick reads each taken
session's last event time (a dict lookup and an attribute), and one script
call per tick, off the lock on the shard's I/O loop, writes them all. The
gateway's append script sees every event too, but it would pay on every
append round of the hot path and knows neither decisions nor segments.
Decisions index their session at once, in the script that records them
(actors/shard/records.py), so "got an intervention" never waits for a tick;
a session's segment is the one of its latest decision (segments are looked
up only when a decision is made, actors/core/segments.py), kept in its
session hash (``seg``, and ``ix_seg``: the set it is indexed under).

Consent: a session is indexed only while its session hash records analytics
consent; the erase script (a withdrawal) removes its entries, and a tick
that was on its way when the erase ran finds the consent gone and writes
nothing.

Limits: last-seen is the session's latest event time, clamped to the
shard's clock, as of its last snapshot tick (so up to ~5 s behind); time
searches are on last-seen, not on the span of the session. Entries older
than their site's sessions retention (actors/core/sites.py) are trimmed every
``TRIM_EVERY_S`` by each shard, at most ``TRIM_MAX`` per site and call; an
entry can outlive its event log by the log's TTL refresh step (the append
script refreshes it every 64 events), and the explorer then shows an empty
timeline. The scripts name their keys themselves; on Redis Cluster a write goes
in two steps (the session nodes' half, then the site nodes'), not atomically:
a withdrawal between them can leave an entry that the next erase or trim removes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import msgpack
import redis.asyncio as aioredis

from actors.core.host import SessionHost
from actors.core.retention import Retention
from cluster.config import Settings
from cluster.keys import Keys
from cluster.lua import by_node, script_arg
from cluster.redis_cluster import is_cluster_client
from cluster.sealing import MasterKeys, Opener, master_keys

TRIM_EVERY_S = 60.0
TRIM_MAX = 10_000  # entries trimmed per site and call: a call never blocks Redis long

# Lua: index one session (``p``: Keys.script_prefixes()) as seen at ``ts``; shared with the
# decision-recording script. Reads the session hash: no analytics consent (withdrawn, or
# the hash expired), no entry. Scores only move forward (GT); ``ids`` is written once (NX).
# A session whose latest decision moved it to another segment leaves the old set.
# Two halves, so that on Redis Cluster each runs on its own node: ix_plan reads (and
# marks) the session hash, in the session's slot; ix_put writes the site's sets, in the
# site's slot (its plan: 1 if the session got a decision, its segment, the segment it
# was indexed under, '' for none).
IX_ADD_LUA = """
local function ix_plan(p, site, sid)
  local h = p.s .. site .. ':{' .. sid .. '}'
  local st = redis.call('HMGET', h, 'consent', 'iv_count', 'seg', 'ix_seg')
  if not st[1] or not string.find(st[1], '"analytics"', 1, true) then
    return nil
  end
  local seg, old = st[3] or '', st[4] or ''
  if seg ~= '' and old ~= seg then
    redis.call('HSET', h, 'ix_seg', seg)
  end
  return {(st[2] and tonumber(st[2]) > 0) and 1 or 0, seg, old}
end

local function ix_put(p, site, sid, ts, plan)
  local ix = p.ix .. '{' .. site .. '}:'
  redis.call('ZADD', ix .. 'seen', 'GT', ts, sid)
  redis.call('ZADD', ix .. 'ids', 'NX', 0, sid)
  if plan[1] == 1 then
    redis.call('ZADD', ix .. 'iv', 'GT', ts, sid)
  end
  local seg, old = plan[2], plan[3]
  if seg ~= '' then
    if old ~= seg then
      if old ~= '' then
        redis.call('ZREM', ix .. 'seg:' .. old, sid)
      end
      redis.call('SADD', ix .. 'segs', seg)
    end
    redis.call('ZADD', ix .. 'seg:' .. seg, 'GT', ts, sid)
  end
end

local function ix_add(p, site, sid, ts)
  local plan = ix_plan(p, site, sid)
  if not plan then
    return 0
  end
  ix_put(p, site, sid, ts, plan)
  return 1
end
"""

# Lua: remove one session (a scoped id, Keys.session_id) from the index; used by the erase
# script. In halves as IX_ADD_LUA: ix_unmark in the session's slot returns what
# ix_drop (the site's slot) needs: site, sid, and the segment set it is in ('' none).
IX_REMOVE_LUA = """
local function ix_unmark(p, scoped)
  local site, sid = string.match(scoped, '^(.*):{([^:]*)}$')
  local h = p.s .. scoped
  local seg = redis.call('HGET', h, 'ix_seg') or ''
  redis.call('HDEL', h, 'seg', 'ix_seg')
  return {site, sid, seg}
end

local function ix_drop(p, site, sid, seg)
  local ix = p.ix .. '{' .. site .. '}:'
  if seg ~= '' then
    redis.call('ZREM', ix .. 'seg:' .. seg, sid)
  end
  redis.call('ZREM', ix .. 'seen', sid)
  redis.call('ZREM', ix .. 'ids', sid)
  redis.call('ZREM', ix .. 'iv', sid)
end

local function ix_remove(p, scoped)
  local u = ix_unmark(p, scoped)
  ix_drop(p, u[1], u[2], u[3])
end
"""

# ARGV[1]: a msgpack map: p (prefixes), s ([site, sid, ts] per session). Returns how many
# were indexed.
INDEX_LUA = (
    IX_ADD_LUA
    + """
local a = cmsgpack.unpack(ARGV[1])
local n = 0
for _, e in ipairs(a.s) do
  n = n + ix_add(a.p, e[1], e[2], e[3])
end
return n
"""
)

# Redis Cluster's two steps of INDEX_LUA: IX_PLAN_LUA on each session node returns
# (msgpack) [site, sid, ts, plan...] per session to index; IX_PUT_LUA on each site's
# node ({p, s: those rows}) writes them.
IX_PLAN_LUA = (
    IX_ADD_LUA
    + """
local a = cmsgpack.unpack(ARGV[1])
local out = {}
for _, e in ipairs(a.s) do
  local plan = ix_plan(a.p, e[1], e[2])
  if plan then
    out[#out + 1] = {e[1], e[2], e[3], plan[1], plan[2], plan[3]}
  end
end
return cmsgpack.pack(out)
"""
)
IX_PUT_LUA = (
    IX_ADD_LUA
    + """
local a = cmsgpack.unpack(ARGV[1])
for _, e in ipairs(a.s) do
  ix_put(a.p, e[1], e[2], e[3], {e[4], e[5], e[6]})
end
return #a.s
"""
)

# ARGV[1]: a msgpack map: p (prefixes), max, sites ([site, cut] pairs: entries last
# seen before cut (ms) go: each site's sessions retention). Returns how many sessions left the index.
TRIM_LUA = """
local a = cmsgpack.unpack(ARGV[1])
local n = 0
for _, sc in ipairs(a.sites) do
  local site, cut = sc[1], sc[2]
  local ix = a.p.ix .. '{' .. site .. '}:'
  local old = redis.call('ZRANGE', ix .. 'seen', '-inf', cut, 'BYSCORE', 'LIMIT', 0, a.max)
  for i = 1, #old, 500 do
    local chunk = {unpack(old, i, math.min(i + 499, #old))}
    redis.call('ZREM', ix .. 'ids', unpack(chunk))
    redis.call('ZREM', ix .. 'seen', unpack(chunk))
  end
  redis.call('ZREMRANGEBYSCORE', ix .. 'iv', '-inf', cut)
  for _, seg in ipairs(redis.call('SMEMBERS', ix .. 'segs')) do
    redis.call('ZREMRANGEBYSCORE', ix .. 'seg:' .. seg, '-inf', cut)
  end
  n = n + #old
end
return n
"""

# (site, sid, last-seen ms) of one session to index.
Entry = tuple[str, str, int]


def seen_entries(
    host: SessionHost, states: Sequence[tuple[str, str, bytes]], now_ms: int
) -> list[Entry]:
    """The index entries of the sessions a snapshot tick took (call with the batch lock held).

    ``states`` are :meth:`SessionHost.take_dirty`'s (sid, site, packed);
    sessions the tick retired (no longer held) were indexed when they last
    changed and are skipped. Last-seen is the last event's time, never
    later than ``now_ms`` (a client clock ahead of ours must not pin a
    session to the top).
    """
    out: list[Entry] = []
    active, dormant = host.active, host.dormant
    for sid, site, _packed in states:
        session = active.get(sid)
        if session is not None:
            ts = session.last_ts
        else:
            d = dormant.get(sid)
            if d is None:
                continue
            ts = d[1]
        out.append((site, sid, ts if ts < now_ms else now_ms))
    return out


class SessionIndex:
    """Writes one shard's index entries and trims the index by age; one per shard (I/O loop)."""

    def __init__(
        self,
        r: aioredis.Redis,
        keys: Keys,
        sites: Iterable[str] = (),
        retention: Callable[[str], Retention] | None = None,
    ) -> None:
        self.retention = retention or (lambda site: Retention())
        self._r = r
        self._keys = keys
        self._cluster = is_cluster_client(r)
        self._write = r.register_script(INDEX_LUA)
        self._plan = r.register_script(IX_PLAN_LUA)
        self._put = r.register_script(IX_PUT_LUA)
        self._trim = r.register_script(TRIM_LUA)
        self._p = keys.script_prefixes()
        self.sites = set(sites)  # trimmed: the configured ones and every one seen here
        self._last_trim = time.monotonic()
        self.indexed = 0
        self.trimmed = 0

    def seen(self, host: SessionHost, states: Sequence[tuple[str, str, bytes]]) -> list[Entry]:
        """:func:`seen_entries` at the current time (with the batch lock held)."""
        return seen_entries(host, states, int(time.time() * 1000))

    async def write(self, entries: Sequence[Entry]) -> None:
        """Index ``entries`` in one script call, and trim by age when due (raises redis errors)."""
        if entries:
            for site, _sid, _ts in entries:
                self.sites.add(site)
            self.indexed += await self._index(list(entries))
        if time.monotonic() - self._last_trim >= TRIM_EVERY_S:
            self._last_trim = time.monotonic()
            await self.trim()

    async def _index(self, entries: list[Entry]) -> int:
        """Index ``entries``: one script call, or on Redis Cluster the session nodes'
        halves then the site nodes' (IX_PLAN_LUA, IX_PUT_LUA); how many were indexed."""
        p, keys = self._p, self._keys
        if not self._cluster:
            return int(await self._write(args=[script_arg({"p": p, "s": entries})]))
        plans = await by_node(
            self._r,
            self._plan,
            entries,
            lambda e: keys.session(e[0], e[1]),
            lambda group: script_arg({"p": p, "s": group}),
        )
        rows = [row for reply in plans for row in msgpack.unpackb(reply)]
        await by_node(
            self._r,
            self._put,
            rows,
            lambda row: keys.session_index(row[0], "seen"),
            lambda group: script_arg({"p": p, "s": group}),
        )
        return len(rows)

    async def trim(self, cut_ms: int | None = None) -> int:
        """Remove the entries of sessions last seen before ``cut_ms`` (default: each site's
        sessions retention ago); returns how many left."""
        now = int(time.time() * 1000)
        cuts = [
            [site, cut_ms if cut_ms is not None else now - self.retention(site).sessions * 1000]
            for site in sorted(self.sites)
        ]
        p, keys = self._p, self._keys
        replies = await by_node(
            self._r,
            self._trim,
            cuts,
            lambda cut: keys.session_index(cut[0], "seen"),
            lambda group: script_arg({"p": p, "max": TRIM_MAX, "sites": group}),
        )
        n = sum(int(x) for x in replies)
        self.trimmed += n
        return n


async def reindex(
    r: aioredis.Redis, keys: Keys, batch: int = 500, master: MasterKeys | None = None
) -> dict[str, int]:
    """Index the sessions Redis already holds: for tools, never a page view (it SCANs).

    For sessions that were stored before the index existed (an upgrade) or
    written straight into Redis (a seeded benchmark, loadtests/seed_console.py):
    each session hash (``{p}s:{site}:{sid}``) with analytics consent is
    indexed at its last logged event's time (else its ``created``), and one
    with intervention records gets ``iv_count`` and the ``seg`` of its latest
    decision where its hash lacks them, as the record script would have set.
    Returns counts: sessions seen, indexed, skipped without consent.
    ``master``: the event log's master keys (default: this process's
    ``LIFELINE_DATA_KEY``); a last entry that does not open counts as none.
    """
    if master is None:
        master = master_keys(Settings())
    index = SessionIndex(r, keys)
    start = len(keys.script_prefixes()["s"])  # where "{site}:{sid}" begins in a session key
    counts = {"sessions": 0, "indexed": 0, "no_consent": 0}
    found: list[tuple[str, str]] = []

    async def flush() -> None:
        now_ms = int(time.time() * 1000)
        pipe = r.pipeline(transaction=False)
        for site, sid in found:
            pipe.hmget(keys.session(site, sid), "consent", "created", "iv_count", "seg")
            pipe.xrevrange(keys.events(site, sid), count=1)
            pipe.smembers(keys.interventions_of(site, sid))
        replies = await pipe.execute()
        opener = Opener(keys, master)  # the last entries may be sealed (cluster/sealing.py)
        await opener.aload(r, (last[0][1].get(b"k") for last in replies[1::3] if last))
        fix = r.pipeline(transaction=False)
        iv_reads: list[tuple[str, str, list[str]]] = []
        entries: list[Entry] = []
        for i, (site, sid) in enumerate(found):
            (consent, created, iv_count, seg), last, iids = replies[3 * i : 3 * i + 3]
            if not consent or b'"analytics"' not in consent:
                counts["no_consent"] += 1
                continue
            payload = opener.open_fields(last[0][1]) if last else None
            ts = int(msgpack.unpackb(payload)[-1]["ts"]) if payload else int(created or 0)
            entries.append((site, sid, min(ts, now_ms)))
            if iids and (iv_count is None or seg is None):
                iv_reads.append((site, sid, sorted(m.decode() for m in iids)))
                if iv_count is None:
                    fix.hset(keys.session(site, sid), "iv_count", len(iids))
        if iv_reads:
            pipe = r.pipeline(transaction=False)
            for _site, _sid, iids in iv_reads:
                for iid in iids:
                    pipe.hmget(keys.intervention(iid), "seq", "segment_name")
            got = iter(await pipe.execute())
            for site, sid, iids in iv_reads:
                recs = [next(got) for _ in iids]
                named = [(int(q or 0), n.decode()) for q, n in recs if n]
                if named:
                    fix.hset(keys.session(site, sid), "seg", max(named)[1])
        await fix.execute()
        await index.write(entries)
        counts["indexed"] += len(entries)
        found.clear()

    async for key in r.scan_iter(match=keys.session("*", "*"), count=1000):
        site, sid = keys.split_session_id(key.decode()[start:])
        counts["sessions"] += 1
        found.append((site, sid))
        if len(found) >= batch:
            await flush()
    if found:
        await flush()
    return counts
