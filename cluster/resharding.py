"""Adding and removing shards of a running stack (``lifeline shards add|remove``).

The stack that runs ``lifeline up`` owns its shard actors; this is the
part of it that changes their number while visitors keep sending events.
Requests come over Redis (:func:`cluster.shard_set.request`), so the
operator's command needs no Ray connection and the actors keep the stack's
lifetime, as the ones it started with.

Adding: the new actor is started and warmed up (model loaded) first, then
the set in Redis names it; every gateway drains and switches
(:meth:`serve.edge.pipeline.Pipeline.switch`), and the sessions the new
ring gives it are activated from Redis on their next events.
Removing: the set in Redis stops naming it; once every live gateway has
switched (``shards:applied``; the old shard has then handed over all its
sessions), the actor is flushed and stopped. The last shard cannot be
removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
import redis

from cluster.keys import Keys
from cluster.shard_actors import next_index
from cluster.shard_set import applied, read_members, reply, write_members

log = logging.getLogger("lifeline.resharding")
RETRY_S = 1.0  # after a failed read of the requests list

APPLY_TIMEOUT_S = 130.0  # a gateway's drain waits out a restarting shard (SHARD_RETRY_S) at most
LIVE_GATEWAY_S = (
    10.0  # a gateway with a metrics snapshot this recent is live (serve/edge/metrics.py)
)


class ShardControl:
    """Starts and stops shard actors and names the set in Redis; serves the operators' requests.

    ``make(index)`` starts SessionShard number ``index`` and returns (its name, its handle);
    numbers are never reused within a run. ``gateway`` is the stack's own (it
    is waited for first).
    """

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        names: list[str],
        actors: list[Any],
        make: Callable[[int], tuple[str, Any]],
        gateway: Any,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.names = list(names)
        self.actors = dict(zip(names, actors, strict=True))
        self.make = make
        # After the first: a joined run may have found a resharded set (0, 2, 3 -> 4 next).
        self.next_index = next_index(names)
        self.gateway = gateway
        self._lock = asyncio.Lock()  # one change at a time
        self.changed: Callable[[list[Any]], None] = lambda shards: None  # told the new actors

    @property
    def shards(self) -> list[Any]:
        """The actors, in the set's order."""
        return [self.actors[n] for n in self.names]

    async def publish(self) -> int:
        """Name the current set in Redis (at start); returns its version."""
        return await write_members(self.redis, self.keys, self.names)

    async def add(self) -> dict[str, Any]:
        """Start one more shard and move to the set with it; returns what was done."""
        async with self._lock:
            index, self.next_index = self.next_index, self.next_index + 1
            name, actor = self.make(index)
            await actor.warm_up.remote()  # the first moved visitor must not pay for the model
            self.actors[name] = actor
            self.names.append(name)
            version = await self.publish()
            self.changed(self.shards)
            await self._applied(version)
            log.warning("shard %s added (index %d): %d shards", name, index, len(self.names))
            return {"ok": True, "op": "add", "name": name, "shards": self.names, "version": version}

    async def remove(self, name: str) -> dict[str, Any]:
        """Move to the set without ``name``, then stop it; returns what was done."""
        async with self._lock:
            if name not in self.names:
                return {"ok": False, "error": "unknown_shard", "name": name, "shards": self.names}
            if len(self.names) == 1:
                return {"ok": False, "error": "last_shard", "name": name, "shards": self.names}
            self.names.remove(name)
            version = await self.publish()
            self.changed(self.shards)
            await self._applied(version)
            actor = self.actors.pop(name)
            with contextlib.suppress(Exception):  # its sessions were handed over at the switch
                await asyncio.wait_for(actor.flush.remote(), 10.0)
            ray.kill(actor)
            log.warning("shard %s removed: %d shards", name, len(self.names))
            return {
                "ok": True,
                "op": "remove",
                "name": name,
                "shards": self.names,
                "version": version,
            }

    async def _applied(self, version: int) -> None:
        """Wait until this stack's gateway and every other live gateway run set ``version``."""
        await self.gateway.shard_set.wait_version(version, APPLY_TIMEOUT_S)
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while True:
            live = await self.redis.zrangebyscore(
                self.keys.gateway_metrics_index, time.time() - LIVE_GATEWAY_S, "+inf"
            )
            done = await applied(self.redis, self.keys)
            behind = [g.decode() for g in live if done.get(g.decode(), 0) < version]
            if not behind or time.monotonic() > deadline:
                if behind:
                    log.error("gateways %s did not switch to shard set %d", behind, version)
                return
            await asyncio.sleep(0.1)  # polled: the gateways write applied once per switch

    async def serve(self) -> None:
        """Perform the requests operators push (``lifeline shards``), one at a time, forever."""
        key = self.keys.shards("requests")
        while True:
            try:
                got = await self.redis.blpop([key], timeout=1)
            except (redis.RedisError, OSError) as exc:
                # Redis slow or away for a moment: this loop must outlive it (it is the only
                # one serving `lifeline shards`); the requests wait in their list meanwhile.
                log.warning("shard requests not read (%s); retrying", type(exc).__name__)
                await asyncio.sleep(RETRY_S)
                continue
            if got is None:
                continue
            try:
                req = json.loads(got[1])
                rid = str(req["id"])
            except (ValueError, KeyError, TypeError):
                log.error("unreadable shard request skipped")
                continue
            try:
                if req.get("op") == "add":
                    outcome = await self.add()
                elif req.get("op") == "remove":
                    outcome = await self.remove(str(req.get("name", "")))
                elif req.get("op") == "list":
                    outcome = {"ok": True, "op": "list", "shards": self.names}
                else:
                    outcome = {"ok": False, "error": "unknown_op", "op": req.get("op")}
            except Exception as exc:  # reported to the operator, and the loop goes on
                log.exception("shard request %s failed", req.get("op"))
                outcome = {"ok": False, "error": "failed", "detail": type(exc).__name__}
            await reply(self.redis, self.keys, rid, outcome)


async def current(redis: Any, keys: Keys) -> tuple[int, list[str]]:
    """The set in force (for ``lifeline shards list`` when no stack answers)."""
    return await read_members(redis, keys)
