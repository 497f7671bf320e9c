"""Which Redis node a key lives on, and one script connection per node: the gateway on Redis Cluster.

On a standalone Redis (or behind Sentinel) there is one node, and
:class:`Nodes` hands out one :class:`~serve.edge.resp.ScriptCaller` for
every key. On Redis Cluster (cluster/redis_cluster.py) it reads redis-py's
slot map to say which primary holds a key's slot and keeps a caller per
primary, so work spanning many sessions (the append round) goes as one call
per node, each touching only that node's keys.

Limits: the map is redis-py's; after a failover or a slot move it may be
stale until :meth:`Nodes.refresh`. A script that reaches a key its node
does not serve fails with Redis's error (the caller refreshes and fails the
round unacknowledged, so clients resend and the seq check dedupes).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from cluster.redis_cluster import is_cluster_client, node_of
from serve.edge.resp import ScriptCaller

log = logging.getLogger("lifeline.store")

# Redis's reply when a script on a cluster node touched a key it does not serve.
NOT_LOCAL = ("non local key", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


class Nodes:
    """The node of a key, and a :class:`ScriptCaller` of ``script`` per node."""

    def __init__(self, r: aioredis.Redis, script: str, wait: tuple[int, int] | None = None) -> None:
        self.r = r
        self.cluster = is_cluster_client(r)
        self._script = script
        self._wait = wait
        self._callers: dict[str, ScriptCaller] = {}
        self._one = None if self.cluster else ScriptCaller(r, script, wait=wait)

    async def ready(self) -> None:
        """Read the slot map if redis-py has not yet (its first command would)."""
        if self.cluster and not self.r.nodes_manager.slots_cache:
            await self.r.initialize()

    def node(self, key: str | bytes) -> str:
        """The name (``host:port``) of the primary serving ``key``; '' on a standalone Redis."""
        return node_of(self.r, key) if self.cluster else ""

    def caller(self, name: str) -> ScriptCaller:
        """The script's caller for node ``name`` (from :meth:`node`)."""
        if self._one is not None:
            return self._one
        caller = self._callers.get(name)
        if caller is None:
            node = self.r.nodes_manager.get_node(node_name=name)
            caller = self._callers[name] = ScriptCaller(
                None, self._script, wait=self._wait, node=node
            )
        return caller

    async def refresh(self) -> None:
        """Re-read the slot map (after a script met a key its node does not serve, or a
        node failed). Best effort: when no node answers, the next failure asks again."""
        if not self.cluster:
            return
        try:
            await self.r.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 - the round has failed already; try next time
            log.warning("Redis Cluster slot map not refreshed: %s", exc)

    @staticmethod
    def moved(exc: BaseException) -> bool:
        """True if ``exc`` says a key was not on the node asked (the slot map is stale)."""
        return any(mark in str(exc) for mark in NOT_LOCAL)

    def close(self) -> None:
        for caller in [self._one, *self._callers.values()]:
            if caller is not None:
                caller.close()


def group(names: list[str]) -> dict[str, list[int]]:
    """Indices of ``names`` by node name, each group in order (item i lives on ``names[i]``)."""
    out: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        out.setdefault(name, []).append(i)
    return out
