"""Redis behind Sentinel: the ``redis+sentinel://`` URL and the clients that follow the primary.

A Lifeline process is told where Redis is by one string (``REDIS_URL``),
passed as is to the gateways, the shards and the Serve deployments. So
Sentinel is a kind of URL, not a separate pair of settings::

    redis+sentinel://[[user]:password@]host:port[,host:port...]/<master name>[/db][?options]
    rediss+sentinel://...   (TLS to the sentinels and to the nodes)

e.g. ``redis+sentinel://:pw@s1:26379,s2:26379,s3:26379/lifeline/0``. The
hosts are the sentinels; the master name is the one they monitor. The
password (and user) authenticate to the Redis nodes and to the sentinels
alike (cluster/kubernetes/ sets one ``requirepass`` for both). The query
options are redis-py's URL options (``socket_timeout``, ``ssl_*``...),
applied to both.

A client made here asks a sentinel for the current primary whenever it
opens a connection, and redis-py's sentinel connection turns a ``READONLY``
reply (a primary demoted to replica) into a connection error, so the next
command asks again. The gateway's own append connection (serve/edge/resp.py)
does the same with :func:`primary_of`.

Limits: one master name per URL; the sentinels are asked in the order given
(redis-py moves the one that answered first to the front).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool

SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
DEFAULT_SENTINEL_PORT = 26379


class BadSentinelURL(ValueError):
    """A ``redis+sentinel://`` URL that cannot be understood; the message says why."""


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    # redis-py connection settings for the nodes (password, db, timeouts, TLS options):
    # what redis-py's own URL parser makes of the same URL with one plain host.
    node: dict[str, Any] = field(default_factory=dict)
    tls: bool = False

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection settings for the sentinels: the nodes' auth, timeouts and TLS, no db."""
        keep = ("username", "password", "socket_timeout", "socket_connect_timeout")
        out = {k: v for k, v in self.node.items() if k in keep or k.startswith("ssl_")}
        if self.tls:
            out["ssl"] = True
        return out


def is_sentinel(url: str) -> bool:
    """True if ``url`` names Redis through Sentinel."""
    return url.split("://", 1)[0].lower() in SCHEMES


def parse(url: str) -> SentinelURL:
    """Parse ``url`` (see the module docstring); raises :class:`BadSentinelURL`."""
    from redis.connection import parse_url

    scheme, sep, rest = url.partition("://")
    plain = SCHEMES.get(scheme.lower())
    if not sep or plain is None:
        raise BadSentinelURL("not a redis+sentinel:// URL")
    netloc, _, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    path, _, query = tail.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise BadSentinelURL("redis+sentinel:// URL names no master (…/<master name>[/db])")
    if len(parts) > 2:
        raise BadSentinelURL("redis+sentinel:// URL path is /<master name>[/db]")
    sentinels = host_ports(hosts, DEFAULT_SENTINEL_PORT)
    if sentinels is None:
        raise BadSentinelURL("sentinel addresses are host:port,host:port")
    # redis-py parses the rest (auth, db, options) as it would for one plain node.
    db = parts[1] if len(parts) == 2 else "0"
    node = parse_url(f"{plain}://{userinfo}{at}sentinel.invalid/{db}{'?' if query else ''}{query}")
    for k in ("host", "port", "connection_class"):
        node.pop(k, None)
    return SentinelURL(tuple(sentinels), unquote(parts[0]), node, plain == "rediss")


def host_ports(hosts: str, default_port: int) -> list[tuple[str, int]] | None:
    """``host:port,host:port`` (a port may be left out: ``default_port``) as pairs; None if
    one is not an address. For the URLs that name several servers (Sentinel, Cluster)."""
    out = []
    for hp in hosts.split(","):
        host, colon, port = hp.strip().rpartition(":")
        if not colon:
            host, port = port, str(default_port)
        if not host or not port.isdigit():
            return None
        out.append((host.strip("[]"), int(port)))
    return out


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's primary lookup with the blocking pool's wait for a free connection."""


def client(url: str, *, aio: bool = False, max_connections: int | None = None, **options: Any):
    """A client of the current primary named by ``url``: ``aio`` for ``redis.asyncio``.

    As :func:`cluster.redis_client.redis_client` (which calls this for a
    sentinel URL): with ``max_connections`` an asyncio pool waits (up to 10 s)
    for a free connection instead of failing; ``options`` go to the connections
    to the nodes and win over the URL's.
    """
    s = parse(url)
    node = {**s.node, **options}
    if not aio:
        from redis.sentinel import Sentinel as SyncSentinel

        manager = SyncSentinel(list(s.sentinels), sentinel_kwargs=s.sentinel_kwargs())
        extra = {} if max_connections is None else {"max_connections": max_connections}
        return manager.master_for(s.master, ssl=s.tls, **extra, **node)
    from redis.asyncio.sentinel import Sentinel

    manager = Sentinel(list(s.sentinels), sentinel_kwargs=s.sentinel_kwargs())
    if max_connections is None:
        return manager.master_for(s.master, ssl=s.tls, **node)
    return manager.master_for(
        s.master,
        connection_pool_class=BlockingSentinelPool,
        max_connections=max_connections,
        timeout=10,
        ssl=s.tls,
        **node,
    )


async def primary_of(pool: Any) -> tuple[str, int]:
    """The primary's address as the sentinels of ``pool`` (an asyncio sentinel pool) say now.

    Raises redis-py's ``ConnectionError`` (``MasterNotFoundError``) when no sentinel
    names one (during a failover, or none answers).
    """
    host, port = await pool.get_master_address()
    return host, int(port)


def is_sentinel_pool(pool: Any) -> bool:
    """True if ``pool`` is an asyncio redis-py pool that asks Sentinel for the primary."""
    return isinstance(pool, SentinelConnectionPool)
