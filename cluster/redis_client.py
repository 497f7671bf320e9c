"""The one way Lifeline opens a Redis client: :func:`redis_client`, sync or asyncio.

A Redis is named by one URL string, which every process and actor is
given: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS,
``unix://``, ``redis+sentinel://`` (cluster/sentinel.py: the client asks
the Sentinels for the primary) or ``redis+cluster://`` (cluster/redis_cluster.py:
a Redis Cluster client that routes each key to its node). The TLS settings (``LIFELINE_REDIS_CA``, ``LIFELINE_REDIS_CERT``,
``LIFELINE_REDIS_KEY``) are folded into it as redis-py's own query options
(``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``) by
:func:`cluster.config.Settings.redis_target`, so a shard, a Serve replica or
a gateway process given the URL connects exactly as the driver does, with
no setting of its own to agree.

Certificate verification is always on for ``rediss://``: a URL that turns
it off (``ssl_cert_reqs=none``/``optional``, ``ssl_check_hostname=false``)
is refused with :class:`RedisConfigError`, because an unverified TLS
connection hands the password and every event to whoever sits in between
(docs/SECURITY.md). Without a CA setting the system's trust store is used.

Limits: the URL carries the password; print it only through
:func:`cluster.config.redact_url`. Options given as keyword arguments win
over the URL's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, overload
from urllib.parse import parse_qsl, urlsplit

import redis
import redis.asyncio as aioredis

from cluster import redis_cluster, sentinel
from cluster.config import is_loopback, redact_url

# (query option, the setting that fills it) for the files a TLS connection may read.
TLS_FILES = (
    ("ssl_ca_certs", "LIFELINE_REDIS_CA"),
    ("ssl_certfile", "LIFELINE_REDIS_CERT"),
    ("ssl_keyfile", "LIFELINE_REDIS_KEY"),
)
SCHEMES = ("redis", "rediss", "unix")


class RedisConfigError(ValueError):
    """A Redis URL or TLS setting that cannot work or would not be safe; the message says which."""


def check_url(url: str) -> None:
    """Raise :class:`RedisConfigError` unless ``url`` is a Redis URL Lifeline may connect with.

    Checked: the scheme; TLS options only with ``rediss://``; verification
    not turned off; a client certificate together with its key; the files
    named exist. The message shows the URL redacted.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise RedisConfigError(f"REDIS_URL is not a URL: {redact_url(url)}") from exc
    shown = redact_url(url)
    if parts.scheme not in SCHEMES:
        raise RedisConfigError(
            f"REDIS_URL={shown}: the scheme must be redis://, rediss:// (TLS) or unix://"
        )
    options = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    tls_options = sorted(k for k in options if k.startswith("ssl_"))
    if tls_options and parts.scheme != "rediss":
        raise RedisConfigError(
            f"REDIS_URL={shown}: TLS settings ({', '.join(tls_options)}, from "
            "LIFELINE_REDIS_CA/CERT/KEY) need a rediss:// URL; a redis:// one would ignore "
            "them and send the password in clear"
        )
    if options.get("ssl_cert_reqs", "required").lower() not in ("required", "cert_required"):
        raise RedisConfigError(
            f"REDIS_URL={shown}: ssl_cert_reqs must stay 'required' (Lifeline always verifies "
            "Redis's certificate: set LIFELINE_REDIS_CA to the CA that signed it)"
        )
    if options.get("ssl_check_hostname", "true").lower() in ("0", "false", "no", "off", "n"):
        raise RedisConfigError(
            f"REDIS_URL={shown}: ssl_check_hostname cannot be turned off (the certificate must "
            "name the host in REDIS_URL)"
        )
    if ("ssl_certfile" in options) != ("ssl_keyfile" in options):
        raise RedisConfigError(
            "LIFELINE_REDIS_CERT and LIFELINE_REDIS_KEY go together (mutual TLS): set both or neither"
        )
    for option, setting in TLS_FILES:
        path = options.get(option)
        if path is not None and not Path(path).is_file():
            raise RedisConfigError(f"{setting} ({option}) names no readable file: {path}")


def cleartext_warning(url: str) -> str | None:
    """What to warn about when ``url`` sends the password and events in clear across a network.

    ``None`` for ``rediss://``, a unix socket, or plain ``redis://`` to a
    loopback address (a local Redis, or a local TLS tunnel such as stunnel);
    a warning for plain ``redis://`` to any other host. A warning, not a
    refusal, even in production mode: Redis on a private network without TLS
    is common (the Kubernetes manifests here run it so, cluster/kubernetes),
    and only the operator knows whether that network is private.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis" or is_loopback(parts.hostname or "localhost"):
        return None
    return (
        f"REDIS_URL={redact_url(url)} is plain redis:// to {parts.hostname}, not this machine: "
        "the password and every visitor's event cross the network in clear. Use rediss:// "
        "(LIFELINE_REDIS_CA names the CA that signed Redis's certificate) unless that network "
        "is private to Lifeline and Redis"
    )


@overload
def redis_client(
    url: str, *, aio: Literal[False] = False, max_connections: int | None = ..., **options: Any
) -> redis.Redis: ...
@overload
def redis_client(
    url: str, *, aio: Literal[True], max_connections: int | None = ..., **options: Any
) -> aioredis.Redis: ...
def redis_client(
    url: str, *, aio: bool = False, max_connections: int | None = None, **options: Any
) -> redis.Redis | aioredis.Redis:
    """A client for the Redis at ``url`` (:func:`check_url` first): ``aio`` for ``redis.asyncio``.

    ``max_connections``: a pool of at most that many connections that waits
    (up to 10 s) for a free one instead of failing, as the gateway and the
    shards want: a burst of hundreds of hellos at once needs more than the
    limit for a moment, and waiting a few milliseconds is the right answer
    under load. ``None``: redis-py's default pool, without a limit (the
    console's live streams each hold a connection). ``options``
    (``socket_timeout``, ``decode_responses``, ...) go to the connections.
    Opening a client connects nothing: the first command does.
    """
    if sentinel.is_sentinel(url):
        # Through Sentinel (cluster/sentinel.py): a client that follows the primary.
        try:
            return sentinel.client(url, aio=aio, max_connections=max_connections, **options)
        except sentinel.BadSentinelURL as exc:
            raise RedisConfigError(f"REDIS_URL={redact_url(url)}: {exc}") from exc
    if redis_cluster.is_cluster(url):
        try:
            _, single = redis_cluster.parse(url)
        except redis_cluster.BadClusterURL as exc:
            raise RedisConfigError(f"REDIS_URL={redact_url(url)}: {exc}") from exc
        check_url(single)  # the TLS rules hold for every node
        return redis_cluster.client(url, aio=aio, max_connections=max_connections, **options)
    check_url(url)
    module = aioredis if aio else redis
    if max_connections is None:
        return module.Redis.from_url(url, **options)
    pool = module.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, **options
    )
    return module.Redis(connection_pool=pool)
