"""The durable event log in Redis, as the gateway writes it.

Each session has a stream (``{p}ev:{site}:{sid}``) and a hash (``{p}s:{site}:{sid}``)
whose ``seq`` is the highest sequence number made durable. One Lua script
appends a run of events and advances ``seq`` atomically, and only if the run
starts right after ``seq``: two connections racing for one session, or a
retry after a lost reply, can never append the same events twice or leave a
hole. Appends from every connection that arrive together go to Redis in one
script call (one round trip); on Redis Cluster, one call per primary, each
with the runs of the sessions it serves (serve/edge/nodes.py).

Durability is Redis's: run it with AOF (``appendfsync everysec`` or
``always``) where losing the last second of acknowledged events matters,
and with ``wait`` (``LIFELINE_REDIS_WAIT_REPLICAS``) an append is
acknowledged only once that many replicas have it (README, "Redis: what an
acknowledgement promises").

Encryption at rest (cluster/sealing.py): a gateway that seals gets each
session's data key on its hello, with the session script (serve/edge/hello.py), and
appends each run sealed under it with the subject's reference (field ``k``);
the shard gets the plaintext payload over its link. Readers open entries
with the keys Redis holds when they read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from actors.core.retention import Retention
from actors.core.sites import Site
from cluster.keys import DATA_KEY_TTL_S, SESSION_TTL_S, Keys, subject_digest
from cluster.lua import script_arg
from cluster.sealing import KeyUnavailable, MasterKeys, Opener, Sealer
from serve.edge.hello import DEFAULT_RETENTION, SessionScripts
from serve.edge.nodes import Nodes, group
from serve.edge.resp import ReplicasBehind

log = logging.getLogger("lifeline.store")

READ_PAGE_ENTRIES = 128  # stream entries per read of read_events(limit=...)


def data_key_ttl(keep: Retention) -> int:
    """The TTL of a data key: its site's event-log retention and the margin of
    ``DATA_KEY_TTL_S`` (cluster/keys.py), so it outlives the logs it seals."""
    return keep.events + DATA_KEY_TTL_S - SESSION_TTL_S


# One call appends the runs of many sessions (one append round of the gateway).
# ARGV[1] is one msgpack array: the TTL table (one [events, sessions, data key] TTL
# row per site of the call: the sites' retention, cheap per call and nothing per
# event), the event-log key prefix, the session-hash key prefix, the data-key
# prefix, the set of subject references whose data key lives on another node (a
# map, empty but on Redis Cluster: the gateway refreshes those itself), then for
# each run: sid, first consumed seq, last consumed seq, payload
# ('' when every event of the run was refused; sealed when the run names its data
# key), first and last appended seq, the run's subject reference ('site:subject',
# '' for a plaintext run) and its site's row in the TTL table (1-based; negative
# for a run that may only extend an existing session hash, ``Append.existing``:
# else it gets -1 and 0 and nothing is written). One packed
# argument instead of eight per run: redis-py built and encoded every argument in Python, ~10 % of a gateway's CPU (py-spy, 2026-11-21).
# Returns, for each run, the durable seq and 1 if the run was appended, else 0
# (it did not start right after the durable seq). Runs of one session are
# applied in order. The script names its keys itself; on Redis Cluster the
# gateway sends each node the runs whose session lives there (serve/edge/nodes.py).
# TTLs are refreshed when a session's seq crosses a multiple of 64 (the TTL is
# days), and the stream's the first time it gets an entry (field 'log_ttl'): two
# EXPIREs per run were ~40 % of the script's calls. The data key's TTL is refreshed
# with them, so it outlives the logs it seals.
APPEND_LUA = """
local arg = cmsgpack.unpack(ARGV[1])
local ttls, ev_prefix, s_prefix, dk_prefix, remote = arg[1], arg[2], arg[3], arg[4], arg[5]
local out = {}
for i = 6, #arg, 8 do
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
        if refresh and not remote[ref] then
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


async def _raise(exc: BaseException) -> Any:
    raise exc


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
        self._nodes = Nodes(r, APPEND_LUA, wait=wait)
        self._refreshing: set[asyncio.Task] = set()  # data-key TTL refreshes under way
        self._sessions = SessionScripts(r, keys)
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
        args = self._sessions.args(
            sid,
            site,
            self.sites.get(site),
            consent,
            "hello",
            token,
            vid,
            "hello",
            None
            if sealing is None
            else (
                self.keys.script_prefixes()["dk"],
                sealing.new_wrapped(site),
                data_key_ttl(self.retention(site)),
            ),
        )
        reply = await self._sessions.run(args)
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
        ref, wrapped = await self._sessions.data_key(
            site, sid, sealing.new_wrapped(site), data_key_ttl(self.retention(site))
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
        known = self.sites.get(site)
        args = self._sessions.args(sid, site, known, consent, "change", True, None, via)
        await self._sessions.run(args)

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
        them); on Redis Cluster, one call per node (:meth:`start_append`).
        """
        return await (await self.start_append(runs))

    async def start_append(self, runs: Sequence[Append]) -> Awaitable[list[tuple[int, bool]]]:
        """Send :meth:`append_many`'s call now; returns an awaitable of its outcome.

        Redis runs calls in the order they were started, so a round can be
        on its way while the one before it runs: the runs of a session in
        the later round start where the earlier round left its seq. On Redis
        Cluster the round goes as one call per node, each with the runs whose
        session lives there (a session's runs always go to one node, in order).
        """
        nodes = self._nodes
        if not nodes.cluster:
            reply = await nodes.caller("").start(self.append_arg(runs))
            return self._outcome(reply)
        await nodes.ready()
        dk = self.keys.script_prefixes()["dk"]
        names = [nodes.node(self.keys.events(run.site, run.sid)) for run in runs]
        started = []
        remote: set[str] = set()
        for name, idx in group(names).items():
            part = [runs[i] for i in idx]
            # A visitor's data key may live on another node than its session: the
            # script leaves its TTL alone and _cluster_outcome refreshes it.
            away = {r.ref for r in part if r.ref and nodes.node(dk + r.ref) != name}
            remote |= away
            try:
                reply = await nodes.caller(name).start(self.append_arg(part, away))
            except RedisConnectionError as exc:  # the node is gone (a failover): fail its runs
                started.append((idx, _raise(exc)))
                continue
            started.append((idx, self._outcome(reply)))
        return self._cluster_outcome(runs, started, remote)

    async def _cluster_outcome(
        self,
        runs: Sequence[Append],
        started: list[tuple[list[int], Awaitable[list[tuple[int, bool]]]]],
        remote: set[str],
    ) -> list[tuple[int, bool]]:
        """The outcomes of a round's per-node calls, in the round's order of runs.

        Every call is awaited; a failed one fails the round (its clients resend,
        and the seq check keeps what other nodes appended from being appended
        twice). A run appended under a data key of another node refreshes that
        key's TTL here, when the script would have.
        """
        replies = await asyncio.gather(*(outcome for _, outcome in started), return_exceptions=True)
        results: list[tuple[int, bool]] = [(-1, False)] * len(runs)
        failed: BaseException | None = None
        for (idx, _), reply in zip(started, replies, strict=True):
            if isinstance(reply, Unconfirmed):
                failed = failed or reply
                reply = reply.results
            elif isinstance(reply, BaseException):
                failed = reply
                continue
            for i, result in zip(idx, reply, strict=True):
                results[i] = result
        if failed is not None:
            if self._nodes.moved(failed) or isinstance(failed, RedisConnectionError):
                await self._nodes.refresh()  # a slot moved, or a node failed over
            if isinstance(failed, Unconfirmed):
                raise Unconfirmed(results, str(failed)) from None
            raise failed
        if remote:
            due = [
                run
                for run, (_, appended) in zip(runs, results, strict=True)
                if appended
                and run.ref in remote
                and (run.first == 1 or run.last // 64 != (run.first - 1) // 64)
            ]
            if due:
                # Off the ack's path: the key is there (its TTL is days); a refresh that
                # fails is logged, and the subject's next hello or 64 events refresh it.
                task = asyncio.create_task(self._refresh_data_keys(due))
                self._refreshing.add(task)
                task.add_done_callback(self._refreshing.discard)
        return results

    async def refreshes_done(self) -> None:
        """Wait for the data-key TTL refreshes under way (tests; a stop that wants them)."""
        await asyncio.gather(*self._refreshing)

    async def _refresh_data_keys(self, runs: list[Append]) -> None:
        """Refresh the TTL of the data keys of ``runs`` (on other nodes than their sessions)."""
        dk = self.keys.script_prefixes()["dk"]
        try:
            await asyncio.gather(
                *(
                    self.r.expire(dk + run.ref, data_key_ttl(self.retention(run.site)))
                    for run in runs
                )
            )
        except Exception as exc:  # noqa: BLE001 - logged; the next refresh comes soon
            log.warning("data-key TTL refresh failed: %s", type(exc).__name__)

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

    def append_arg(self, runs: Sequence[Append], remote: set[str] | None = None) -> bytes:
        """The append script's one argument for ``runs`` (see ``APPEND_LUA``); ``remote``:
        the subject references whose data key is on another node than the call's."""
        p = self.keys.script_prefixes()
        ttls: list[list[int]] = []
        index: dict[str, int] = {}  # site -> its row of ttls (1-based, as Lua counts)
        arg: list[Any] = [ttls, p["ev"], p["s"], p["dk"], dict.fromkeys(remote or (), 1)]
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
        self._nodes.close()

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
