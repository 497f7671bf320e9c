"""One Lua script called over a Redis connection of its own: the gateway's append round.

Why not redis-py for this one call: the gateway makes one append call per
round, ~450 rounds per second each at 10,000 events/s, and redis-py's
layers (connection pool, retries, command encoding, observability hooks,
response callbacks) cost about twice the client CPU per call of one write
of a pre-encoded ``EVALSHA`` and a hiredis parse of the reply: 153 against
67 us, system calls included (``loadtests/bench_stages.py``, its
``append`` stage, measures both in one run).
Everything else the gateway asks of Redis still goes through redis-py.

The connection settings (host, port or unix socket, TLS, user, password,
database, timeouts) are taken from a redis-py client, so there is one place
where a ``REDIS_URL`` is understood.

Calls can be pipelined: :meth:`ScriptCaller.start` writes a call at once
and hands back an awaitable of its reply, so a second call can be on its
way while Redis runs the first. Redis runs them in the order they were
written, which is what lets the gateway keep two append rounds in flight.

Behind Sentinel (a ``redis+sentinel://`` client, cluster/sentinel.py), each
connection is opened to the primary the sentinels name at that moment, and
a ``READONLY`` reply (the primary was demoted: a failover happened behind a
live connection) fails the call with a connection error and closes the
connection, so the next call asks the sentinels again. The gateway's
append round fails unacknowledged and its clients resend; the append
script's seq check keeps a resend from appending twice (serve/edge/store.py).

Replica acknowledgement (``wait``: N replicas, T ms): each call is followed
on the same connection, in the same write, by ``WAIT N T``; the call's reply
is handed back only if ``WAIT`` says at least N replicas have every write of
this connection so far, else it fails with :class:`ReplicasBehind`. Still one
round trip: Redis answers the ``WAIT`` as soon as the replicas confirm.

Limits: one script per instance; RESP2 replies; replies are matched to
calls in order, so a call that times out closes the connection (the next
call opens a new one). The script is loaded (``SCRIPT LOAD``) whenever a
connection opens. If Redis forgets it on a live connection (``SCRIPT
FLUSH``), a call with nothing written behind it is sent once more in full
with ``EVAL``; a call with later calls already written behind it fails
with a connection error and closes the connection instead, because sending
it again would run it after them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cluster.sentinel import is_sentinel_pool, primary_of


def command(*args: bytes | str | int) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Replies(asyncio.Protocol):
    """The socket's side: feeds hiredis and hands each reply to the oldest waiting call."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.written = 0  # calls written so far: a call's own number tells what came after it

    def drop(self) -> None:
        """Close at once: no call may be written on it from now on."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(RedisConnectionError(f"connection to Redis lost: {exc}"))


def _retrieved(fut: asyncio.Future) -> None:
    """Mark a reply nobody awaits any more as seen (asyncio would warn of its error)."""
    if not fut.cancelled():
        fut.exception()


class ReplicasBehind(RedisConnectionError):
    """``WAIT`` confirmed fewer replicas than asked: the call ran on the primary, unconfirmed.

    ``reply``: the call's own reply (what it did).
    """

    def __init__(self, message: str, reply: Any = None) -> None:
        super().__init__(message)
        self.reply = reply


class ScriptCaller:
    """``await caller(arg)``: run ``script`` with no keys and one argument, return its reply.

    ``preload``: load the script whenever a connection opens (off only to
    test what happens when Redis does not know it). ``wait``: (replicas,
    timeout ms) each call's writes must reach before its reply is handed
    back (the module docstring says how); None: no replica acknowledgement.
    """

    def __init__(
        self,
        client: aioredis.Redis | None,
        script: str,
        preload: bool = True,
        wait: tuple[int, int] | None = None,
        node: Any = None,
    ) -> None:
        """``client``: the redis-py client whose settings the connection takes; or ``node``,
        one node of a redis-py asyncio cluster client (cluster/redis_cluster.py)."""
        if node is not None:
            kwargs, conn_class = node.connection_kwargs, node.connection_class
            self._settings = {**kwargs, "host": node.host, "port": node.port}
            self._sentinel = None
        else:
            assert client is not None
            pool = client.connection_pool
            kwargs, conn_class = pool.connection_kwargs, pool.connection_class
            self._settings = kwargs
            self._sentinel = pool if is_sentinel_pool(pool) else None
        self._wait = wait if wait and wait[0] > 0 else None
        self._wait_cmd = command(b"WAIT", *self._wait) if self._wait else b""
        # For TLS, redis-py's own connection builds the context from the URL's ssl_* options.
        self._tls = (
            conn_class(**kwargs).ssl_context
            if issubclass(conn_class, aioredis.SSLConnection)
            else None
        )
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()
        # EVALSHA sha 0 <arg>: the array header and first three strings, encoded once.
        self._evalsha = b"*4\r\n$7\r\nEVALSHA\r\n$40\r\n" + self._sha + b"\r\n$1\r\n0\r\n"
        self._preload = preload
        self._conn: _Replies | None = None
        self._connecting = asyncio.Lock()
        self.timeout_s = float(self._settings.get("socket_timeout") or 10.0)

    async def __call__(self, arg: bytes) -> Any:
        return await (await self.start(arg))

    async def start(self, arg: bytes) -> Awaitable[Any]:
        """Write the call now (connecting first if need be); returns an awaitable of its reply.

        Calls are run by Redis in the order they were started.
        """
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        call = b"%s$%d\r\n%s\r\n" % (self._evalsha, len(arg), arg)
        if self._wait is None:
            return self._reply(conn, self._write(conn, call), None, arg, conn.written)
        # The WAIT goes in the same write, so the call still costs one round trip.
        fut, acked = self._write_pair(conn, call)
        return self._reply(conn, fut, acked, arg, conn.written)

    async def _reply(
        self,
        conn: _Replies,
        fut: asyncio.Future,
        acked: asyncio.Future | None,
        arg: bytes,
        number: int,
    ) -> Any:
        if acked is not None:  # whatever becomes of the call, its WAIT's error is seen
            acked.add_done_callback(_retrieved)
        reply = await fut
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            if conn.written != number:
                # Calls written after this one have run already, or will before a
                # resend would: this one cannot keep its place. Fail it and them.
                conn.drop()
                raise RedisConnectionError("Redis lost the script with calls in flight")
            if acked is not None:
                await acked  # the WAIT written behind the failed call: its reply comes first
                reply, acked = self._write_pair(conn, command(b"EVAL", self._script, 0, arg))
                acked.add_done_callback(_retrieved)
                reply = await reply
            else:
                reply = await self._write(conn, command(b"EVAL", self._script, 0, arg))
        if isinstance(reply, hiredis.ReplyError):
            if "READONLY" in str(reply):
                # A replica now (a failover demoted it): nothing of this call ran.
                # Close, so the next call asks the sentinels for the primary.
                conn.drop()
                raise RedisConnectionError(f"Redis is a replica now: {reply}")
            raise ResponseError(str(reply))
        if acked is not None:
            replicas = await acked
            if isinstance(replicas, hiredis.ReplyError) or replicas < self._wait[0]:  # type: ignore[index]
                raise ReplicasBehind(
                    f"WAIT: {replicas} of {self._wait[0]} replicas confirmed in {self._wait[1]} ms",  # type: ignore[index]
                    reply,
                )
        return reply

    def _write_pair(self, conn: _Replies, call: bytes) -> tuple[asyncio.Future, asyncio.Future]:
        """Write ``call`` and the WAIT behind it at once; the futures of both replies.

        The WAIT's timer is the call's plus the WAIT's own timeout, since Redis
        holds its reply that long before answering.
        """
        return self._write(conn, call + self._wait_cmd, replies=2)

    def _write(self, conn: _Replies, data: bytes, replies: int = 1) -> Any:
        """Write ``data`` (``replies`` commands); the future of its reply (a tuple of them for 2)."""
        if conn.closed:
            raise RedisConnectionError("connection to Redis lost")
        loop = asyncio.get_running_loop()
        futs = []
        for k in range(replies):
            fut = loop.create_future()
            conn.waiting.append(fut)
            # A WAIT's reply may take its own timeout on top of the call's.
            limit = self.timeout_s + (self._wait[1] / 1000.0 if k and self._wait else 0.0)
            timer = loop.call_later(limit, self._expire, conn, fut)
            fut.add_done_callback(lambda _f, t=timer: t.cancel())
            futs.append(fut)
        conn.written += replies
        assert conn.transport is not None
        conn.transport.write(data)
        return futs[0] if replies == 1 else tuple(futs)

    def _expire(self, conn: _Replies, fut: asyncio.Future) -> None:
        if not fut.done():
            fut.set_exception(RedisTimeoutError(f"no reply from Redis in {self.timeout_s:g} s"))
            conn.drop()  # later replies would answer the wrong calls: this connection is done

    async def _connect(self) -> _Replies:
        async with self._connecting:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            loop = asyncio.get_running_loop()
            s = self._settings
            connect_timeout = float(s.get("socket_connect_timeout") or 10.0)
            if "path" in s:
                opening = loop.create_unix_connection(_Replies, s["path"])
            else:
                host, port = s.get("host", "localhost"), s.get("port", 6379)
                if self._sentinel is not None:
                    # Whichever primary the sentinels name now (raises if none does).
                    try:
                        host, port = await asyncio.wait_for(
                            primary_of(self._sentinel), connect_timeout
                        )
                    except asyncio.TimeoutError as exc:
                        raise RedisConnectionError("no sentinel named a primary") from exc
                opening = loop.create_connection(
                    _Replies, host, port, ssl=self._tls.get() if self._tls is not None else None
                )
            try:
                _, conn = await asyncio.wait_for(opening, connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            setup = []
            if s.get("password"):
                login = (s["username"], s["password"]) if s.get("username") else (s["password"],)
                setup.append(command(b"AUTH", *login))
            if s.get("db"):
                setup.append(command(b"SELECT", s["db"]))
            if self._preload:
                setup.append(command(b"SCRIPT", b"LOAD", self._script))
            for step in setup:
                reply = await self._write(conn, step)
                if isinstance(reply, hiredis.ReplyError):
                    assert conn.transport is not None
                    conn.transport.close()
                    raise RedisConnectionError(f"Redis refused the connection: {reply}")
            self._conn = conn
            return conn

    def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
