"""A session's hello and consent changes in Redis: the scripts and the calls that run them.

A hello touches two subjects' keys: the session's (its hash, owner, consent
records, erasure marker: all tagged with its sid, cluster/keys.py) and,
when it names a visitor, the visitor's (record, sessions list, consent
records, data key: tagged with the vid). The Lua below is written as two
functions, one per side, so the same code runs two ways:

- one script call (``SESSION_LUA``) when every key lives on one node: a
  standalone Redis or Sentinel, atomically;
- on Redis Cluster, where the two sides' slots are on different nodes, a
  short sequence (:meth:`SessionScripts.run`): the erasure markers read,
  the session's side (which checks and writes everything of the session,
  and says whether a visitor side must follow), the visitor's side on its
  node, then the session's moved consent records deleted once the visitor
  holds them.

Limits of the sequence on Cluster: the steps are atomic one by one, not
together. The order keeps every refusal before any write of the side it
guards, and consent records are copied before they are deleted (a crash
between leaves a copy, never a loss). A hello racing, within the same
milliseconds, an erasure of its own visitor can leave that session's record
(no events) until it expires: the refusal markers are read before the
scripts run, since they live on other slots.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from actors.core.retention import Retention
from actors.core.sites import Site
from cluster.keys import CONSENT_RECORDS_MAX, Keys, subject_digest
from cluster.redis_cluster import is_cluster_client

# For a site the store has not been told of (tests, a site just removed).
DEFAULT_RETENTION = Retention()
VISITOR_SLACK_S = 86400


def visitor_ttl(keep: Retention) -> int:
    """The TTL of a visitor's record and sessions list: the sessions retention, and again up to a day.

    A session's own keys are refreshed by its appends, so they can outlive its
    last hello (the list's last refresh); an erasure must still find the
    session in the list, without a SCAN.
    """
    return keep.sessions + min(keep.sessions, VISITOR_SLACK_S)


# One subject's data key, made once: two gateways racing for a fresh subject both
# offer a random candidate, the first SET NX wins, and both read the winner back.
# Each use refreshes its TTL (cluster/keys.py DATA_KEY_TTL_S).
DATA_KEY_FN = """
local function data_key(name, candidate, ttl)
  redis.call('SET', name, candidate, 'NX', 'EX', ttl)
  redis.call('EXPIRE', name, ttl)
  return redis.call('GET', name)
end
"""

# ARGV, shared by every script here: 1 session hash, 2 the session's
# consent-record stream, 3 site, 4 consent (JSON), 5 now (ms), 6 sessions TTL,
# 7 consent-proof TTL, 8 records kept, 9 mode ('hello' or 'change'), 10 whether
# the hello carried a (valid) token, 11 the sid's owner key, 12 the hello's
# visitor id ('' for none), 13 that visitor's sessions key, 14 sid, 15 the
# session's erasure marker, 16 the visitor's ('' for none), 17 the visitor
# record's key prefix and 18 the visitor consent records' ("{p}v:{site}:",
# "{p}vc:{site}:"; the script adds the tagged vid, "{vid}"), 19 the record's
# source (via: hello, banner, api, change), 20 the site's consent policy
# version, 21 the TTL of the visitor's record and sessions list
# (:func:`visitor_ttl`), 22 the data-key prefix ('' when the gateway does not
# seal: then a welcomed hello returns no data key), 23 a candidate data key
# (DATA_KEY_FN), 24 its TTL. The visitor side's own script adds 25 the
# session's visitor, 26 the session's creation time, 27 its consent before
# this call ('' none), 28 the consent records moved to the visitor (msgpack,
# '' none), 29 '1' if this hello bound the session to the visitor.
# A sid belongs to the site whose hello created its session: the owner key is
# set once, here, and a hello from any other site is refused. A session belongs
# to one visitor the same way: its hash's vid is set by the first hello that
# names one, and a hello naming another is refused. A hello for an erased
# session or visitor (serve/rights/erasure.py) is refused.
# Consent records: a session with a visitor records to the visitor's stream,
# when the visitor's consent changes (the record's consent field); one without
# records to its own stream, when the session's changes. When a session first
# gets its visitor, its own records move to the visitor's (the migration of the
# per-session records: sessions without a visitor keep theirs).
SIDES_FN = """
local function session_side(markers)
  local h, cl, site, consent, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  local owner = redis.call('GET', ARGV[11])
  if owner and owner ~= site then
    return {'other_site', 0}
  end
  local mode, vid = ARGV[9], ARGV[12]
  if markers and mode == 'hello' and (redis.call('EXISTS', ARGV[15]) == 1
      or (ARGV[16] ~= '' and redis.call('EXISTS', ARGV[16]) == 1)) then
    return {'erased', 0}
  end
  local st = redis.call('HMGET', h, 'seq', 'consent', 'vid', 'created')
  local seq, stored, had, created = st[1], st[2], st[3], st[4]
  local moved, linked = {}, false
  if mode == 'hello' then
    if seq and ARGV[10] == '0' then
      return {'needs_token', tonumber(seq)}
    end
    if vid ~= '' and had and had ~= vid then
      return {'other_visitor', tonumber(seq or 0)}
    end
    if not seq then
      seq = '0'
      created = now
      redis.call('HSET', h, 'seq', 0, 'created', now, 'site', site)
    end
    if vid ~= '' and not had then
      redis.call('HSET', h, 'vid', vid)
      moved = redis.call('XRANGE', cl, '-', '+')
      linked = true
      had = vid
    end
    redis.call('SET', ARGV[11], site, 'EX', ARGV[6])
    redis.call('EXPIRE', h, ARGV[6])
  elseif not seq then
    return {'unknown', 0}
  end
  if stored ~= consent then
    redis.call('HSET', h, 'consent', consent)
    if not had then
      redis.call('XADD', cl, 'MAXLEN', '~', ARGV[8], '*', 'consent', consent, 'ts', now,
        'site', site, 'via', ARGV[19], 'policy', ARGV[20])
      redis.call('EXPIRE', cl, ARGV[7])
    end
  end
  return {'ok', tonumber(seq), had or '', created or now, stored or '', moved, linked}
end

local function visitor_side(had, created, stored, moved, linked)
  local site, consent, now = ARGV[3], ARGV[4], ARGV[5]
  local v, vc = ARGV[17] .. '{' .. had .. '}', ARGV[18] .. '{' .. had .. '}'
  if ARGV[9] == 'hello' and ARGV[12] ~= '' then
    if linked then
      for _, e in ipairs(moved) do
        local f = e[2]
        f[#f + 1] = 'sid'
        f[#f + 1] = ARGV[14]
        redis.call('XADD', vc, 'MAXLEN', '~', ARGV[8], '*', unpack(f))
        redis.call('EXPIRE', vc, ARGV[7])
      end
      if stored ~= '' then  -- what the moved records last said is the visitor's consent, if it had none
        redis.call('HSETNX', v, 'consent', stored)
      end
    end
    redis.call('ZADD', ARGV[13], 'NX', created, ARGV[14])
    redis.call('EXPIRE', ARGV[13], ARGV[21])
    redis.call('HSETNX', v, 'created', now)
    redis.call('HSET', v, 'last', now)
    redis.call('EXPIRE', v, ARGV[21])
  end
  if redis.call('HGET', v, 'consent') ~= consent then
    redis.call('HSET', v, 'consent', consent, 'policy', ARGV[20])
    redis.call('EXPIRE', v, ARGV[21])
    redis.call('XADD', vc, 'MAXLEN', '~', ARGV[8], '*', 'consent', consent, 'ts', now,
      'site', site, 'via', ARGV[19], 'policy', ARGV[20], 'sid', ARGV[14])
    redis.call('EXPIRE', vc, ARGV[7])
  end
end

local function welcome(seq, subject)
  if ARGV[9] == 'hello' and ARGV[22] ~= '' then
    local ref = ARGV[3] .. ':{' .. subject .. '}'
    return {'ok', seq, ref, data_key(ARGV[22] .. ref, ARGV[23], ARGV[24])}
  end
  return {'ok', seq}
end
"""

# Both sides in one call, when all their keys are on one node.
SESSION_LUA = (
    DATA_KEY_FN
    + SIDES_FN
    + """
local s = session_side(true)
if s[1] ~= 'ok' then
  return s
end
if s[3] ~= '' then
  visitor_side(s[3], s[4], s[5], s[6], s[7])
  if s[7] then
    redis.call('DEL', ARGV[2])
  end
  return welcome(s[2], s[3])
end
return welcome(s[2], ARGV[14])
"""
)

# The session's side alone (Redis Cluster): the markers were read before it.
# Returns the refusal or welcome as SESSION_LUA does when the session has no
# visitor, else {'visitor', seq, vid, created, consent before, moved records
# (msgpack), '1' if bound now}: the visitor side's arguments 25 to 29.
SESSION_SIDE_LUA = (
    DATA_KEY_FN
    + SIDES_FN
    + """
local s = session_side(false)
if s[1] ~= 'ok' or s[3] == '' then
  return s[1] == 'ok' and welcome(s[2], ARGV[14]) or s
end
return {'visitor', s[2], s[3], s[4], s[5], #s[6] > 0 and cmsgpack.pack(s[6]) or '',
  s[7] and '1' or '0'}
"""
)

# The visitor's side alone, on its node (Redis Cluster). Returns the welcome's
# data key part (the session side's seq is the one that counts).
VISITOR_SIDE_LUA = (
    DATA_KEY_FN
    + SIDES_FN
    + """
local moved = ARGV[28] ~= '' and cmsgpack.unpack(ARGV[28]) or {}
visitor_side(ARGV[25], ARGV[26], ARGV[27], moved, ARGV[29] == '1')
return welcome(0, ARGV[25])
"""
)

# The data key of a subject (a beacon's append): KEYS[1] the key, ARGV candidate, TTL.
DATA_KEY_LUA = DATA_KEY_FN + "return data_key(KEYS[1], ARGV[1], ARGV[2])"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class SessionScripts:
    """Runs the hello and consent-change scripts on whatever Redis ``r`` is."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self.cluster = is_cluster_client(r)
        self._one = r.register_script(SESSION_LUA)
        self._session = r.register_script(SESSION_SIDE_LUA)
        self._visitor = r.register_script(VISITOR_SIDE_LUA)
        self._data_key = r.register_script(DATA_KEY_LUA)

    def args(
        self,
        sid: str,
        site: str,
        known: Site | None,
        consent: list[str],
        mode: str,
        token: bool,
        vid: str | None,
        via: str,
        sealing: tuple[str, bytes, int] | None = None,
    ) -> list[Any]:
        """The scripts' ARGV 1 to 24 (their comment lists them); ``sealing``: (data-key
        prefix, candidate, TTL) when the gateway seals."""
        keep = known.retention if known is not None else DEFAULT_RETENTION
        keys = self.keys
        return [
            keys.session(site, sid),
            keys.consent_records(site, sid),
            site,
            json.dumps(consent),
            int(time.time() * 1000),
            keep.sessions,
            keep.consent,
            CONSENT_RECORDS_MAX,
            mode,
            int(token),
            keys.owner(sid),
            vid or "",
            keys.visitor_sessions(site, vid) if vid else "",
            sid,
            keys.erased(site, subject_digest(site, sid)),
            keys.erased(site, subject_digest(site, vid)) if vid else "",
            keys.subject_prefix("v", site),
            keys.subject_prefix("vc", site),
            via,
            known.consent_policy if known is not None else "",
            visitor_ttl(keep),
            *(sealing or ("", "", 0)),
        ]

    async def run(self, args: list[Any]) -> list[Any]:
        """Run a hello or change with ``args`` (from :meth:`args`); the reply as
        ``SESSION_LUA`` gives it: [status, seq] or ['ok', seq, ref, wrapped data key]."""
        session_key = args[0]
        if not self.cluster:
            return await self._one(keys=[session_key], args=args)
        if args[8] == "hello":
            markers = [m for m in (args[14], args[15]) if m]
            if await self.r.exists(*markers):  # on Cluster, split by slot (redis-py)
                return [b"erased", 0]
        reply = await self._session(keys=[session_key], args=args)
        if _text(reply[0]) != "visitor":
            return reply
        seq, vid, created, stored, moved, linked = reply[1:]
        visitor = self.keys.visitor(args[2], _text(vid))
        tail = await self._visitor(
            keys=[visitor], args=[*args, vid, created, stored, moved, linked]
        )
        if _text(linked) == "1":
            await self.r.delete(args[1])  # the records are the visitor's now
        return [b"ok", seq, *tail[2:]]

    async def data_key(self, site: str, sid: str, candidate: bytes, ttl: int) -> tuple[Any, Any]:
        """The subject reference and wrapped data key of an existing session's subject (its
        visitor's, else its own), made from ``candidate`` if missing."""
        vid = await self.r.hget(self.keys.session(site, sid), "vid")
        subject = _text(vid) if vid is not None else sid
        ref = f"{site}:{{{subject}}}"
        wrapped = await self._data_key(
            keys=[self.keys.script_prefixes()["dk"] + ref], args=[candidate, ttl]
        )
        return ref, wrapped
