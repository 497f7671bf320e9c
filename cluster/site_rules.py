"""Site rules that change at run time: the sites file, with overrides from Redis on top.

The sites file (``cluster/sites.toml``) is the baseline every gateway and
shard reads at start-up. An operator may add a site or replace one's table
from the console (``PUT /api/sites/{key}``); that table is stored in the
``{p}sites:overrides`` hash (site key -> the whole table as JSON, the same
shape as the file's ``[sites.KEY]``) and ``{p}sites:version`` is bumped in
the same transaction. Gateways and shards poll the version once a second
(:meth:`SiteRules.loop`, one GET) and, when it moved, read every override
and swap in the new sites with one assignment, so the per-frame and
per-event paths keep reading a plain dict and pay nothing.

An override replaces the file's table for that site as a whole (rules left
out take the defaults, as in the file); removing it
(:func:`remove_override`) brings the file's table back. Every override is
checked with :func:`actors.core.sites.parse_sites`, the file's own parser,
before it is stored (:func:`validate`); one that a later release no longer
accepts is skipped with an error in the log and the file's table (if any)
stays in force, so a bad row never takes the sites down.

Limits: what changes when. Origins and keys: the next handshake or beacon.
Policy rules and goals: the shards' next batch (a site's budget restarts
when its share changes). Detector thresholds: sessions the shard starts or
loads after the change; a session it is holding keeps the thresholds it
started with. Two operators editing the same site at once: the last write
wins (both are in the audit log). Polling means up to a second (plus a
Redis round trip) before a change is in force everywhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from actors.core.sites import Site, SiteConfigError, parse_sites
from cluster.keys import Keys

SITES_POLL_S = 1.0
# A new site's key: what the tracking client sends and what session keys embed (cluster/keys.py).
SITE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate(key: str, table: Any) -> Site:
    """The :class:`Site` a table describes, or :class:`SiteConfigError` saying what is wrong."""
    if not SITE_KEY_RE.fullmatch(key):
        raise SiteConfigError(
            f"site key {key!r}: 1 to 64 letters, digits, '_' or '-' (the tracking client sends it)"
        )
    if not isinstance(table, dict):
        raise SiteConfigError(f"[sites.{key}] must be a table (a JSON object)")
    return parse_sites({"sites": {key: table}}, "override")[key]


def merged(
    baseline: dict[str, Site], overrides: dict[str, Any], log: logging.Logger | None = None
) -> dict[str, Site]:
    """The baseline sites with each stored override (key -> JSON text) in place of its table."""
    sites = dict(baseline)
    for raw_key, raw in overrides.items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        try:
            sites[key] = validate(key, json.loads(raw))
        except (
            ValueError,
            TypeError,
        ) as exc:  # SiteConfigError and JSONDecodeError are ValueErrors
            if log is not None:
                log.error("site override %r skipped, the file's table stays: %s", key, exc)
    return sites


class SiteRules:
    """The sites in force in one process: the file's, with the stored overrides applied.

    ``sites`` is replaced (never mutated) on a change, so a reader that took
    it once sees one consistent set. ``version`` is the ``sites:version``
    it reflects (0: no override was ever stored).
    """

    def __init__(self, baseline: dict[str, Site], keys: Keys, log: logging.Logger) -> None:
        self.baseline = baseline
        self.keys = keys
        self.log = log
        self.sites: dict[str, Site] = dict(baseline)
        self.version = 0
        self._applied: asyncio.Condition | None = None  # made in the loop that polls

    def apply(self, version: int, overrides: dict[Any, Any]) -> dict[str, Site]:
        """Take the overrides read at ``version``; returns the new sites."""
        self.sites = merged(self.baseline, overrides, self.log)
        self.version = version
        return self.sites

    def read_sync(self, r: Any) -> dict[str, Site]:
        """Read and apply the overrides with a synchronous client (start-up)."""
        version, overrides = (
            r.pipeline(transaction=True)
            .get(self.keys.sites("version"))
            .hgetall(self.keys.sites("overrides"))
            .execute()
        )
        return self.apply(int(version or 0), overrides)

    async def refresh(self, redis: Any) -> dict[str, Site] | None:
        """The new sites if the stored version moved since the last read, else None."""
        version = int(await redis.get(self.keys.sites("version")) or 0)
        if version == self.version:
            return None
        # The version and the hash in one transaction: they always match.
        version, overrides = await (
            redis.pipeline(transaction=True)
            .get(self.keys.sites("version"))
            .hgetall(self.keys.sites("overrides"))
            .execute()
        )
        return self.apply(int(version or 0), overrides)

    async def loop(self, redis: Any, changed: Callable[[dict[str, Site]], None]) -> None:
        """Poll forever (a supervised loop); ``changed(sites)`` after each change is applied."""
        while True:
            sites = await self.refresh(redis)
            if sites is not None:
                changed(sites)
                self.log.warning("site rules now at version %d", self.version)
                async with self._condition():
                    self._condition().notify_all()
            await asyncio.sleep(SITES_POLL_S)

    async def wait_version(self, version: int, timeout: float = 10.0) -> None:
        """Resolve once :meth:`loop` (in this event loop) has applied ``version`` or a later one."""
        cond = self._condition()
        async with cond:
            await asyncio.wait_for(cond.wait_for(lambda: self.version >= version), timeout)

    def _condition(self) -> asyncio.Condition:
        if self._applied is None:
            self._applied = asyncio.Condition()
        return self._applied


async def read_overrides(redis: Any, keys: Keys) -> tuple[int, dict[str, Any]]:
    """The stored version and overrides (site key -> its table), for the console."""
    version, raw = await (
        redis.pipeline(transaction=True)
        .get(keys.sites("version"))
        .hgetall(keys.sites("overrides"))
        .execute()
    )
    out = {}
    for k, v in raw.items():
        try:
            out[k.decode()] = json.loads(v)
        except ValueError:
            out[k.decode()] = None  # unreadable: merged() skips it too
    return int(version or 0), out


async def store_override(redis: Any, keys: Keys, key: str, table: dict[str, Any]) -> int:
    """Store a site's table (call :func:`validate` first); returns the new version."""
    pipe = redis.pipeline(transaction=True)
    pipe.hset(keys.sites("overrides"), key, json.dumps(table, sort_keys=True))
    pipe.incr(keys.sites("version"))
    return int((await pipe.execute())[1])


async def remove_override(redis: Any, keys: Keys, key: str) -> tuple[bool, int]:
    """Drop a site's override (the file's table, if any, is back); (was there one, new version)."""
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(keys.sites("overrides"), key)
    pipe.incr(keys.sites("version"))
    removed, version = await pipe.execute()
    return bool(removed), int(version)
