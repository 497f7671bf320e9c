"""A shard's reads and writes of visitor profiles (``Keys.visitor_profile``).

The pure rules are in :mod:`actors.core.profile`; this is the thin shell that
reads a visitor's profile when their visit starts (one MGET per batch with
visits, before those sessions' first events are scored) and merges finished
sessions into profiles (on the shard's I/O loop, as the idle sweep retires
them and on a flush; never on the batch path).

Writes are read-merge-write under WATCH, so two shards ending two sessions of
one visitor at once both count; a conflict retries (a few times, then the
merge is given up and logged: a profile is a memory, not a record). The merge
is idempotent per session, so a session merged at a flush and again when it
ends counts once.

Limits: a session whose visitor is erased while the session is still held by
another shard could be merged again when it ends, making a new profile; the
erasure forgets the visitor's sessions on their shards first (a Forget item),
which prevents it for the sessions it knows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import redis
import redis.asyncio as aioredis

from actors.core.profile import SessionSummary, history_of, pack, summary_of, unpack, update
from actors.core.retention import Retention
from actors.core.session import Session, SnapshotMismatch
from cluster.keys import Keys, subject_digest
from cluster.redis_cluster import is_cluster_client, mget

log = logging.getLogger("lifeline.shard")

WRITE_CHUNK = 256  # profiles per WATCH transaction
WRITE_TRIES = 5

# (site, vid, what the session adds)
Remembered = tuple[str, str, SessionSummary]


def finished(
    states: Sequence[tuple[str, str, bytes]],
    segment_of: Any = None,
) -> list[Remembered]:
    """What each session of ``states`` (sid, site, packed state) adds to its visitor's profile.

    Only sessions with a visitor id and analytics consent count. ``segment_of``:
    a function from a feature row to a segment name (or None), if the model has segments.
    """
    out: list[Remembered] = []
    for _sid, _site, packed in states:
        try:
            session = Session.from_state(msgpack.unpackb(packed))
        except (SnapshotMismatch, ValueError, TypeError):
            continue
        if not session.vid or "analytics" not in session.consent or not session.n_events:
            continue
        segment = segment_of(session.row()) if segment_of is not None else None
        out.append((session.site, session.vid, summary_of(session, segment)))
    return out


class ShardProfiles:
    """Reads and merges visitor profiles for one shard (on its I/O loop)."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, retention: Callable[[str], Retention]
    ) -> None:
        self.redis = client
        self.keys = keys
        self.retention = retention  # a site's retention: its profiles' TTL
        self.written = 0  # profiles written
        self.given_up = 0  # merges given up after WRITE_TRIES conflicts

    async def histories(
        self, visits: Sequence[tuple[str, str, str]], now_ms: float
    ) -> dict[str, list[Any]]:
        """The history (:func:`~actors.core.profile.history_of`) of each (sid, site, vid), by sid."""
        if not visits:
            return {}
        data = await mget(
            self.redis, [self.keys.visitor_profile(site, vid) for _, site, vid in visits]
        )
        return {
            sid: history_of(unpack(d), now_ms) for (sid, _, _), d in zip(visits, data, strict=True)
        }

    async def remember(self, sessions: Sequence[Remembered]) -> int:
        """Merge each finished session into its visitor's profile; returns profiles written."""
        by_key: dict[str, tuple[str, str, list[SessionSummary]]] = {}
        for site, vid, summary in sessions:
            key = self.keys.visitor_profile(site, vid)
            by_key.setdefault(key, (site, vid, []))[2].append(summary)
        keys = list(by_key)
        written = 0
        if is_cluster_client(self.redis):
            # Each profile has its visitor's slot and its erasure marker another one:
            # one transaction per profile (a WATCH spans one slot on Redis Cluster).
            done = await asyncio.gather(*(self._merge_one(k, *by_key[k]) for k in keys))
            written = sum(done)
            self.written += written
            return written
        for i in range(0, len(keys), WRITE_CHUNK):
            written += await self._merge({k: by_key[k] for k in keys[i : i + WRITE_CHUNK]})
        self.written += written
        return written

    async def _merge_one(
        self, key: str, site: str, vid: str, summaries: list[SessionSummary]
    ) -> int:
        """Merge one profile (Redis Cluster): WATCH it, then read the erasure marker.

        The marker is read after the WATCH: an erasure sets it before it deletes
        the profile, so either the marker is seen here, or the deletion comes
        after the WATCH and fails the transaction (a retry then sees the marker).
        """
        erased = self.keys.erased(site, subject_digest(site, vid))
        for _ in range(WRITE_TRIES):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(key)
                    if await self.redis.exists(erased):
                        return 0
                    profile = unpack(await pipe.get(key))
                    for summary in sorted(summaries, key=lambda s: s.end_ts):
                        profile = update(profile, summary)
                    pipe.multi()
                    pipe.set(key, pack(profile), ex=max(1, int(self.retention(site).profiles)))
                    await pipe.execute()
                return 1
            except redis.WatchError:
                continue
        self.given_up += 1
        log.warning("visitor profiles: gave up merging a profile after conflicts")
        return 0

    async def _merge(self, by_key: dict[str, tuple[str, str, list[SessionSummary]]]) -> int:
        keys = list(by_key)
        # An erased visitor's proof marker: a session that ends while (or after) its
        # visitor is erased must not write the profile back (serve/rights/erasure.py).
        erased = [
            self.keys.erased(site, subject_digest(site, vid)) for site, vid, _ in by_key.values()
        ]
        for _ in range(WRITE_TRIES):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(*keys, *erased)
                    old = await pipe.mget(keys)
                    gone = [await pipe.exists(k) for k in erased]  # hashes: MGET reads nil
                    pipe.multi()
                    written = 0
                    for key, data, mark in zip(keys, old, gone, strict=True):
                        if mark:
                            continue
                        site, _vid, summaries = by_key[key]
                        profile = unpack(data)
                        for summary in sorted(summaries, key=lambda s: s.end_ts):
                            profile = update(profile, summary)
                        ttl = max(1, int(self.retention(site).profiles))
                        pipe.set(key, pack(profile), ex=ttl)
                        written += 1
                    await pipe.execute()
                return written
            except redis.WatchError:
                continue
        self.given_up += len(keys)
        log.warning("visitor profiles: gave up merging %d profiles after conflicts", len(keys))
        return 0
