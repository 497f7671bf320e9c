"""Redis Cluster: the ``redis+cluster://`` URL and its clients.

As with Sentinel (cluster/sentinel.py), a Redis Cluster is a kind of URL,
passed as is to every process::

    redis+cluster://[[user]:password@]host:port[,host:port...][/][?options]
    rediss+cluster://...   (TLS to every node)

e.g. ``redis+cluster://:pw@r1:6379,r2:6379,r3:6379``. The hosts are startup
nodes: any one that answers tells the client the whole slot map. The
password (and user) and the query options (redis-py's URL options:
``socket_timeout``, ``ssl_*``...) apply to every node. A cluster has one
database, so the URL names none.

Lifeline's keys carry hash tags (cluster/keys.py), so the keys of one
session, one visitor or one control-plane group share a slot. Work that
spans subjects is routed per node: the gateway's append round goes as one
script call per node (serve/edge/store.py), and a hello whose session and
visitor live on different nodes runs as one script on each
(serve/edge/hello.py).

Limits: redis-py's cluster client follows ``MOVED``/``ASK`` redirects and
refreshes its slot map on them; the gateway's own append connections
(serve/edge/resp.py) follow the map redis-py holds, and a round that meets
a moved slot fails unacknowledged (its clients resend) after asking redis-py
to refresh it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from cluster.sentinel import host_ports

SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
DEFAULT_PORT = 6379


class BadClusterURL(ValueError):
    """A ``redis+cluster://`` URL that cannot be understood; the message says why."""


def is_cluster(url: str) -> bool:
    """True if ``url`` names a Redis Cluster."""
    return url.split("://", 1)[0].lower() in SCHEMES


def parse(url: str) -> tuple[list[tuple[str, int]], str]:
    """The startup nodes of ``url`` and the same URL for one plain node (redis-py's options).

    Raises :class:`BadClusterURL`.
    """
    scheme, sep, rest = url.partition("://")
    plain = SCHEMES.get(scheme.lower())
    if not sep or plain is None:
        raise BadClusterURL("not a redis+cluster:// URL")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if path.strip("/") not in ("", "0"):
        raise BadClusterURL("a Redis Cluster has one database: the URL names none (or /0)")
    nodes = host_ports(hosts, DEFAULT_PORT)
    if nodes is None:
        raise BadClusterURL("cluster node addresses are host:port,host:port")
    first = f"{nodes[0][0]}:{nodes[0][1]}"
    return nodes, f"{plain}://{userinfo}{at}{first}/0{'?' if query else ''}{query}"


def client(url: str, *, aio: bool = False, max_connections: int | None = None, **options: Any):
    """A cluster client for ``url``: ``aio`` for ``redis.asyncio``.

    As :func:`cluster.redis_client.redis_client` (which calls this for a
    cluster URL, after checking the plain-node form of the URL); ``options``
    go to the connections and win over the URL's. ``max_connections`` bounds
    the connections to each node of a synchronous client only: redis-py's
    asyncio cluster client cannot wait for a free connection (past its limit
    a command fails at once, as a connection error that makes it re-read the
    slot map and retry: a burst of hellos turned into a storm), so an
    asyncio client opens as many as it has commands in flight, as many as
    the gateway has hellos under way at most.
    """
    from redis.connection import parse_url

    nodes, single = parse(url)
    node = {**parse_url(single), **options}
    for k in ("host", "port", "db", "connection_class"):
        node.pop(k, None)
    if single.startswith("rediss:"):
        node["ssl"] = True
    if aio:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        # ClusterNode's own default (100) would bound the connections, failing past it.
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes], max_connections=2**31, **node
        )
    extra = {} if max_connections is None else {"max_connections": max_connections}
    from redis.cluster import ClusterNode as SyncNode
    from redis.cluster import RedisCluster as SyncCluster

    return SyncCluster(startup_nodes=[SyncNode(h, p) for h, p in nodes], **extra, **node)


def is_cluster_client(r: Any) -> bool:
    """True if ``r`` is a redis-py cluster client (sync or asyncio)."""
    from redis.asyncio.cluster import RedisCluster
    from redis.cluster import RedisCluster as SyncCluster

    return isinstance(r, (RedisCluster, SyncCluster))


async def mget(r: Any, keys: Sequence[str]) -> list[Any]:
    """MGET of ``keys`` on whatever ``r`` is: on Redis Cluster, one MGET per slot (not atomic)."""
    if is_cluster_client(r):
        return await r.mget_nonatomic(keys)
    return await r.mget(keys)


def mget_sync(r: Any, keys: Sequence[str]) -> list[Any]:
    """:func:`mget` for a synchronous client."""
    if is_cluster_client(r):
        return r.mget_nonatomic(keys)
    return r.mget(keys)


def node_of(r: Any, key: str | bytes) -> str:
    """The name (``host:port``) of the primary serving ``key`` in cluster client ``r``'s slot map."""
    slot = key_slot(key.encode() if isinstance(key, str) else key)
    return r.nodes_manager.get_node_from_slot(slot).name
