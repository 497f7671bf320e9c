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
from cluster.keys import SUBJECT_FAMILIES, Keys, subject_digest
from cluster.redis_server import script_arg

PAGE = 50  # sessions per erase script call: a call never blocks Redis long

# ARGV[1]: a msgpack map: p (Keys.script_prefixes() + owner, the owner-key prefix),
# site, fam (key prefixes "{p}{tag}:{site}:" of every session family), vs (the
# visitor's session set, '' for none), s (pairs: sid, digest of its refusal
# marker), mark (the marker key prefix "{p}erased:{site}:"), mttl (marker TTL),
# now, proof (the proof hash to add counts to, '' for none), one (1: a session without a
# visitor, counted when its hash is there). Returns {sessions taken off the visitor's set
# (or, with one, session hashes found), keys deleted, ivlog entries deleted}.
ERASE_SESSIONS_LUA = (
    IX_REMOVE_LUA
    + """
local a = cmsgpack.unpack(ARGV[1])
local p = a.p
local sessions, keys, entries = 0, 0, 0
for _, s in ipairs(a.s) do
  local sid = s[1]
  local tag = '{' .. sid .. '}'
  local scoped = a.site .. ':' .. tag
  if a.one == 1 then
    sessions = sessions + redis.call('EXISTS', p.s .. scoped)
  end
  ix_remove(p, scoped)
  local set = p.ivs .. scoped
  for _, iid in ipairs(redis.call('SMEMBERS', set)) do
    local key = p.iv .. iid
    local id = redis.call('HGET', key, 'log_id')
    if id then
      entries = entries + redis.call('XDEL', p.log, id)
    end
    keys = keys + redis.call('DEL', key)
  end
  for _, prefix in ipairs(a.fam) do
    keys = keys + redis.call('DEL', prefix .. tag)
  end
  if redis.call('GET', p.owner .. tag) == a.site then
    keys = keys + redis.call('DEL', p.owner .. tag)
  end
  if a.vs ~= '' then
    sessions = sessions + redis.call('ZREM', a.vs, sid)
  end
  local marker = a.mark .. s[2]
  redis.call('HSETNX', marker, 'ts', a.now)
  redis.call('HSETNX', marker, 'kind', 'session')
  if redis.call('TTL', marker) < a.mttl then
    redis.call('EXPIRE', marker, a.mttl)
  end
end
if a.proof ~= '' then
  redis.call('HINCRBY', a.proof, 'sessions', sessions)
  redis.call('HINCRBY', a.proof, 'keys', keys)
  redis.call('HINCRBY', a.proof, 'entries', entries)
end
return {sessions, keys, entries}
"""
)

# ARGV[1]: a msgpack map: keys (the visitor's keys of every visitor family, the session
# set last), proof. Deletes them, adds the count to the proof. Returns the count.
ERASE_VISITOR_LUA = """
local a = cmsgpack.unpack(ARGV[1])
local n = 0
for _, key in ipairs(a.keys) do
  n = n + redis.call('DEL', key)
end
redis.call('HINCRBY', a.proof, 'keys', n)
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
        self._sessions = r.register_script(ERASE_SESSIONS_LUA)
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
        await self._visitor(
            args=[
                script_arg({"keys": [self.keys.family(f, site, vid) for f in fams], "proof": proof})
            ]
        )
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
        return [int(x) for x in await self._sessions(args=[script_arg(arg)])]


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
