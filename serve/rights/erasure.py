"""Erasure of a visitor (or of a session without one): every key, entry and live copy, one proof left.

:class:`Eraser` erases a subject: a visitor (``site``, ``vid``), with every
session of theirs, or one session that has no visitor. What goes:

* each session's keys of every session family in ``SUBJECT_FAMILIES``
  (cluster/keys.py: event log, session hash, snapshot, decision set,
  consent records, data key, and whatever family a later feature declares),
  its intervention records ``iv:{iid}`` with their ``ivlog`` entries, its
  entries in the explorer's index, its ``owner`` key;
* the visitor's keys of every visitor family (record, profile, consent
  records, data key, session list);
* the sessions held live: every gateway drops them from its sockets (error
  ``erased``) and queues a Forget to their shards behind the events already
  on their way (the withdrawal path), so no shard keeps them in memory.

What stays (docs/RIGHTS.md): ``erased:{site}:{digest}`` of the visitor
(kind, reason, ts, counts of sessions, keys and log entries; kept the
site's consent-proof period) and one refusal marker per erased session
(kind, ts; kept the sessions' retention), all named by
:func:`cluster.keys.subject_digest`, none holding a vid or a sid. While
the visitor's marker lives, hellos naming the vid, and hellos or beacons of
an erased session, are refused with ``erased``.

How: the visitor's marker is written first (so no new session can join
while the erasure runs), then the visitor's sessions are taken a page at a
time from their sorted set (no SCAN): a script erases a page atomically,
the live copies are dropped, and the same script runs again on the page to
take what work in flight wrote meanwhile (a decision being recorded, a last
append). Idempotent, and safe to run twice at once: every count is what a
script itself deleted, so two runs never count a key twice.

Limits: a gateway in another process is told on the ``rights`` channel
(pub/sub: a gateway restarting at that moment misses it, but holds no
session then); only the requesting process's own Forgets are awaited
before the second pass. Copies outside Redis (exports, training sets,
backups) are out of reach: docs/RIGHTS.md says what an operator does.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
import redis.asyncio as aioredis

from actors.core.retention import Retention
from actors.shard.index import IX_REMOVE_LUA
from actors.shard.records import FORGET_OPS, RECORD_FNS
from cluster.keys import SUBJECT_FAMILIES, Keys, subject_digest
from cluster.lua import ops_script, run_parts, script_arg
from cluster.redis_cluster import is_cluster_client

PAGE = 50  # sessions per erase script call: a call never blocks Redis long

# ARGV[1]: a msgpack map: p (Keys.script_prefixes() + owner, the owner-key prefix),
# site, fam (key prefixes "{p}{tag}:{site}:" of every session family), vs (the
# visitor's session set, '' for none), s (pairs: sid, digest of its refusal
# marker), mark (the marker key prefix "{p}erased:{site}:"), mttl (marker TTL),
# now, proof (the proof hash to add counts to, '' for none), one (1: a session without a
# visitor, counted when its hash is there). Returns {sessions taken off the visitor's set
# (or, with one, session hashes found), keys deleted, ivlog entries deleted}.
ERASE_FNS = """
local function erase_part(p, a, sid)
  local tag = '{' .. sid .. '}'
  local scoped = a.site .. ':' .. tag
  local found = redis.call('EXISTS', p.s .. scoped)
  local row = ix_unmark(p, scoped)
  local iids = redis.call('SMEMBERS', p.ivs .. scoped)
  local keys = 0
  for _, prefix in ipairs(a.fam) do
    keys = keys + redis.call('DEL', prefix .. tag)
  end
  if redis.call('GET', p.owner .. tag) == a.site then
    keys = keys + redis.call('DEL', p.owner .. tag)
  end
  return {found, row, iids, keys}
end

local function mark_session(a, digest)
  local marker = a.mark .. digest
  redis.call('HSETNX', marker, 'ts', a.now)
  redis.call('HSETNX', marker, 'kind', 'session')
  if redis.call('TTL', marker) < a.mttl then
    redis.call('EXPIRE', marker, a.mttl)
  end
end

local function add_to_proof(proof, sessions, keys, entries)
  redis.call('HINCRBY', proof, 'sessions', sessions)
  redis.call('HINCRBY', proof, 'keys', keys)
  redis.call('HINCRBY', proof, 'entries', entries)
end
"""

# The erasure's functions in one script: a session's own keys (erase_part, its slot),
# its decision records (forget_record, each its own slot), its index entries (ix_drop,
# the site's slot), its place in the visitor's set, its refusal marker and the proof.
ERASE_SESSIONS_LUA = (
    IX_REMOVE_LUA
    + RECORD_FNS
    + ERASE_FNS
    + """
local a = cmsgpack.unpack(ARGV[1])
local p = a.p
local sessions, keys, entries = 0, 0, 0
for _, s in ipairs(a.s) do
  local e = erase_part(p, a, s[1])
  if a.one == 1 then
    sessions = sessions + e[1]
  end
  ix_drop(p, e[2][1], e[2][2], e[2][3])
  local f = forget_logged(p, e[3])
  entries, keys = entries + f[1], keys + f[2] + e[4]
  if a.vs ~= '' then
    sessions = sessions + redis.call('ZREM', a.vs, s[1])
  end
  mark_session(a, s[2])
end
if a.proof ~= '' then
  add_to_proof(a.proof, sessions, keys, entries)
end
return {sessions, keys, entries}
"""
)

# Redis Cluster's steps of ERASE_SESSIONS_LUA (Eraser._erase_sessions_cluster):
# ARGV[1] as ERASE_SESSIONS_LUA's, with ops (each [kind, ...], run in order):
# 'part' (a sid), 'mark' (a digest), 'drop' (an index row), 'forget' (an iid),
# 'zrem' (visitor set, sid), 'xdel' (log ids), 'proof' (proof, sessions, keys,
# entries). Returns each op's result (msgpack).
ERASE_PARTS_LUA = ops_script(
    IX_REMOVE_LUA + RECORD_FNS + ERASE_FNS,
    {
        "part": "r = erase_part(p, a, op[2])",
        "mark": "mark_session(a, op[2])",
        "zrem": "r = redis.call('ZREM', op[2], op[3])",
        "proof": "add_to_proof(op[2], op[3], op[4], op[5])",
        **FORGET_OPS,
    },
)

# ARGV[1]: a msgpack map: keys (the visitor's keys of every visitor family, the session
# set last), proof ('' : none). Deletes them, adds the count to the proof. Returns the
# count. The keys share the visitor's slot; the proof has its own (on Redis Cluster
# it is counted apart).
ERASE_VISITOR_LUA = """
local a = cmsgpack.unpack(ARGV[1])
local n = 0
for _, key in ipairs(a.keys) do
  n = n + redis.call('DEL', key)
end
if a.proof ~= '' then
  redis.call('HINCRBY', a.proof, 'keys', n)
end
return n
"""

# (site, sids) -> awaitable: drop these sessions wherever they are live (gateways, shards).
Forgetter = Callable[[str, list[str]], Awaitable[Any]]


async def _no_forget(site: str, sids: list[str]) -> None:
    return None


class Eraser:
    """Erases visitors and sessions in one Redis; one per process that takes erasure requests.

    ``forget``: drops sessions from the live system (a gateway's
    :meth:`serve.edge.gateway.Gateway.drop_sessions`, which also tells the
    other gateways); without one the sessions are only announced on the
    ``rights`` channel.
    """

    def __init__(self, r: aioredis.Redis, keys: Keys, forget: Forgetter | None = None) -> None:
        self.r = r
        self.keys = keys
        self.forget = forget or self._announce
        self.cluster = is_cluster_client(r)
        self._sessions = r.register_script(ERASE_SESSIONS_LUA)
        self._parts = r.register_script(ERASE_PARTS_LUA)
        self._visitor = r.register_script(ERASE_VISITOR_LUA)
        p = dict(keys.script_prefixes())
        p["owner"] = f"{keys.prefix}owner:"
        self._p = p

    async def _announce(self, site: str, sids: list[str]) -> None:
        await announce(self.r, self.keys, "", site, sids)

    async def erase_visitor(
        self, site: str, vid: str, retention: Retention, reason: str = "request"
    ) -> dict[str, Any]:
        """Erase visitor ``vid`` of ``site`` and all their sessions; returns the proof's fields."""
        digest = subject_digest(site, vid)
        proof = self.keys.erased(site, digest)
        await self._mark(proof, "visitor", reason, retention.consent)
        vs = self.keys.visitor_sessions(site, vid)
        while True:
            raw = await self.r.zrange(vs, 0, PAGE - 1)
            if not raw:
                break
            sids = [s.decode() if isinstance(s, bytes) else s for s in raw]
            await self._erase_sessions(site, sids, vs, proof, retention)
            await self.forget(site, sids)
            await self._erase_sessions(site, sids, "", proof, retention)
        fams = [f for f in SUBJECT_FAMILIES if f.scope == "visitor"]
        names = [self.keys.family(f, site, vid) for f in fams]
        if not self.cluster:
            await self._visitor(args=[script_arg({"keys": names, "proof": proof})])
        else:  # the visitor's keys share a slot, the proof has its own
            n = await self._visitor(keys=names[:1], args=[script_arg({"keys": names, "proof": ""})])
            await self.r.hincrby(proof, "keys", int(n))
        return await self.proof(site, digest)

    async def erase_session(
        self, site: str, sid: str, retention: Retention, reason: str = "request"
    ) -> dict[str, Any]:
        """Erase one session that has no visitor; its proof is its refusal marker."""
        digest = subject_digest(site, sid)
        proof = self.keys.erased(site, digest)
        await self._mark(proof, "session", reason, retention.consent)
        await self._erase_sessions(site, [sid], "", proof, retention, one=True)
        await self.forget(site, [sid])
        await self._erase_sessions(site, [sid], "", proof, retention)
        return await self.proof(site, digest)

    async def proof(self, site: str, digest: str) -> dict[str, Any]:
        """The proof ``erased:{site}:{digest}`` as stored (empty when there is none)."""
        raw = await self.r.hgetall(self.keys.erased(site, digest))
        out: dict[str, Any] = {"digest": digest}
        for k, v in raw.items():
            key, val = k.decode(), v.decode()
            out[key] = int(val) if val.lstrip("-").isdigit() else val
        return out

    async def _mark(self, proof: str, kind: str, reason: str, ttl: int) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hsetnx(proof, "ts", int(time.time() * 1000))
        pipe.hset(proof, mapping={"kind": kind, "reason": reason})
        pipe.expire(proof, ttl)
        await pipe.execute()

    async def _erase_sessions(
        self,
        site: str,
        sids: Sequence[str],
        vs: str,
        proof: str,
        retention: Retention,
        one: bool = False,
    ) -> list[int]:
        fams = [
            self.keys.subject_prefix(f.tag, site) for f in SUBJECT_FAMILIES if f.scope == "session"
        ]
        arg = {
            "p": self._p,
            "site": site,
            "fam": fams,
            "vs": vs,
            "s": [[sid, subject_digest(site, sid)] for sid in sids],
            "mark": self.keys.erased(site, ""),
            "mttl": max(retention.sessions, retention.events),
            "now": int(time.time() * 1000),
            "proof": proof,
            "one": int(one),
        }
        if self.cluster:
            return await self._erase_sessions_cluster(arg)
        return [int(x) for x in await self._sessions(args=[script_arg(arg)])]

    async def _erase_sessions_cluster(self, arg: dict[str, Any]) -> list[int]:
        """``ERASE_SESSIONS_LUA``'s work on Redis Cluster: its functions, by node, in steps.

        First the refusal markers and each session's own keys (which give its
        index entry and decision ids); then the index entries, the decision
        records and the visitor's set; then the log entries; then the proof.
        Each step is atomic per node. A run that stops between steps leaves
        what a second run (the erasure runs each page twice, and is safe to
        repeat) or the keys' own expiry takes.
        """
        site, p = arg["site"], self._p
        pairs, vs, proof = arg["s"], arg["vs"], arg["proof"]
        common = {k: arg[k] for k in ("p", "site", "fam", "mark", "mttl", "now")}
        first = [(self.keys.erased(site, digest), ["mark", digest]) for _sid, digest in pairs]
        first += [(self.keys.session(site, sid), ["part", sid]) for sid, _digest in pairs]
        parts = (await run_parts(self.r, self._parts, first, **common))[len(pairs) :]
        sessions = sum(int(part[0]) for part in parts) if arg["one"] else 0
        keys = sum(int(part[3]) for part in parts)
        iids = [_text(iid) for part in parts for iid in part[2]]
        second = [(self.keys.session_index(site, "seen"), ["drop", part[1]]) for part in parts]
        second += [(p["iv"] + iid, ["forget", iid]) for iid in iids]
        if vs:
            second += [(vs, ["zrem", vs, sid]) for sid, _digest in pairs]
        done = (await run_parts(self.r, self._parts, second, **common))[len(parts) :]
        forgot, removed = done[: len(iids)], done[len(iids) :]
        keys += sum(int(f[1]) for f in forgot)
        sessions += sum(int(x) for x in removed)
        ids = [f[0] for f in forgot if f[0]]
        entries = 0
        if ids:
            (entries,) = await run_parts(self.r, self._parts, [(p["log"], ["xdel", ids])], **common)
        if proof:
            op = ["proof", proof, sessions, keys, int(entries)]
            await run_parts(self.r, self._parts, [(proof, op)], **common)
        return [sessions, keys, int(entries)]


async def announce(r: aioredis.Redis, keys: Keys, origin: str, site: str, sids: list[str]) -> None:
    """Tell every gateway to drop ``sids`` of ``site`` (``origin``: the gateway that already did)."""
    await r.publish(keys.rights, msgpack.packb({"from": origin, "site": site, "sids": sids}))


def parse_announcement(data: bytes) -> tuple[str, str, list[str]] | None:
    """(origin, site, sids) of a ``rights`` message, or None for anything else."""
    try:
        msg = msgpack.unpackb(data)
        origin, site, sids = msg["from"], msg["site"], msg["sids"]
    except (ValueError, TypeError, KeyError, msgpack.ExtraData):
        return None
    if not (isinstance(site, str) and isinstance(sids, list) and isinstance(origin, str)):
        return None
    return origin, site, [s for s in sids if isinstance(s, str)]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
