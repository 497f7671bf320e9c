"""The durable event log in Redis, as the gateway writes it.

Each session has a stream (``{p}ev:{site}:{sid}``) and a hash (``{p}s:{site}:{sid}``)
whose ``seq`` is the highest sequence number made durable. One Lua script
appends a run of events and advances ``seq`` atomically, and only if the run
starts right after ``seq``: two connections racing for one session, or a
retry after a lost reply, can never append the same events twice or leave a
hole. Appends from every connection that arrive together go to Redis in one
script call (one round trip).

Durability is Redis's: run it with AOF (``appendfsync everysec`` or
``always``) where losing the last second of acknowledged events matters,
and with ``wait`` (``LIFELINE_REDIS_WAIT_REPLICAS``) an append is
acknowledged only once that many replicas have it (README, "Redis: what an
acknowledgement promises").

Encryption at rest (cluster/sealing.py): a gateway that seals gets each
session's data key on its hello, in the session script's round trip, and
appends each run sealed under it with the subject's reference (field ``k``);
the shard gets the plaintext payload over its link. Readers open entries
with the keys Redis holds when they read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

import msgpack
import redis.asyncio as aioredis

from actors.core.retention import Retention
from actors.core.sites import Site
from cluster.keys import CONSENT_RECORDS_MAX, DATA_KEY_TTL_S, SESSION_TTL_S, Keys, subject_digest
from cluster.redis_server import script_arg
from cluster.sealing import KeyUnavailable, MasterKeys, Opener, Sealer
from serve.edge.resp import ReplicasBehind, ScriptCaller

log = logging.getLogger("lifeline.store")

READ_PAGE_ENTRIES = 128  # stream entries per read of read_events(limit=...)
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


def data_key_ttl(keep: Retention) -> int:
    """The TTL of a data key: its site's event-log retention and the margin of
    ``DATA_KEY_TTL_S`` (cluster/keys.py), so it outlives the logs it seals."""
    return keep.events + DATA_KEY_TTL_S - SESSION_TTL_S


# One call appends the runs of many sessions (one append round of the gateway).
# ARGV[1] is one msgpack array: the TTL table (one [events, sessions, data key] TTL
# row per site of the call: the sites' retention, cheap per call and nothing per
# event), the event-log key prefix, the session-hash key prefix, the data-key
# prefix, then for each run: sid, first consumed seq, last consumed seq, payload
# ('' when every event of the run was refused; sealed when the run names its data
# key), first and last appended seq, the run's subject reference ('site:subject',
# '' for a plaintext run) and its site's row in the TTL table (1-based; negative
# for a run that may only extend an existing session hash, ``Append.existing``:
# else it gets -1 and 0 and nothing is written). One packed
# argument instead of eight per run: redis-py built and encoded every argument in Python, ~10 % of a gateway's CPU (py-spy, 2026-11-21).
# Returns, for each run, the durable seq and 1 if the run was appended, else 0
# (it did not start right after the durable seq). Runs of one session are
# applied in order. The script names its keys itself, so it needs a standalone
# Redis: on Redis Cluster a run's own keys share its session's slot (cluster/keys.py),
# but one call spans many sessions' slots and nodes.
# TTLs are refreshed when a session's seq crosses a multiple of 64 (the TTL is
# days), and the stream's the first time it gets an entry (field 'log_ttl'): two
# EXPIREs per run were ~40 % of the script's calls. The data key's TTL is refreshed
# with them, so it outlives the logs it seals.
APPEND_LUA = """
local arg = cmsgpack.unpack(ARGV[1])
local ttls, ev_prefix, s_prefix, dk_prefix = arg[1], arg[2], arg[3], arg[4]
local out = {}
for i = 5, #arg, 8 do
  local sid = arg[i]
  local stream, hash = ev_prefix .. sid, s_prefix .. sid
  local state = redis.call('HMGET', hash, 'seq', 'log_ttl')
  local cur = tonumber(state[1] or '0')
  local first, last, row = arg[i + 1], arg[i + 2], arg[i + 7]
  if row < 0 and not state[1] then
    out[#out + 1] = -1
    out[#out + 1] = 0
  elseif first ~= cur + 1 then
    out[#out + 1] = cur
    out[#out + 1] = 0
  else
    local ttl = ttls[math.abs(row)]
    local refresh = math.floor(last / 64) ~= math.floor(cur / 64) or cur == 0
    if arg[i + 3] ~= '' then
      local ref = arg[i + 6]
      if ref ~= '' then
        redis.call('XADD', stream, '*', 'f', arg[i + 4], 'l', arg[i + 5], 'ev', arg[i + 3], 'k', ref)
        if refresh then
          redis.call('EXPIRE', dk_prefix .. ref, ttl[3])
        end
      else
        redis.call('XADD', stream, '*', 'f', arg[i + 4], 'l', arg[i + 5], 'ev', arg[i + 3])
      end
      if refresh or not state[2] then
        redis.call('EXPIRE', stream, ttl[1])
        redis.call('HSET', hash, 'seq', last, 'log_ttl', 1)
      else
        redis.call('HSET', hash, 'seq', last)
      end
    else
      redis.call('HSET', hash, 'seq', last)
    end
    if refresh then
      redis.call('EXPIRE', hash, ttl[2])
    end
    out[#out + 1] = last
    out[#out + 1] = 1
  end
end
return out
"""


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


# A session's hello or consent change. ARGV: 1 session hash, 2 the session's
# consent-record stream, 3 site, 4 consent (JSON), 5 now (ms), 6 sessions TTL,
# 7 consent-proof TTL, 8 records kept, 9 mode ('hello' or 'change'), 10 whether
# the hello carried a (valid) token, 11 the sid's owner key, 12 the hello's
# visitor id ('' for none), 13 that visitor's sessions key, 14 sid, 15 the
# session's erasure marker, 16 the visitor's ('' for none), 17 the visitor
# record's key prefix and 18 the visitor consent records' ("{p}v:{site}:",
# "{p}vc:{site}:"; the script adds the tagged vid, "{vid}"), 19 the record's
# source (via: hello, banner, api, change), 20 the site's consent policy
# version, 21 the TTL of the visitor's record and sessions list
# (:func:`visitor_ttl`). With ARGV[22] (the data-key prefix; '' or
# absent when the gateway does not seal), a welcomed hello also returns its
# subject's reference and wrapped data key, creating it from the candidate
# ARGV[23] if it has none (DATA_KEY_FN), TTL ARGV[24].
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
SESSION_LUA = (
    DATA_KEY_FN
    + """
local h, cl, site, consent, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local sealing = nil
local owner = redis.call('GET', ARGV[11])
if owner and owner ~= site then
  return {'other_site', 0}
end
local mode, vid = ARGV[9], ARGV[12]
if mode == 'hello' and (redis.call('EXISTS', ARGV[15]) == 1
    or (ARGV[16] ~= '' and redis.call('EXISTS', ARGV[16]) == 1)) then
  return {'erased', 0}
end
local st = redis.call('HMGET', h, 'seq', 'consent', 'vid', 'created')
local seq, stored, had, created = st[1], st[2], st[3], st[4]
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
  if vid ~= '' then
    local vc, v = ARGV[18] .. '{' .. vid .. '}', ARGV[17] .. '{' .. vid .. '}'
    if not had then
      redis.call('HSET', h, 'vid', vid)
      for _, e in ipairs(redis.call('XRANGE', cl, '-', '+')) do
        local f = e[2]
        f[#f + 1] = 'sid'
        f[#f + 1] = ARGV[14]
        redis.call('XADD', vc, 'MAXLEN', '~', ARGV[8], '*', unpack(f))
        redis.call('EXPIRE', vc, ARGV[7])
      end
      redis.call('DEL', cl)
      if stored then  -- what the moved records last said is the visitor's consent, if it had none
        redis.call('HSETNX', v, 'consent', stored)
      end
    end
    redis.call('ZADD', ARGV[13], 'NX', created or now, ARGV[14])
    redis.call('EXPIRE', ARGV[13], ARGV[21])
    redis.call('HSETNX', v, 'created', now)
    redis.call('HSET', v, 'last', now)
    redis.call('EXPIRE', v, ARGV[21])
    had = vid
  end
  redis.call('SET', ARGV[11], site, 'EX', ARGV[6])
  redis.call('EXPIRE', h, ARGV[6])
  if ARGV[22] and ARGV[22] ~= '' then
    sealing = site .. ':{' .. (had or ARGV[14]) .. '}'
  end
elseif not seq then
  return {'unknown', 0}
end
if stored ~= consent then
  redis.call('HSET', h, 'consent', consent)
end
if had then
  local v = ARGV[17] .. '{' .. had .. '}'
  if redis.call('HGET', v, 'consent') ~= consent then
    local vc = ARGV[18] .. '{' .. had .. '}'
    redis.call('HSET', v, 'consent', consent, 'policy', ARGV[20])
    redis.call('EXPIRE', v, ARGV[21])
    redis.call('XADD', vc, 'MAXLEN', '~', ARGV[8], '*', 'consent', consent, 'ts', now,
      'site', site, 'via', ARGV[19], 'policy', ARGV[20], 'sid', ARGV[14])
    redis.call('EXPIRE', vc, ARGV[7])
  end
elseif stored ~= consent then
  redis.call('XADD', cl, 'MAXLEN', '~', ARGV[8], '*', 'consent', consent, 'ts', now,
    'site', site, 'via', ARGV[19], 'policy', ARGV[20])
  redis.call('EXPIRE', cl, ARGV[7])
end
if sealing then
  return {'ok', tonumber(seq), sealing, data_key(ARGV[22] .. sealing, ARGV[23], ARGV[24])}
end
return {'ok', tonumber(seq)}
"""
)

# The data key of an existing session's subject (a beacon's append): the
# visitor's if the session hash names one, else the session's; created from
# the candidate if missing. ARGV: session hash, site, sid, data-key prefix,
# candidate, TTL. Returns the subject reference and the wrapped key.
DATA_KEY_LUA = (
    DATA_KEY_FN
    + """
local vid = redis.call('HGET', ARGV[1], 'vid')
local ref = ARGV[2] .. ':{' .. (vid or ARGV[3]) .. '}'
return {ref, data_key(ARGV[4] .. ref, ARGV[5], ARGV[6])}
"""
)


class Unconfirmed(Exception):
    """An append round that Redis ran but fewer replicas than asked confirmed (``WAIT``).

    ``results``: what the round's reply said, as :meth:`EventStore.append_many`
    returns it: the runs appended are in the primary's log, unacknowledged.
    """

    def __init__(self, results: list[tuple[int, bool]], why: str) -> None:
        super().__init__(why)
        self.results = results


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
    sealed: bytes = b""  # the payload sealed under the subject's data key (with ``ref``)
    ref: str = ""  # the subject reference of ``sealed`` ('' : the log gets the plaintext)
    # Append only onto a session hash that exists (a beacon's run): every hello writes
    # it, and an erasure deletes it in the same script that writes the session's
    # refusal marker, so a run checked this way can never bring an erased session back.
    existing: bool = False

    @classmethod
    def of(
        cls,
        site: str,
        sid: str,
        first: int,
        last: int,
        events: Sequence[dict[str, Any]],
        sealer: Sealer | None = None,
    ) -> Append:
        """Pack the events once: the plaintext goes to the shard, sealed (with ``sealer``) to the log."""
        if not events:
            return cls(site, sid, first, last, b"")
        packed = msgpack.packb(events)
        if sealer is None:
            return cls(site, sid, first, last, packed, events[0]["seq"], events[-1]["seq"])
        return cls(
            site,
            sid,
            first,
            last,
            packed,
            events[0]["seq"],
            events[-1]["seq"],
            sealer.seal(packed),
            sealer.ref,
        )


class EventStore:
    """Appends to and reads from the event log; one instance per gateway process."""

    def __init__(
        self,
        r: aioredis.Redis,
        keys: Keys,
        master: MasterKeys | None = None,
        seal: bool = True,
        sites: dict[str, Site] | None = None,
        wait: tuple[int, int] | None = None,
    ) -> None:
        """``master``: the master keys (cluster/sealing.py) that open sealed entries, and
        seal new ones when ``seal``; None: plaintext only (sealed entries read as unreadable).
        ``sites``: the sites in force, for their retention and consent policy (the gateway
        replaces the dict whole when the rules change). ``wait``: (replicas, timeout ms)
        an append round's writes must reach before it succeeds (serve/edge/resp.py)."""
        self.r = r
        self.keys = keys
        self.sites: dict[str, Site] = sites or {}
        self.master = master
        self.sealing = master if seal else None  # writers seal iff set
        # The hot path's one call, on a connection of its own (serve/edge/resp.py says why).
        self._append = ScriptCaller(r, APPEND_LUA, wait=wait)
        self._session_script = r.register_script(SESSION_LUA)
        self._data_key_script = r.register_script(DATA_KEY_LUA)
        self.unreadable = 0  # entries read_events could not open (their data key is gone)

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
        """:meth:`open_session` without its sealer: ("ok", durable seq) or a refusal."""
        status, seq, _sealer = await self.open_session(sid, site, consent, token, vid)
        return status, seq

    async def open_session(
        self, sid: str, site: str, consent: list[str], token: bool, vid: str | None = None
    ) -> tuple[str, int, Sealer | None]:
        """Open ``sid`` for ``site`` on a hello, atomically: ("ok", durable seq) or a refusal.

        Creates the session if it does not exist, for ``site``. Refuses with
        ("other_site", 0) a session another site created, and with
        ("needs_token", seq) one that exists when the hello carried no token
        (``token``: the hello carried one, already checked): two hellos
        racing for a fresh id get one welcome between them. With ``vid``,
        binds the session to that visitor (refusing with ("other_visitor",
        seq) one bound to another) and adds it to the visitor's sessions.
        Records the consent if it changed (see :meth:`record_consent`).
        Refuses with ("erased", 0) a session or visitor whose data was erased.

        When this store seals, the same call gets (or creates) the data key of
        the session's subject (its visitor, else itself) and returns it
        unwrapped as a :class:`~cluster.sealing.Sealer`, once per hello; a key
        that no master key opens refuses the hello with ("key_unavailable", seq).
        """
        sealing = self.sealing
        args = self._session_args(sid, site, consent, "hello", token, vid, "hello")
        if sealing is not None:
            args += [
                self.keys.script_prefixes()["dk"],
                sealing.new_wrapped(site),
                data_key_ttl(self.retention(site)),
            ]
        reply = await self._session_script(args=args)
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        seq = int(reply[1])
        if sealing is None or len(reply) < 4:
            return status, seq, None
        try:
            return status, seq, sealing.sealer(reply[2], reply[3])
        except KeyUnavailable as exc:
            log.error("session's data key does not open: %s", exc)
            return "key_unavailable", seq, None

    async def sealer_of(self, site: str, sid: str) -> Sealer | None:
        """The sealer of an existing session's subject (a beacon's), or None when not sealing.

        Raises :class:`~cluster.sealing.KeyUnavailable` when no master key opens it.
        """
        sealing = self.sealing
        if sealing is None:
            return None
        ref, wrapped = await self._data_key_script(
            args=[
                self.keys.session(site, sid),
                site,
                sid,
                self.keys.script_prefixes()["dk"],
                sealing.new_wrapped(site),
                data_key_ttl(self.retention(site)),
            ]
        )
        return sealing.sealer(ref, wrapped)

    async def record_consent(
        self, sid: str, site: str, consent: list[str], via: str = "change"
    ) -> None:
        """A consent change on a live session: its current consent, and a consent record.

        A record (time, categories, the site's consent policy version, ``via``:
        its source) is appended only when the consent differs from the stored
        one, to the visitor's own capped stream (the session's, for a session
        without a visitor): one visitor's traffic can never evict another's proof.
        """
        await self._session_script(
            args=self._session_args(sid, site, consent, "change", True, None, via)
        )

    def _session_args(
        self,
        sid: str,
        site: str,
        consent: list[str],
        mode: str,
        token: bool,
        vid: str | None,
        via: str,
    ) -> list[Any]:
        """``SESSION_LUA``'s arguments (its comment lists them)."""
        known = self.sites.get(site)
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
        ]

    async def visitor_of(self, site: str, sid: str) -> str | None:
        """The visitor ``site``'s session ``sid`` belongs to, or None."""
        vid = await self.r.hget(self.keys.session(site, sid), "vid")
        return vid.decode() if vid is not None else None

    async def erased(self, site: str, subject: str) -> bool:
        """True if the session or visitor ``subject`` of ``site`` was erased (its marker lives)."""
        return bool(await self.r.exists(self.keys.erased(site, subject_digest(site, subject))))

    def retention(self, site: str) -> Retention:
        """``site``'s retention (the default for a site the store was not told of)."""
        known = self.sites.get(site)
        return known.retention if known is not None else DEFAULT_RETENTION

    async def append_many(self, runs: Sequence[Append]) -> list[tuple[int, bool]]:
        """Append every run in one round trip and one script call; (durable seq, appended?) each.

        One call for the whole round keeps the client-side cost at one command
        however many sessions took part (a pipeline of one call per session
        spent more time building and parsing commands than Redis spent running
        them). Limit: all keys in one call, so not on Redis Cluster, where the
        round would go as one call per node (README, "Which to choose").
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
        """(durable seq, appended?) per run; raises :class:`Unconfirmed` when WAIT fell short."""
        try:
            flat = await reply
        except ReplicasBehind as exc:
            flat = exc.reply
            results = [(int(flat[i]), bool(flat[i + 1])) for i in range(0, len(flat), 2)]
            raise Unconfirmed(results, str(exc)) from None
        return [(int(flat[i]), bool(flat[i + 1])) for i in range(0, len(flat), 2)]

    def append_arg(self, runs: Sequence[Append]) -> bytes:
        """The append script's one argument for ``runs`` (see ``APPEND_LUA``)."""
        p = self.keys.script_prefixes()
        ttls: list[list[int]] = []
        index: dict[str, int] = {}  # site -> its row of ttls (1-based, as Lua counts)
        arg: list[Any] = [ttls, p["ev"], p["s"], p["dk"]]
        for site, sid, first, last, payload, ev_first, ev_last, sealed, ref, existing in runs:
            i = index.get(site)
            if i is None:
                keep = self.retention(site)
                ttls.append([keep.events, keep.sessions, data_key_ttl(keep)])
                i = index[site] = len(ttls)
            # f"{site}:{{{sid}}}" is Keys.session_id inlined: the call and the attribute
            # reads per run were a sixth of this function.
            arg += (
                f"{site}:{{{sid}}}",
                first,
                last,
                sealed if ref else payload,
                ev_first,
                ev_last,
                ref,
                -i if existing else i,  # negative: only onto an existing session hash
            )
        return script_arg(arg)

    def close(self) -> None:
        """Close the append connection (the redis-py client is its owner's to close)."""
        self._append.close()

    async def read_events(
        self, site: str, sid: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Every logged event of a session, in order (tests, export, recovery checks).

        With ``limit``, its first ``limit`` events only, read a page of
        entries at a time, so a very long session is not read whole. Sealed
        entries are opened with the data keys Redis holds now; an entry whose
        key is gone (the visitor was erased) is left out and counted in
        ``unreadable``.
        """
        key = self.keys.events(site, sid)
        opener = Opener(self.keys, self.master)
        out: list[dict[str, Any]] = []
        start = "-"
        while limit is None or len(out) < limit:
            page = await self.r.xrange(
                key, min=start, count=None if limit is None else READ_PAGE_ENTRIES
            )
            for payload in await opener.aopen_entries(self.r, page):
                if payload is not None:
                    out.extend(msgpack.unpackb(payload))
            if limit is None or len(page) < READ_PAGE_ENTRIES:
                break
            start = "(" + page[-1][0].decode()
        self.unreadable += opener.unreadable
        return out if limit is None else out[:limit]
