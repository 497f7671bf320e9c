"""The durable event log in Redis, as the gateway writes it.

Each session has a stream (``{p}ev:{sid}``) and a hash (``{p}s:{sid}``)
whose ``seq`` is the highest sequence number made durable. One Lua script
appends a run of events and advances ``seq`` atomically, and only if the run
starts right after ``seq``: two connections racing for one session, or a
retry after a lost reply, can never append the same events twice or leave a
hole. Appends from every connection that arrive together go to Redis in one
pipeline (one round trip).

Durability is Redis's: run it with AOF (``appendfsync everysec`` or
``always``) where losing the last second of acknowledged events matters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import redis.asyncio as aioredis

from cluster.keys import SESSION_TTL_S, Keys

# KEYS: stream, session hash. ARGV: first consumed seq, last consumed seq,
# payload ('' when every event of the run was refused), first and last
# appended seq, ttl. Returns {durable seq, 1 if appended else 0}.
APPEND_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if tonumber(ARGV[1]) ~= cur + 1 then
  return {cur, 0}
end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[1], '*', 'f', ARGV[4], 'l', ARGV[5], 'ev', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
redis.call('HSET', KEYS[2], 'seq', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {tonumber(ARGV[2]), 1}
"""


@dataclass(frozen=True)
class Append:
    """One run of a session's events to make durable."""

    sid: str
    first: int  # first seq consumed (refused events consume numbers too)
    last: int
    events: Sequence[dict[str, Any]]  # the accepted ones, normalised, in order


class EventStore:
    """Appends to and reads from the event log; one instance per gateway process."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._append = r.register_script(APPEND_LUA)

    async def session_info(self, sid: str) -> tuple[bool, int]:
        """(whether the session exists, its durable seq)."""
        seq = await self.r.hget(self.keys.session(sid), "seq")
        return (seq is not None, int(seq) if seq is not None else 0)

    async def record_hello(self, sid: str, site: str, consent: list[str]) -> None:
        """Create or refresh the session record and log the consent it came with."""
        pipe = self.r.pipeline(transaction=False)
        key = self.keys.session(sid)
        pipe.hsetnx(key, "seq", 0)
        pipe.hsetnx(key, "created", int(time.time() * 1000))
        pipe.hset(key, mapping={"site": site, "consent": json.dumps(consent)})
        pipe.expire(key, SESSION_TTL_S)
        pipe.xadd(self.keys.consent_log, {"sid": sid, "site": site, "consent": json.dumps(consent),
                                          "ts": int(time.time() * 1000)}, maxlen=100_000, approximate=True)
        await pipe.execute()

    async def record_consent(self, sid: str, site: str, consent: list[str]) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys.session(sid), "consent", json.dumps(consent))
        pipe.xadd(self.keys.consent_log, {"sid": sid, "site": site, "consent": json.dumps(consent),
                                          "ts": int(time.time() * 1000)}, maxlen=100_000, approximate=True)
        await pipe.execute()

    async def append_many(self, runs: Sequence[Append]) -> list[tuple[int, bool]]:
        """Append every run in one round trip; (durable seq, appended?) for each, in order."""
        pipe = self.r.pipeline(transaction=False)
        for run in runs:
            payload = msgpack.packb(list(run.events)) if run.events else b""
            first_ev = run.events[0]["seq"] if run.events else 0
            last_ev = run.events[-1]["seq"] if run.events else 0
            await self._append(
                keys=[self.keys.events(run.sid), self.keys.session(run.sid)],
                args=[run.first, run.last, payload, first_ev, last_ev, SESSION_TTL_S],
                client=pipe,
            )
        replies = await pipe.execute()
        return [(int(durable), bool(ok)) for durable, ok in replies]

    async def read_events(self, sid: str) -> list[dict[str, Any]]:
        """Every logged event of a session, in order (tests, export, recovery checks)."""
        out: list[dict[str, Any]] = []
        for _eid, fields in await self.r.xrange(self.keys.events(sid)):
            out.extend(msgpack.unpackb(fields[b"ev"]))
        return out
