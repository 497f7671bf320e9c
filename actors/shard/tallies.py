"""A shard's console tallies: counted with each batch, written to Redis about once a second.

The thin shell of :mod:`actors.core.tally`. :meth:`ShardTallies.batch` runs
on the shard's batch path, with its lock held: it only adds to counters in
memory. :meth:`ShardTallies.flush` runs on the shard's I/O loop every
``FLUSH_EVERY_S``: it swaps the counters out and writes them in one
script call (one round trip): an HINCRBY per field into
``{p}tally:d:{site}:{day}`` (kept ``TALLY_DAY_TTL_S``) and
``{p}tally:m:{site}:{minute}`` (kept ``TALLY_MINUTE_TTL_S``); on Redis Cluster,
one call per node (cluster/redis_cluster.py ``by_node``).

Losses: a clean stop flushes (:meth:`ShardCore.stop`); a crash loses at most
the last ``FLUSH_EVERY_S`` of counts (plus a write under way). A write that
fails is merged back and retried with the next flush, so Redis being away for
a while delays counts without losing them (while the shard lives).

Counts are aggregates with no session id: a visitor's withdrawal of
consent erases their records and event log, and leaves these sums alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from actors.core.host import Forget, SessionResult
from actors.core.session import Session
from actors.core.sites import Site
from actors.core.tally import GoalFn, Tally, day_text
from cluster.keys import TALLY_DAY_TTL_S, TALLY_MINUTE_TTL_S, Keys
from cluster.lua import by_node_groups, script_arg

log = logging.getLogger("lifeline.shard")

FLUSH_EVERY_S = 1.0

# ARGV[1]: a msgpack map: h (hashes: [key, ttl, field, n, field, n, ...]).
# One call instead of a pipeline: redis-py spends ~35 us of the shard's CPU
# per pipelined command (actors/shard/records.py), the script a few.
FLUSH_LUA = """
local a = cmsgpack.unpack(ARGV[1])
for _, h in ipairs(a.h) do
  local key = h[1]
  for i = 3, #h, 2 do
    redis.call('HINCRBY', key, h[i], h[i + 1])
  end
  redis.call('EXPIRE', key, h[2])
end
return #a.h
"""


class ShardTallies:
    """One shard's tally: :meth:`batch` on the batch path, :meth:`flush` on the I/O loop."""

    def __init__(
        self,
        r: aioredis.Redis,
        keys: Keys,
        sites: dict[str, Site],
        holdout: Callable[[str], float],
    ) -> None:
        self.keys = keys
        self.sites = sites
        self.holdout = holdout  # a site's holdout share (its policy's)
        self.tally = Tally()
        self._site_rules: dict[str, tuple[float, GoalFn | None]] = {}
        self._swap = threading.Lock()  # between batch (batch thread) and flush (I/O loop)
        self._r = r
        self._flush = r.register_script(FLUSH_LUA)
        self.flushes = 0
        self.failures = 0

    def batch(
        self,
        items: Sequence[Any],
        results: Sequence[SessionResult],
        active: dict[str, Session],
        segment_names: Sequence[str] = (),
    ) -> None:
        """Count a processed batch: its items, the host's results, and the sessions (hot path)."""
        by_sid = {r.sid: r for r in results}
        given: set[str] = set()
        with self._swap:
            tally = self.tally
            for item in items:
                if type(item) is Forget:
                    continue
                sid, site, _consent, events = item
                session = active.get(sid)
                if session is None or not events:
                    continue
                r = by_sid.get(sid)
                if r is None or r.last_row is None:
                    continue  # nothing of it applied (all sent before)
                decisions: Sequence[Any] = ()
                if r.decisions or r.skipped:  # the rare path: decisions, or events sent twice
                    if sid not in given:  # a session's decisions count with its first item
                        given.add(sid)
                        decisions = r.decisions
                    if r.skipped:  # resent events were not applied: not counted either
                        applied = set(r.seqs)
                        events = [e for e in events if e["seq"] in applied]
                rule = self._site_rules.get(site) or self._rule(site)
                tally.add(session, events, decisions, rule[0], rule[1], segment_names, r.last_row)

    def _rule(self, site: str) -> tuple[float, GoalFn | None]:
        """(holdout share, conversion rule) of ``site``, looked up once (sites load at start)."""
        rules = self.sites.get(site)
        goal = rules.conversion if rules is not None and rules.goals else None
        rule = self._site_rules[site] = (self.holdout(site), goal)
        return rule

    def _take(self) -> Tally:
        with self._swap:
            return self.tally.take()

    async def flush(self) -> int:
        """Write the counts so far; returns how many hashes were written (0: nothing to write)."""
        tally = self._take()
        if not tally:
            return 0
        # Each hash with where its counts came from, so a node that fails gets only its own back.
        origins = [("days", k) for k in tally.days] + [("minutes", k) for k in tally.minutes]
        rows = list(zip(hashes(self.keys, tally), origins, strict=True))
        done = await by_node_groups(
            self._r,
            self._flush,
            rows,
            lambda row: row[0][0],
            lambda group: script_arg({"h": [h for h, _origin in group]}),
        )
        failed = [(group, exc) for group, exc in done if isinstance(exc, BaseException)]
        for _group, exc in failed:
            if not isinstance(exc, (redis.RedisError, OSError)):
                raise exc
        if failed:
            self.failures += 1
            log.error("tallies: write failed, kept for the next flush: %s", failed[0][1])
            back = Tally()
            for group, _exc in failed:
                for _h, (which, key) in group:
                    getattr(back, which)[key] = getattr(tally, which)[key]
            with self._swap:
                self.tally.merge(back)
            return 0
        self.flushes += 1
        return len(tally.days) + len(tally.minutes)

    async def run(self) -> None:
        """Flush every ``FLUSH_EVERY_S`` (a loop of the shard's supervisor)."""
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush()


def hashes(keys: Keys, tally: Tally) -> list[list[Any]]:
    """The flush script's ``h`` argument for ``tally``: each hash, its expiry, its increments."""
    out: list[list[Any]] = []
    texts: dict[int, str] = {}
    for (site, day), counts in tally.days.items():
        text = texts.get(day) or texts.setdefault(day, day_text(day))
        out.append(_flat(keys.tally_day(site, text), TALLY_DAY_TTL_S, counts))
    for (site, minute), counts in tally.minutes.items():
        out.append(_flat(keys.tally_minute(site, minute), TALLY_MINUTE_TTL_S, counts))
    return out


def _flat(key: str, ttl: int, counts: dict[str, int]) -> list[Any]:
    out: list[Any] = [key, ttl]
    for f, n in counts.items():
        out += (f, n)
    return out
