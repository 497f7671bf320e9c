"""A shard's writes to Redis: intervention records, session snapshots, and their erasure.

Each decision leaves three things in Redis: its hash (``{p}iv:{iid}``, with
the id of its intervention-log entry in ``log_id``), an entry in the
intervention log (``{p}ivlog``), and its iid in the session's set
(``{p}ivs:{site}:{sid}``), so that everything a session left can be found and
deleted without scanning the log. Conversions (a ``purchase``, or a custom
event the site names as a goal) are written onto the records of the
session's decisions they came after (``converted``, the event's ts;
``converted_seq``; ``goal``; the first conversion only): the outcome report
joins decisions with them (training/outcomes.py) without the event logs.
The same script puts the session in the explorer's index
(actors/shard/index.py) with its segment, and the erase script takes it out.
One script writes all of these atomically,
one writes a tick's session snapshots, and one erases a session's records
with its event log and snapshot.

The scripts name their keys themselves from the prefixes they are given. On
a standalone Redis (or Sentinel) each write is one atomic script; on Redis
Cluster the same Lua functions run as a few steps, each on the node of its
keys (``PARTS_LUA``; :meth:`ShardRecords._record_cluster` says what a crash
between steps can leave).

Limits: a conversion in a later batch than the decision finds the
decision's record only if that was written first. The shard starts its
writes in batch order on one I/O loop, and a decision's write starts before
its reply leaves, so the visitor's next event comes later; but two writes
in flight on two connections are not ordered by Redis, so a conversion
within milliseconds of a decision, just as a connection is being opened,
could be missed (it is then not counted, never counted twice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from actors.core.policy import Decision
from actors.core.retention import Retention
from actors.shard.index import IX_ADD_LUA, IX_REMOVE_LUA
from cluster.keys import Keys
from cluster.lua import by_node, ops_script, run_parts, script_arg
from cluster.redis_cluster import is_cluster_client

INTERVENTION_LOG_MAXLEN = 100_000
DEFAULT_RETENTION = Retention()

# ARGV[1]: a msgpack map: p (prefixes), maxlen, d (decisions: session id
# (Keys.session_id), iid,
# flat field list, running count, last ts, site, sid, segment name or '', TTL: the
# site's decisions retention), o (outcomes: iid, outcome, ts, sid,
# site of the session that sent it), c (conversions: session id, goal, seq, ts).
# A conversion marks each of the session's decisions triggered before it
# (by seq) that has none yet; a session without decisions has an empty set,
# so its conversions write nothing. An outcome for a record that no longer
# exists is dropped, not written as a new hash without an expiry; one for a
# record of another session (or another site, where the record names its
# site: records written before it did name only their session) is refused.
# Each decision also indexes its session for the explorer at once (with its segment,
# kept in the session hash): actors/shard/index.py.
# Returns {decisions written, outcomes refused}.
# The parts of a decision's record, one Lua function per slot it writes, so that on
# Redis Cluster each part runs on the node of its key (ShardRecords._record_cluster):
# log_decision the intervention log, write_record the decision's hash (by iid),
# session_record its session's set and hash, record_outcome and convert a record.
RECORD_FNS = """
local function log_decision(p, d, maxlen)
  local fields = d[3]
  local entry = {p.log, 'MAXLEN', '~', maxlen, '*', 'iid', d[2]}
  for i = 1, #fields do entry[#entry + 1] = fields[i] end
  return redis.call('XADD', unpack(entry))
end

local function write_record(p, d, id)
  local key = p.iv .. d[2]
  redis.call('HSET', key, unpack(d[3]))
  redis.call('HSET', key, 'log_id', id)
  redis.call('EXPIRE', key, d[9])
end

local function session_record(p, d)
  local sid = d[1]
  redis.call('SADD', p.ivs .. sid, d[2])
  redis.call('EXPIRE', p.ivs .. sid, d[9])
  -- The running count, so a session activated elsewhere keeps its cap and cooldown.
  redis.call('HSET', p.s .. sid, 'iv_count', d[4], 'iv_last', d[5])
  if d[8] ~= '' then
    redis.call('HSET', p.s .. sid, 'seg', d[8])
  end
end

local function record_outcome(p, o)
  local key = p.iv .. o[1]
  local owner = redis.call('HMGET', key, 'sid', 'site')
  if owner[1] then
    if owner[1] == o[4] and (not owner[2] or owner[2] == o[5]) then
      redis.call('HSET', key, o[2], o[3], 'outcome', o[2])
    else
      return 1
    end
  end
  return 0
end

local function forget_record(p, iid)
  local key = p.iv .. iid
  local id = redis.call('HGET', key, 'log_id') or ''
  return {id, redis.call('DEL', key)}
end

-- Forget the records of ``iids`` and delete their log entries: {entries, keys} deleted.
local function forget_logged(p, iids)
  local entries, keys = 0, 0
  for _, iid in ipairs(iids) do
    local f = forget_record(p, iid)
    if f[1] ~= '' then
      entries = entries + redis.call('XDEL', p.log, f[1])
    end
    keys = keys + f[2]
  end
  return {entries, keys}
end

local function convert(p, c, iid)
  local key = p.iv .. iid
  local f = redis.call('HMGET', key, 'seq', 'converted')
  if f[1] and not f[2] and tonumber(f[1]) < c[3] then
    redis.call('HSET', key, 'converted', c[4], 'converted_seq', c[3], 'goal', c[2])
  end
end
"""

RECORD_LUA = (
    IX_ADD_LUA
    + RECORD_FNS
    + """
local a = cmsgpack.unpack(ARGV[1])
local p = a.p
for _, d in ipairs(a.d) do
  write_record(p, d, log_decision(p, d, a.maxlen))
  session_record(p, d)
  ix_add(p, d[6], d[7], d[5])
end
local refused = 0
for _, o in ipairs(a.o) do
  refused = refused + record_outcome(p, o)
end
for _, c in ipairs(a.c) do
  for _, iid in ipairs(redis.call('SMEMBERS', p.ivs .. c[1])) do
    convert(p, c, iid)
  end
end
return {#a.d, refused}
"""
)

# The session's own part of a withdrawal (a scoped session id): its index row
# (ix_unmark), its decision ids, and its log, snapshot and data key gone; the
# decision set stays until its records are gone (ERASE_LUA, ShardRecords.erase).
WITHDRAW_FN = """
local function withdraw(p, scoped)
  local row = ix_unmark(p, scoped)
  local iids = redis.call('SMEMBERS', p.ivs .. scoped)
  redis.call('DEL', p.ev .. scoped, p.snap .. scoped, p.dk .. scoped)
  redis.call('HDEL', p.s .. scoped, 'iv_count', 'iv_last', 'log_ttl')
  return {row, iids}
end
"""

# Redis Cluster's steps of RECORD_LUA and ERASE_LUA: ARGV[1] a msgpack map: p
# (prefixes), maxlen, ops (each [kind, ...], run in order). Kinds: 'log' (a
# decision: its log entry; returns the entry id), 'rec' (a decision and its
# log id), 'ses' (a decision's session part), 'plan' and 'put' (the index's
# halves, actors/shard/index.py), 'out' (an outcome: returns 1 if refused),
# 'ivs' (a session's decision ids), 'conv' (a conversion and one iid), and for
# erasure 'withdraw' (the session part: returns the index row and its iids),
# 'drop' (an index row), 'forget' (a record: returns its log id and 1 if it was there),
# 'xdel' (log ids: returns how many went) and 'delset' (a session's set).
# Returns the results, one per op, as msgpack.
# Op kinds of the intervention records and index shared with the rights erasure
# (serve/rights/erasure.py): an index row dropped, a record forgotten (returns its
# log id, '' none, and 1 if it was there), log entries deleted (returns how many).
FORGET_OPS = {
    "drop": "ix_drop(p, op[2][1], op[2][2], op[2][3])",
    "forget": "r = forget_record(p, op[2])",
    "xdel": "r = redis.call('XDEL', p.log, unpack(op[2]))",
}
PARTS_LUA = ops_script(
    IX_ADD_LUA + IX_REMOVE_LUA + RECORD_FNS + WITHDRAW_FN,
    {
        "log": "r = log_decision(p, op[2], a.maxlen)",
        "rec": "write_record(p, op[2], op[3])",
        "ses": "session_record(p, op[2])",
        "plan": "local plan = ix_plan(p, op[2], op[3])\n"
        "    r = plan and {op[2], op[3], op[4], plan[1], plan[2], plan[3]} or 0",
        "put": "local e = op[2]\n    ix_put(p, e[1], e[2], e[3], {e[4], e[5], e[6]})",
        "out": "r = record_outcome(p, op[2])",
        "ivs": "r = redis.call('SMEMBERS', p.ivs .. op[2])",
        "conv": "convert(p, op[2], op[3])",
        "withdraw": "r = withdraw(p, op[2])",
        **FORGET_OPS,
        "delset": "redis.call('DEL', p.ivs .. op[2])",
    },
)

# ARGV[1]: a msgpack map: p (prefixes), sids (session ids, Keys.session_id).
# Deletes each session's event log,
# snapshot, intervention records and log entries, its entries in the explorer's
# index (actors/shard/index.py), and its running intervention count; the session hash keeps the consent (the record of the withdrawal).
# 'log_ttl' goes with the log it described: the append script sets the TTL of a
# stream only when that flag is absent, so a log the same id starts again after
# the erase would otherwise never expire.
ERASE_LUA = (
    IX_REMOVE_LUA
    + RECORD_FNS
    + WITHDRAW_FN
    + """
local a = cmsgpack.unpack(ARGV[1])
local p = a.p
local n = 0
for _, sid in ipairs(a.sids) do
  local w = withdraw(p, sid)
  ix_drop(p, w[1][1], w[1][2], w[1][3])
  n = n + forget_logged(p, w[2])[1]
  redis.call('DEL', p.ivs .. sid)
end
return n
"""
)


# ARGV[1]: a msgpack map: p (the snapshot key prefix), s (session id, packed
# state, TTL: the site's sessions retention). One call instead of a pipeline of SETs: redis-py spent ~35 us of the
# shard's CPU on each pipelined command, the script ~4.
SNAPSHOT_LUA = """
local a = cmsgpack.unpack(ARGV[1])
for _, s in ipairs(a.s) do
  redis.call('SET', a.p .. s[1], s[2], 'EX', s[3])
end
return #a.s
"""


# ARGV[1]: a msgpack map: log (the intervention log's key), cuts (site -> ms: its
# entries logged before it are past the site's decisions retention), default (the cut
# of a site not in cuts), upto (the latest cut: no entry after it is looked at), max.
# Deletes the entries past their site's retention among the oldest ``max``; returns
# how many. Limit: entries of a site with a longer retention that are older than
# another's can hold up the other's for as long as ``max`` of them stand in front.
TRIM_LOG_LUA = """
local a = cmsgpack.unpack(ARGV[1])
local n = 0
for _, e in ipairs(redis.call('XRANGE', a.log, '-', a.upto, 'COUNT', a.max)) do
  local f, site = e[2], ''
  for i = 1, #f, 2 do
    if f[i] == 'site' then
      site = f[i + 1]
      break
    end
  end
  local ms = tonumber(string.match(e[1], '^(%d+)-'))
  if ms < (a.cuts[site] or a.default) then
    n = n + redis.call('XDEL', a.log, e[1])
  end
end
return n
"""
TRIM_LOG_MAX = 5000  # entries looked at per trim: a call never blocks Redis long


class ShardRecords:
    """Writes decisions, outcomes and snapshots, and erases a session's records; one per shard."""

    def __init__(
        self, r: aioredis.Redis, keys: Keys, retention: Callable[[str], Retention] | None = None
    ) -> None:
        # A site's retention (actors/core/sites.py): the TTLs of what is written for it.
        self.retention = retention or (lambda site: DEFAULT_RETENTION)
        self._r = r
        self._keys = keys
        self._cluster = is_cluster_client(r)
        self._record = r.register_script(RECORD_LUA)
        self._parts = r.register_script(PARTS_LUA)
        self._snapshots = r.register_script(SNAPSHOT_LUA)
        self._erase = r.register_script(ERASE_LUA)
        self._trim_log = r.register_script(TRIM_LOG_LUA)
        self._log = keys.intervention_log
        self._p = keys.script_prefixes()
        self._scoped = keys.session_id

    async def record(
        self,
        decisions: Sequence[Decision],
        fields: Sequence[dict[str, Any]],
        iv_counts: dict[str, int],
        outcomes: Sequence[tuple[str, str, int, str, str]],
        conversions: Sequence[tuple[str, str, str, int, int]] = (),
    ) -> int:
        """Write ``decisions`` (with their ``fields``, in order), intervention ``outcomes`` and ``conversions``.

        ``outcomes`` are (event type, iid, ts, sid, site) of
        intervention_shown/accepted/dismissed, with the session and site that
        sent each. An outcome reaches its record only if that record belongs
        to the same session (and site, when ``fields`` gave the record a
        ``site``). ``conversions`` are (sid, site, goal, seq, ts) of each
        purchase or goal event; they mark the session's decisions triggered
        before them, those of this call included. Returns how many outcomes
        were refused for naming another session's record.
        """
        keep = self.retention
        arg = {
            "p": self._p,
            "maxlen": INTERVENTION_LOG_MAXLEN,
            "d": [
                [
                    self._scoped(f.get("site", ""), d.sid),
                    d.iid,
                    [str(x) for kv in f.items() for x in kv],
                    iv_counts.get(d.sid, 1),
                    d.ts,
                    f.get("site", ""),
                    d.sid,
                    str(f.get("segment_name", "")),
                    keep(f.get("site", "")).decisions,
                ]
                for d, f in zip(decisions, fields, strict=True)
            ],
            "o": [
                [iid, etype.removeprefix("intervention_"), ts, sid, site]
                for etype, iid, ts, sid, site in outcomes
            ],
            "c": [
                [self._scoped(site, sid), goal, seq, ts] for sid, site, goal, seq, ts in conversions
            ],
        }
        if self._cluster:
            return await self._record_cluster(arg)
        _written, refused = await self._record(args=[script_arg(arg)])
        return int(refused)

    async def _record_cluster(self, arg: dict[str, Any]) -> int:
        """``RECORD_LUA``'s work on Redis Cluster, as PARTS_LUA calls on the nodes of its keys.

        Three steps: the log entries (one node); then each decision's record,
        its session's part and index plan, the outcomes and the sessions'
        decision ids for conversions; then the conversions and the index.
        Each step is atomic per node, not the whole: a shard that dies between
        steps can leave a log entry without its record (the log's retention
        trims it) or a record without its index entry.
        """
        p, keys = self._p, self._keys
        decisions, outcomes, conversions = arg["d"], arg["o"], arg["c"]
        ids = await self._run_parts([(p["log"], ["log", d]) for d in decisions])
        ops: list[tuple[str, list[Any]]] = []
        for d, log_id in zip(decisions, ids, strict=True):
            ops.append((p["iv"] + d[1], ["rec", d, log_id]))
            ops.append((p["s"] + d[0], ["ses", d]))
            ops.append((p["s"] + d[0], ["plan", d[5], d[6], d[4]]))
        ops += [(p["iv"] + o[0], ["out", o]) for o in outcomes]
        ops += [(p["ivs"] + c[0], ["ivs", c[0]]) for c in conversions]
        got = await self._run_parts(ops)
        n = 3 * len(decisions)
        plans = [row for row in got[2:n:3] if row]
        refused = sum(int(x) for x in got[n : n + len(outcomes)])
        last: list[tuple[str, list[Any]]] = [
            (keys.session_index(row[0], "seen"), ["put", row]) for row in plans
        ]
        for c, iids in zip(conversions, got[n + len(outcomes) :], strict=True):
            last += [(p["iv"] + _text(iid), ["conv", c, _text(iid)]) for iid in iids]
        await self._run_parts(last)
        return refused

    async def _run_parts(self, ops: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Run (key, op) ``ops`` of PARTS_LUA, one call per node, in order; their results."""
        return await run_parts(self._r, self._parts, ops, p=self._p, maxlen=INTERVENTION_LOG_MAXLEN)

    async def snapshots(self, states: Sequence[tuple[str, str, bytes]]) -> None:
        """Write (sid, site, packed state) snapshots, each expiring with the session's other keys."""
        scoped, keep, p = self._scoped, self.retention, self._p["snap"]
        rows = [[scoped(site, sid), state, keep(site).sessions] for sid, site, state in states]
        await by_node(
            self._r,
            self._snapshots,
            rows,
            lambda s: p + s[0],
            lambda g: script_arg({"p": p, "s": g}),
        )

    async def trim_log(self, sites: Sequence[str], now_ms: int) -> int:
        """Delete intervention-log entries past their site's decisions retention; how many went.

        The log is shared by every site (capped at ``INTERVENTION_LOG_MAXLEN``);
        each entry names its site, whose retention says when it goes.
        """
        cuts = {site: now_ms - self.retention(site).decisions * 1000 for site in sites}
        default = now_ms - DEFAULT_RETENTION.decisions * 1000
        arg = {
            "log": self._log,
            "cuts": cuts,
            "default": default,
            "upto": max([default, *cuts.values()]),
            "max": TRIM_LOG_MAX,
        }
        # KEYS names the log, so that on Redis Cluster the call goes to its node.
        return int(await self._trim_log(keys=[self._log], args=[script_arg(arg)]))

    async def erase(self, sessions: Sequence[tuple[str, str]]) -> int:
        """Delete all that the (site, sid) ``sessions`` left but their consent records.

        Returns how many intervention-log entries were removed.
        """
        arg = {"p": self._p, "sids": [self._scoped(site, sid) for site, sid in sessions]}
        if not self._cluster:
            return int(await self._erase(args=[script_arg(arg)]))
        # On Redis Cluster: the sessions' parts (each returns its index row and decision
        # ids), then the records and index entries, then the log entries and the sets.
        p = self._p
        scoped = arg["sids"]
        got = await self._run_parts([(p["s"] + sid, ["withdraw", sid]) for sid in scoped])
        ops: list[tuple[str, list[Any]]] = []
        for row, _iids in got:
            ops.append((self._keys.session_index(_text(row[0]), "seen"), ["drop", row]))
        iids = [_text(iid) for _row, members in got for iid in members]
        ops += [(p["iv"] + iid, ["forget", iid]) for iid in iids]
        ids = [f[0] for f in (await self._run_parts(ops))[len(got) :] if f[0]]
        last: list[tuple[str, list[Any]]] = [(p["ivs"] + sid, ["delset", sid]) for sid in scoped]
        if ids:
            last.append((p["log"], ["xdel", ids]))
        done = await self._run_parts(last)
        return int(done[-1]) if ids else 0


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
