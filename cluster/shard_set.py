"""The shard set in force, named in Redis, and the operators' requests to change it.

``{p}shards:members`` lists the shards' Ray actor names and
``{p}shards:version`` is bumped in the same transaction (cluster/keys.py).
The running ``lifeline up`` writes both at start and whenever it adds or
removes a shard (:mod:`cluster.stack`); every gateway process polls the
version (:meth:`ShardSet.loop`, one GET every ``SHARDS_POLL_S``) and, when
it moved, looks the named actors up and switches its ring
(:meth:`serve.edge.pipeline.Pipeline.switch`), then records the version it
reached in ``{p}shards:applied`` so the stack knows when a removed shard has
nothing left to receive.

An operator does not start or stop actors: ``lifeline shards add`` and
``lifeline shards remove NAME`` push a request onto ``{p}shards:requests``
and wait for the stack's reply (:func:`request`). The stack owns the shard
actors (they live and die with ``lifeline up``, as the ones it started
with), so a change needs no Ray connection from the command, only Redis.

Limits: polling means up to ``SHARDS_POLL_S`` (plus a round trip) before a
gateway follows; a stack that is not running leaves requests unanswered
(the command times out and says so).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cluster.keys import Keys

SHARDS_POLL_S = 0.25
REPLY_TTL_S = 60


async def read_members(redis: Any, keys: Keys) -> tuple[int, list[str]]:
    """The stored (version, shard names); (0, []) before any was written."""
    version, names = await (
        redis.pipeline(transaction=True)
        .get(keys.shards("version"))
        .lrange(keys.shards("members"), 0, -1)
        .execute()
    )
    return int(version or 0), [n.decode() if isinstance(n, bytes) else n for n in names]


async def write_members(redis: Any, keys: Keys, names: Sequence[str]) -> int:
    """Store the shard set; returns its new version."""
    pipe = redis.pipeline(transaction=True)
    pipe.delete(keys.shards("members"))
    pipe.rpush(keys.shards("members"), *names)
    pipe.incr(keys.shards("version"))
    return int((await pipe.execute())[-1])


async def applied(redis: Any, keys: Keys) -> dict[str, int]:
    """Gateway id -> the shard-set version it has switched to."""
    raw = await redis.hgetall(keys.shards("applied"))
    return {k.decode(): int(v) for k, v in raw.items()}


class ShardSet:
    """One gateway's view of the shard set: the version it follows and a poll loop."""

    def __init__(self, keys: Keys, gateway_id: str, version: int = 0) -> None:
        self.keys = keys
        self.gateway_id = gateway_id
        self.version = version
        self._moved: asyncio.Condition | None = None

    async def loop(self, redis: Any, switch: Callable[[list[str]], Awaitable[None]]) -> None:
        """Poll forever (a supervised loop); ``await switch(names)`` for each new shard set."""
        await redis.hset(self.keys.shards("applied"), self.gateway_id, self.version)
        while True:
            version = int(await redis.get(self.keys.shards("version")) or 0)
            if version > self.version:
                version, names = await read_members(redis, self.keys)
                if names:
                    await switch(names)
                self.version = version
                await redis.hset(self.keys.shards("applied"), self.gateway_id, version)
                async with self._condition():
                    self._condition().notify_all()
            await asyncio.sleep(SHARDS_POLL_S)

    async def wait_version(self, version: int, timeout: float = 10.0) -> None:
        """Resolve once :meth:`loop` has switched to ``version`` or a later one."""
        cond = self._condition()
        async with cond:
            await asyncio.wait_for(cond.wait_for(lambda: self.version >= version), timeout)

    def _condition(self) -> asyncio.Condition:
        if self._moved is None:
            self._moved = asyncio.Condition()
        return self._moved


async def request(redis: Any, keys: Keys, op: str, name: str = "", timeout: float = 60.0) -> dict:
    """Ask the running stack to ``add`` a shard or ``remove`` one; its reply (JSON object).

    Raises TimeoutError when no stack answered within ``timeout``.
    """
    rid = uuid.uuid4().hex
    await redis.rpush(keys.shards("requests"), json.dumps({"op": op, "name": name, "id": rid}))
    got = await redis.blpop([keys.shards(f"reply:{rid}")], timeout=timeout)
    if got is None:
        # Withdrawn if still queued, so a stack started later does not act on it.
        await redis.lrem(
            keys.shards("requests"), 1, json.dumps({"op": op, "name": name, "id": rid})
        )
        raise TimeoutError(f"no running lifeline answered within {timeout:.0f} s")
    return json.loads(got[1])


async def reply(redis: Any, keys: Keys, rid: str, outcome: dict[str, Any]) -> None:
    """The stack's answer to request ``rid``."""
    key = keys.shards(f"reply:{rid}")
    await (
        redis.pipeline(transaction=True)
        .rpush(key, json.dumps(outcome))
        .expire(key, REPLY_TTL_S)
        .execute()
    )
