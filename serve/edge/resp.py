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


class ScriptCaller:
    """``await caller(arg)``: run ``script`` with no keys and one argument, return its reply.

    ``preload``: load the script whenever a connection opens (off only to
    test what happens when Redis does not know it).
    """

    def __init__(self, client: aioredis.Redis, script: str, preload: bool = True) -> None:
        pool = client.connection_pool
        self._settings = pool.connection_kwargs
        # For TLS, redis-py's own connection builds the context from the URL's ssl_* options.
        self._tls = (
            pool.connection_class(**pool.connection_kwargs).ssl_context
            if issubclass(pool.connection_class, aioredis.SSLConnection)
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
        fut = self._write(conn, b"%s$%d\r\n%s\r\n" % (self._evalsha, len(arg), arg))
        return self._reply(conn, fut, arg, conn.written)

    async def _reply(self, conn: _Replies, fut: asyncio.Future, arg: bytes, number: int) -> Any:
        reply = await fut
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            if conn.written != number:
                # Calls written after this one have run already, or will before a
                # resend would: this one cannot keep its place. Fail it and them.
                conn.drop()
                raise RedisConnectionError("Redis lost the script with calls in flight")
            reply = await self._write(conn, command(b"EVAL", self._script, 0, arg))
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    def _write(self, conn: _Replies, data: bytes) -> asyncio.Future:
        if conn.closed:
            raise RedisConnectionError("connection to Redis lost")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        conn.waiting.append(fut)
        conn.written += 1
        assert conn.transport is not None
        conn.transport.write(data)
        timer = loop.call_later(self.timeout_s, self._expire, conn, fut)
        fut.add_done_callback(lambda _f: timer.cancel())
        return fut

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
                opening = loop.create_connection(
                    _Replies,
                    s.get("host", "localhost"),
                    s.get("port", 6379),
                    ssl=self._tls.get() if self._tls is not None else None,
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
