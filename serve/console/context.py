"""What the console reads from: one :class:`ConsoleContext` per running console.

The console is a thin shell: everything it shows comes from Redis (records,
tallies, the registry, accounts) or from the running stack through the
callables here, so it can be started next to a gateway (``lifeline up``) or
against a bare Redis in a test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from actors.core.sites import Site
from cluster.config import Settings
from cluster.keys import Keys
from cluster.redis_client import redis_client
from cluster.sealing import MasterKeys, master_keys


@dataclass
class ConsoleContext:
    """The console's view of a running Lifeline.

    ``gateway``: this process's :class:`serve.edge.gateway.Gateway` (its
    counters), or None. ``shard_info``: each shard's ``ping``. ``processes``:
    this host's gateway processes and their states. ``status``: extra health
    facts (Redis persistence and the like; never a secret).
    """

    settings: Settings
    redis_url: str
    keys: Keys
    sites: dict[str, Site] = field(default_factory=dict)
    gateway: Any = None
    shard_info: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None
    processes: Callable[[], list[dict[str, Any]]] | None = None
    status: Callable[[], dict[str, Any]] | None = None
    redis: aioredis.Redis = field(init=False)
    master: MasterKeys = field(init=False)  # opens the sealed event log (cluster/sealing.py)

    def __post_init__(self) -> None:
        self.redis = redis_client(self.redis_url, aio=True)
        self.master = master_keys(self.settings)
