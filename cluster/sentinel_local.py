"""A local Redis primary, its replicas and three Sentinels on free ports: for tests and benchmarks.

Real Debian ``redis-server`` and ``redis-sentinel`` processes in a temporary
directory, each with AOF (``appendfsync everysec``), loopback only, no
password. Sentinel is tuned to fail over fast (``down-after-milliseconds``
1000, ``failover-timeout`` 3000): production keeps its defaults (cluster/kubernetes/).

Limits: one machine, so this proves the client side (following the new
primary, what an acknowledgement survives), not network partitions.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from cluster.redis_client import redis_client

MASTER = "lifeline"
# Debian installs both under /usr/bin; another redis-server earlier on PATH (a
# pyenv shim) may lack sentinel mode.
SERVER = "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else "redis-server"
SENTINEL = (
    "/usr/bin/redis-sentinel" if Path("/usr/bin/redis-sentinel").exists() else "redis-sentinel"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.05)  # polling other processes' state: there is no event to await
    raise TimeoutError(f"{what} not within {timeout:g} s")


class SentinelSet:
    """``replicas`` + 1 Redis servers and ``sentinels`` Sentinels; :meth:`stop` ends them all."""

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        if shutil.which(SENTINEL) is None:
            raise RuntimeError(
                "redis-sentinel is not installed (Debian: apt install redis-sentinel)"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="lifeline-sentinel-")
        self.dir = Path(self._tmp.name)
        self.procs: dict[int, subprocess.Popen] = {}  # by port
        self.redis_ports: list[int] = []
        self.sentinel_ports: list[int] = []
        try:
            for i in range(replicas + 1):
                port = _free_port()
                extra = [] if i == 0 else ["--replicaof", "127.0.0.1", str(self.redis_ports[0])]
                self._server(port, extra)
            _wait_until(lambda: self._in_sync(replicas), 20, "replicas in sync")
            quorum = sentinels // 2 + 1
            for _ in range(sentinels):
                port = _free_port()
                conf = self.dir / f"sentinel-{port}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {self.redis_ports[0]} {quorum}\n"
                    f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
                    f"sentinel failover-timeout {MASTER} {failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {MASTER} 1\n"
                )
                self.procs[port] = subprocess.Popen(
                    [SENTINEL, str(conf), "--logfile", str(self.dir / f"sentinel-{port}.log")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self.sentinel_ports.append(port)
            # Every sentinel knows the others and the replicas before anything may fail.
            _wait_until(self._sentinels_ready, 20, "sentinels to discover each other")
        except BaseException:
            self.stop()
            raise

    def _server(self, port: int, extra: list[str]) -> None:
        work = self.dir / f"redis-{port}"
        work.mkdir()
        self.procs[port] = subprocess.Popen(
            [SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work)]
            + ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
            + ["--logfile", str(work / "redis.log")]
            # A replica's first sync starts at once (the default waits 5 s for others to join).
            + ["--repl-diskless-sync-delay", "0"]
            + extra,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.redis_ports.append(port)
        _wait_until(lambda: self.client(port).ping(), 20, f"redis on {port}")

    def _in_sync(self, replicas: int) -> bool:
        info = self.client(self.redis_ports[0]).info("replication")
        online = [info.get(f"slave{i}", {}).get("state") for i in range(replicas)]
        return online == ["online"] * replicas

    def _sentinels_ready(self) -> bool:
        n = len(self.sentinel_ports)
        for port in self.sentinel_ports:
            m = self.client(port).sentinel_master(MASTER)
            if m["num-other-sentinels"] != n - 1 or m["num-slaves"] != len(self.redis_ports) - 1:
                return False
        return True

    @staticmethod
    def client(port: int) -> redis.Redis:
        return redis_client(
            f"redis://127.0.0.1:{port}/0", socket_timeout=2, socket_connect_timeout=2
        )

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL Lifeline is given (cluster/sentinel.py)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def primary(self) -> int:
        """The port of the primary the first answering sentinel names."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                addr = self.client(port).sentinel_get_master_addr_by_name(MASTER)
                if addr:
                    return int(addr[1])
        raise RuntimeError("no sentinel names a primary")

    def kill_primary(self) -> int:
        """SIGKILL the current primary (no AOF flush, no goodbye); returns its port."""
        port = self.primary()
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return port

    def wait_failover(self, old: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names a primary other than ``old`` that answers as one."""

        def switched() -> bool:
            named = {
                int(self.client(p).sentinel_get_master_addr_by_name(MASTER)[1])
                for p in self.sentinel_ports
            }
            if len(named) != 1 or old in named:
                return False
            return self.client(named.pop()).info("replication")["role"] == "master"

        _wait_until(switched, timeout, "failover")
        return self.primary()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._tmp.cleanup()
