"""The durable event log in Redis, as the gateway writes it.

Each session has a stream (``{p}ev:{site}:{sid}``) and a hash (``{p}s:{site}:{sid}``)
whose ``seq`` is the highest sequence number made durable. One Lua script
appends a run of events and advances ``seq`` atomically, and only if the run
starts right after ``seq``: two connections racing for one session, or a
retry after a lost reply, can never append the same events twice or leave a
hole. Appends from every connection that arrive together go to Redis in one
script call (one round trip).

Durability is Redis's: run it with AOF (``appendfsync everysec`` or
``always``) where losing the last second of acknowledged events matters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

import msgpack
import redis.asyncio as aioredis

from cluster.keys import CONSENT_RECORDS_MAX, CONSENT_TTL_S, SESSION_TTL_S, Keys
from cluster.redis_server import script_arg
from serve.edge.resp import ScriptCaller

READ_PAGE_ENTRIES = 128  # stream entries per read of read_events(limit=...)

# One call appends the runs of many sessions (one append round of the gateway).
# ARGV[1] is one msgpack array: ttl, the event-log key prefix, the session-hash
# key prefix, then for each run: sid, first consumed seq, last consumed seq,
# payload ('' when every event of the run was refused), first and last appended
# seq. One packed argument instead of seven per run: redis-py built and encoded
# every argument in Python, ~10 % of a gateway's CPU (py-spy, 2026-11-21).
# Returns, for each run, the durable seq and 1 if the run was appended, else 0
# (it did not start right after the durable seq). Runs of one session are
# applied in order. The script names its keys itself, so it needs a standalone
# Redis (on Redis Cluster the session keys would need a shared hash tag).
# TTLs are refreshed when a session's seq crosses a multiple of 64 (the TTL is
# a week), and the stream's the first time it gets an entry (field 'log_ttl'): two
# EXPIREs per run were ~40 % of the script's calls.
APPEND_LUA = """
local arg = cmsgpack.unpack(ARGV[1])
local ttl, ev_prefix, s_prefix = arg[1], arg[2], arg[3]
local out = {}
for i = 4, #arg, 6 do
  local sid = arg[i]
  local stream, hash = ev_prefix .. sid, s_prefix .. sid
  local state = redis.call('HMGET', hash, 'seq', 'log_ttl')
  local cur = tonumber(state[1] or '0')
  local first, last = arg[i + 1], arg[i + 2]
  if first ~= cur + 1 then
    out[#out + 1] = cur
    out[#out + 1] = 0
  else
    local refresh = math.floor(last / 64) ~= math.floor(cur / 64) or cur == 0
    if arg[i + 3] ~= '' then
      redis.call('XADD', stream, '*', 'f', arg[i + 4], 'l', arg[i + 5], 'ev', arg[i + 3])
      if refresh or not state[2] then
        redis.call('EXPIRE', stream, ttl)
        redis.call('HSET', hash, 'seq', last, 'log_ttl', 1)
      else
        redis.call('HSET', hash, 'seq', last)
      end
    else
      redis.call('HSET', hash, 'seq', last)
    end
    if refresh then
      redis.call('EXPIRE', hash, ttl)
    end
    out[#out + 1] = last
    out[#out + 1] = 1
  end
end
return out
"""


# A session's hello or consent change. ARGV: session hash, consent-record stream,
# site, consent (JSON), now (ms), session TTL, consent-record TTL, records kept,
# mode ('hello' or 'change'), whether the hello carried a (valid) token, the
# sid's owner key, the hello's visitor id ('' for none) and that visitor's
# sessions key. A sid belongs to the site whose hello created its session:
# the owner key is set once, here, and a hello from any other site is refused.
# A session belongs to one visitor the same way: its hash's vid is set by the
# first hello that names one, and a hello naming another is refused.
SESSION_LUA = """
local h, cl, site, consent, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local owner = redis.call('GET', ARGV[11])
if owner and owner ~= site then
  return {'other_site', 0}
end
local st = redis.call('HMGET', h, 'seq', 'consent', 'vid', 'created')
local seq, stored, had, created = st[1], st[2], st[3], st[4]
if ARGV[9] == 'hello' then
  if seq and ARGV[10] == '0' then
    return {'needs_token', tonumber(seq)}
  end
  local vid = ARGV[12]
  if vid ~= '' and had and had ~= vid then
    return {'other_visitor', tonumber(seq or 0)}
  end
  if not seq then
    seq = '0'
    created = now
    redis.call('HSET', h, 'seq', 0, 'created', now, 'site', site)
  end
  if vid ~= '' then
    if not had then
      redis.call('HSET', h, 'vid', vid)
    end
    redis.call('ZADD', ARGV[13], 'NX', created or now, ARGV[14])
    redis.call('EXPIRE', ARGV[13], ARGV[6])
  end
  redis.call('SET', ARGV[11], site, 'EX', ARGV[6])
  redis.call('EXPIRE', h, ARGV[6])
elseif not seq then
  return {'unknown', 0}
end
if stored ~= consent then
  redis.call('HSET', h, 'consent', consent)
  redis.call('XADD', cl, 'MAXLEN', '~', ARGV[8], '*', 'consent', consent, 'ts', now, 'site', site, 'via', ARGV[9])
  redis.call('EXPIRE', cl, ARGV[7])
end
return {'ok', tonumber(seq)}
"""


class SessionInfo(NamedTuple):
    """A session's record in the store."""

    known: bool
    seq: int  # highest durable seq
    consent: list[str]


class Append(NamedTuple):
    """One run of a session's events to make durable.

    A named tuple, not a frozen dataclass: one is made per events frame, and a
    frozen dataclass's ``__init__`` cost more than packing the events.
    """

    site: str
    sid: str
    first: int  # first seq consumed (refused events consume numbers too)
    last: int
    payload: bytes  # the accepted events, normalised, in order, as msgpack ('' for none)
    ev_first: int = 0  # seq of the first and last accepted event (0: none)
    ev_last: int = 0

    @classmethod
    def of(
        cls, site: str, sid: str, first: int, last: int, events: Sequence[dict[str, Any]]
    ) -> Append:
        """Pack the events once: the same bytes go to the log and to the shard."""
        if not events:
            return cls(site, sid, first, last, b"")
        packed = msgpack.packb(events)
        return cls(site, sid, first, last, packed, events[0]["seq"], events[-1]["seq"])


class EventStore:
    """Appends to and reads from the event log; one instance per gateway process."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        # The hot path's one call, on a connection of its own (serve/edge/resp.py says why).
        self._append = ScriptCaller(r, APPEND_LUA)
        self._session_script = r.register_script(SESSION_LUA)

    async def session_info(self, site: str, sid: str) -> SessionInfo:
        """What the store holds of ``site``'s session ``sid``: whether it exists, durable seq, consent."""
        seq, consent = await self.r.hmget(self.keys.session(site, sid), "seq", "consent")
        return SessionInfo(
            seq is not None,
            int(seq) if seq is not None else 0,
            json.loads(consent) if consent is not None else [],
        )

    async def claim(
        self, sid: str, site: str, consent: list[str], token: bool, vid: str | None = None
    ) -> tuple[str, int]:
        """Open ``sid`` for ``site`` on a hello, atomically: ("ok", durable seq) or a refusal.

        Creates the session if it does not exist, for ``site``. Refuses with
        ("other_site", 0) a session another site created, and with
        ("needs_token", seq) one that exists when the hello carried no token
        (``token``: the hello carried one, already checked): two hellos
        racing for a fresh id get one welcome between them. With ``vid``,
        binds the session to that visitor (refusing with ("other_visitor",
        seq) one bound to another) and adds it to the visitor's sessions.
        Records the consent if it changed (see :meth:`record_consent`).
        """
        status, seq = await self._session_script(
            args=[
                *self._consent_args(sid, site, consent),
                "hello",
                int(token),
                self.keys.owner(sid),
                vid or "",
                self.keys.visitor_sessions(site, vid) if vid else "",
                sid,
            ]
        )
        return (status.decode() if isinstance(status, bytes) else status), int(seq)

    async def record_consent(self, sid: str, site: str, consent: list[str]) -> None:
        """A consent change on a live session: its current consent, and a consent record.

        A record is appended only when the consent differs from the stored one,
        to the session's own capped stream: one visitor's traffic can never
        evict another's proof.
        """
        await self._session_script(
            args=[
                *self._consent_args(sid, site, consent),
                "change",
                1,
                self.keys.owner(sid),
                "",
                "",
                sid,
            ]
        )

    def _consent_args(self, sid: str, site: str, consent: list[str]) -> list[Any]:
        return [
            self.keys.session(site, sid),
            self.keys.consent_records(site, sid),
            site,
            json.dumps(consent),
            int(time.time() * 1000),
            SESSION_TTL_S,
            CONSENT_TTL_S,
            CONSENT_RECORDS_MAX,
        ]

    async def append_many(self, runs: Sequence[Append]) -> list[tuple[int, bool]]:
        """Append every run in one round trip and one script call; (durable seq, appended?) each.

        One call for the whole round keeps the client-side cost at one command
        however many sessions took part (a pipeline of one call per session
        spent more time building and parsing commands than Redis spent running
        them). Limit: all keys in one call, so on Redis Cluster the session keys
        would need a shared hash tag.
        """
        return await (await self.start_append(runs))

    async def start_append(self, runs: Sequence[Append]) -> Awaitable[list[tuple[int, bool]]]:
        """Send :meth:`append_many`'s call now; returns an awaitable of its outcome.

        Redis runs calls in the order they were started, so a round can be
        on its way while the one before it runs: the runs of a session in
        the later round start where the earlier round left its seq.
        """
        reply = await self._append.start(self.append_arg(runs))
        return self._outcome(reply)

    @staticmethod
    async def _outcome(reply: Awaitable[Any]) -> list[tuple[int, bool]]:
        flat = await reply
        return [(int(flat[i]), bool(flat[i + 1])) for i in range(0, len(flat), 2)]

    def append_arg(self, runs: Sequence[Append]) -> bytes:
        """The append script's one argument for ``runs`` (see ``APPEND_LUA``)."""
        p = self.keys.script_prefixes()
        arg: list[Any] = [SESSION_TTL_S, p["ev"], p["s"]]
        scoped = self.keys.session_id
        for run in runs:
            arg += [scoped(run.site, run.sid), run.first, run.last, run.payload]
            arg += [run.ev_first, run.ev_last]
        return script_arg(arg)

    def close(self) -> None:
        """Close the append connection (the redis-py client is its owner's to close)."""
        self._append.close()

    async def read_events(
        self, site: str, sid: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Every logged event of a session, in order (tests, export, recovery checks).

        With ``limit``, its first ``limit`` events only, read a page of
        entries at a time, so a very long session is not read whole.
        """
        key = self.keys.events(site, sid)
        if limit is None:
            out: list[dict[str, Any]] = []
            for _eid, fields in await self.r.xrange(key):
                out.extend(msgpack.unpackb(fields[b"ev"]))
            return out
        out, start = [], "-"
        while len(out) < limit:
            page = await self.r.xrange(key, min=start, count=READ_PAGE_ENTRIES)
            for _eid, fields in page:
                out.extend(msgpack.unpackb(fields[b"ev"]))
            if len(page) < READ_PAGE_ENTRIES:
                break
            start = "(" + page[-1][0].decode()
        return out[:limit]
