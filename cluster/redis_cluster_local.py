"""A local Redis Cluster of several primaries on free ports: for tests and benchmarks.

Real Debian ``redis-server`` processes with ``cluster-enabled yes`` in a
temporary directory, loopback only, no password, joined with ``redis-cli
--cluster create`` so the 16,384 slots are spread evenly over the primaries.
Each primary may have replicas (``replicas`` per primary).

Limits: one machine; no persistence (``--save ''``, no AOF): a killed
primary's data lives on only in its replicas, which is what the failover
test relies on (tests/test_redis_cluster_failover.py, with ``WAIT 1``).
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from cluster.redis_client import redis_client
from cluster.sentinel_local import SERVER, _free_port, _wait_until

CLI = "/usr/bin/redis-cli" if Path("/usr/bin/redis-cli").exists() else "redis-cli"


class RedisClusterSet:
    """``primaries`` x (1 + ``replicas``) cluster-mode servers; :meth:`stop` ends them all."""

    def __init__(self, primaries: int = 3, replicas: int = 0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="lifeline-rcluster-")
        self.dir = Path(self._tmp.name)
        self.procs: dict[int, subprocess.Popen] = {}
        self.ports: list[int] = []
        try:
            for _ in range(primaries * (1 + replicas)):
                self._server(_free_port())
            subprocess.run(
                [CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
                + ["--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            _wait_until(self._ready, 30, "cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise

    def _server(self, port: int) -> None:
        work = self.dir / f"redis-{port}"
        work.mkdir()
        self.procs[port] = subprocess.Popen(
            [SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work)]
            + ["--cluster-enabled", "yes", "--cluster-config-file", str(work / "nodes.conf")]
            # The bus port is given: the default (port + 10000) overflows for a high free port.
            + ["--cluster-port", str(_free_port()), "--cluster-node-timeout", "2000"]
            + ["--appendonly", "no", "--save", ""]
            + ["--logfile", str(work / "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ports.append(port)
        _wait_until(lambda: self.client(port).ping(), 20, f"redis on {port}")

    def _ready(self) -> bool:
        for port in self.ports:
            node = self.client(port)
            info = node.execute_command("CLUSTER", "INFO").decode()
            # Every node knows every other one, so a redirect can never name a stranger.
            known = node.execute_command("CLUSTER", "NODES").decode().strip().splitlines()
            if "cluster_state:ok" not in info or len(known) != len(self.ports):
                return False
        return True

    def _nodes(self, port: int) -> list[list[str]]:
        """``CLUSTER NODES`` as seen by the node on ``port``: one split line per node."""
        raw = self.client(port).execute_command("CLUSTER", "NODES").decode()
        return [line.split() for line in raw.strip().splitlines()]

    def primaries(self) -> list[int]:
        """The ports of the primaries serving slots, as a live node sees them."""
        live = next(p for p in self.ports if self.procs[p].poll() is None)
        return sorted(
            int(n[1].split(":")[1].split("@")[0])
            for n in self._nodes(live)
            if "master" in n[2] and "fail" not in n[2] and len(n) > 8
        )

    def kill_primary(self) -> int:
        """SIGKILL one primary (the first serving slots); returns its port."""
        port = self.primaries()[0]
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return port

    def wait_failover(self, old: int, timeout: float = 30.0) -> int:
        """Wait until a replica of ``old`` serves its slots and every live node says
        ``cluster_state:ok``; returns the new primary's port."""
        live = [p for p in self.ports if self.procs[p].poll() is None]
        before = set(self.primaries()) - {old}

        def switched() -> bool:
            if set(self.primaries()) - before - {old} == set():
                return False
            return all(
                "cluster_state:ok" in self.client(p).execute_command("CLUSTER", "INFO").decode()
                for p in live
            )

        _wait_until(switched, timeout, "Redis Cluster failover")
        return (set(self.primaries()) - before - {old}).pop()

    @staticmethod
    def client(port: int) -> redis.Redis:
        """A plain client of one node (cluster commands, inspection)."""
        return redis_client(
            f"redis://127.0.0.1:{port}/0", socket_timeout=2, socket_connect_timeout=2
        )

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL Lifeline is given (cluster/redis_client.py)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+cluster://{hosts}"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=5)
        self._tmp.cleanup()


def main() -> None:
    """``python -m cluster.redis_cluster_local [primaries] [replicas]``: start one, print its
    URL, run until interrupted (to try Lifeline or a benchmark on Redis Cluster)."""
    import sys

    primaries = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    replicas = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # taken by sigwait below, not the default
    c = RedisClusterSet(primaries=primaries, replicas=replicas)
    print(c.url, flush=True)
    try:
        signal.sigwait(stop)
    finally:
        c.stop()


if __name__ == "__main__":
    main()
