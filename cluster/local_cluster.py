"""A Ray cluster of several nodes on one machine, started with ``ray start`` (tests, benchmarks).

A head and worker nodes, each its own raylet with its own temp directory,
ports and resources (``{"lifeline_node_a": 1}``, ...), all sharing one
token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``): :attr:`LocalCluster.env`
is the environment a driver of this cluster needs. Ports are chosen free,
never Ray's defaults, so it runs beside another Ray cluster on the machine
(the test suite's own) and never touches it: :meth:`LocalCluster.stop` stops
only the processes of its own temp directories, where ``ray stop`` would
stop every Ray process of the user.

:meth:`LocalCluster.kill_node` is a node failure: SIGKILL to the node's
raylet and every process it started (its workers, the actors on it, its
agents), as Ray's own ``cluster_utils.Cluster.remove_node`` does; the head
notices within about 2 s (``FAST_FAILURE_DETECTION``: a missed health check
every 0.5 s, dead after 3), not Ray's default of ~15 s.

Limits: one machine shares its CPUs among the nodes, so this measures what
crossing raylets costs (RPC, object transfer over the loopback), not what
more machines add.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cluster.ray_sessions import processes_of

# The GCS declares a node dead after 3 missed health checks 0.5 s apart (Ray: 5 x 3 s). A
# check may take 1 s and a new node gets 5 s before its first: on a busy machine tighter
# settings declared healthy nodes dead (a raylet still starting, one slow answer).
FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 5000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
START_TIMEOUT_S = 120.0
RESOURCE_PREFIX = "lifeline_node_"  # + a worker's name: the custom resource only it has


def node_name(resources: Mapping[str, float]) -> str:
    """Which node of a LocalCluster has ``resources`` (Ray's per-node table): a worker's
    name, or ``head`` (the one without a resource of its own)."""
    own = [k for k in resources if k.startswith(RESOURCE_PREFIX)]
    return own[0].removeprefix(RESOURCE_PREFIX) if own else "head"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalNode:
    """One ``ray start`` of the cluster: the head, or worker ``name``."""

    name: str
    temp_dir: Path
    cpus: int
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        """The custom resource only this node has (``lifeline_node_<name>``)."""
        return f"{RESOURCE_PREFIX}{self.name}"

    def raylet(self) -> psutil.Process:
        """This node's raylet process."""
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                cmd = proc.info["cmdline"] or []
                if cmd and cmd[0].endswith("/raylet") and any(str(self.temp_dir) in a for a in cmd):
                    return proc
            except psutil.Error:
                continue
        raise LookupError(f"no raylet running for node {self.name} ({self.temp_dir})")

    def processes(self) -> list[psutil.Process]:
        """The raylet and every process under it (workers, actors, agents)."""
        raylet = self.raylet()
        return [raylet, *raylet.children(recursive=True)]

    def kill(self, procs: list[psutil.Process] | None = None) -> list[int]:
        """SIGKILL this node's raylet and every process under it (a lost node); their pids.

        ``procs``: :meth:`processes`, listed beforehand (finding them takes a while on
        a busy machine; a caller timing the failure starts its clock after that).
        """
        procs = self.processes() if procs is None else procs
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        return [p.pid for p in procs]


class LocalCluster:
    """``ray start --head`` plus one ``ray start --address`` per worker name, on this machine."""

    def __init__(
        self,
        workers: Sequence[str] = ("a", "b"),
        cpus: int = 1,
        head_cpus: int = 1,
        dashboard: bool = True,
        system_config: dict | None = None,
        root: str | Path | None = None,
        gcs_redis: str | None = None,
    ) -> None:
        # Short: Ray's Unix sockets live under it (a socket path has at most 107 bytes).
        self.root = Path(root or tempfile.mkdtemp(prefix="llray-", dir="/tmp"))
        self.head = LocalNode("head", self.root / "head", head_cpus)
        self.workers = {w: LocalNode(w, self.root / w, cpus) for w in workers}
        self.dashboard = dashboard
        self.system_config = FAST_FAILURE_DETECTION if system_config is None else system_config
        self.port = free_port()
        self.dashboard_port = free_port()
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_ADDRESS": self.address,
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)
        # GCS fault tolerance: the GCS keeps its tables in this Redis ("host:port"), under a
        # namespace of this cluster's own, and a restarted GCS finds them there.
        self.gcs_namespace = f"llgcs-{self.root.name}"
        if gcs_redis:
            self.env["RAY_REDIS_ADDRESS"] = gcs_redis
            self.env["RAY_external_storage_namespace"] = self.gcs_namespace

    @property
    def address(self) -> str:
        """The GCS address a driver joins (``ray.init(address=...)``, ``RAY_ADDRESS``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Where ``ray.util.state`` asks (the head's dashboard)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ports(self) -> list[str]:
        """Every port ``ray start`` would otherwise take a fixed default for."""
        return [
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
        ]

    def _start(self, node: LocalNode, head: bool) -> None:
        argv = ["ray", "start", "--num-cpus", str(node.cpus), "--temp-dir", str(node.temp_dir)]
        argv += ["--disable-usage-stats", *self._ports()]
        if head:
            argv += ["--head", "--port", str(self.port)]
            argv += ["--ray-client-server-port", str(free_port())]
            argv += ["--include-dashboard", "true" if self.dashboard else "false"]
            argv += ["--dashboard-port", str(self.dashboard_port), "--dashboard-host", "127.0.0.1"]
            if self.system_config:
                argv += ["--system-config", json.dumps(self.system_config)]
        else:
            argv += ["--address", self.address]
            argv += ["--resources", json.dumps({node.resource: 1, **node.resources})]
        for _ in range(2):  # once more: on a busy machine a raylet can miss its start deadline
            done = subprocess.run(
                argv, env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT_S
            )
            if done.returncode == 0:
                return
            # `ray start` gives a raylet 30 s to register (fixed in Ray); a late one is stopped
            # before the next try, which would otherwise make a second node of the same name.
            _stop(processes_of(str(node.temp_dir)))
        if done.returncode != 0:
            raise RuntimeError(f"ray start ({node.name}) failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> LocalCluster:
        """Start the head, then each worker; returns when every node has joined.

        One at a time: started together on a busy 2-core machine, raylets missed
        ``ray start``'s registration deadline.
        """
        self._start(self.head, head=True)
        for node in self.workers.values():
            self._start(node, head=False)
        return self

    def restart_gcs(self) -> subprocess.Popen:
        """SIGKILL the head's GCS server and start it again (:func:`restart_gcs`)."""
        return restart_gcs(self.head.temp_dir)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL worker ``name``'s raylet and every process under it; their pids."""
        return self.workers[name].kill()

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop every process of this cluster (and of no other), then remove its files."""
        _stop(processes_of(str(self.root)), grace_s)
        subprocess.run(["rm", "-rf", str(self.root)], check=False)


def _stop(procs: list[psutil.Process], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace_s``."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def gcs_server(head_dir: str | Path) -> psutil.Process:
    """The GCS server process of the head whose temp directory is ``head_dir``."""
    for proc in processes_of(str(head_dir)):
        with contextlib.suppress(psutil.Error):
            if proc.name() == "gcs_server":
                return proc
    raise LookupError(f"no GCS server running for {head_dir}")


def restart_gcs(head_dir: str | Path) -> subprocess.Popen:
    """SIGKILL the GCS server and start it again as it was (command line, environment).

    What a head restart does to the GCS, without touching the head's raylet. Only
    with ``gcs_redis`` (GCS fault tolerance): without it the new GCS starts empty.
    """
    old = gcs_server(head_dir)
    argv, env = old.cmdline(), old.environ()
    old.kill()
    old.wait(10)
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
