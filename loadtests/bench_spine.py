"""Load benchmark of the real-time spine, against a bare WebSocket echo ceiling.

Starts ``lifeline up`` (its own Ray cluster, the Redis at $REDIS_URL or
127.0.0.1:6379) and a bare ``websockets`` echo server as subprocesses, then,
for each run, drives both from separate load-generator processes:

* **echo ceiling**: the same number of connections, each sending a small
  msgpack frame and waiting for its echo, as fast as possible (frames/s);
* **Lifeline**: each connection is a visitor replaying a journey (simulated,
  Diginetica or YOOCHOOSE, rotating), with Poisson event times at ``--rate``
  events/s and the real client's batching (flush 100 ms after the first
  pending event, at once for urgent events). Each visitor keeps one socket
  and one session for the whole run and replays journeys back to back.

Reports medians over the runs: events/s acknowledged, p50/p95/p99 from an
event's send to its ack and from a triggering event's send to the
intervention's arrival, CPU and RSS per process, memory per connected
session on the gateway, and the ratio of Lifeline's events/s to the echo
ceiling measured in the same run.

    python loadtests/bench_spine.py --sessions 2000 --rate 5 --duration 30 --runs 3

Tracing (cluster/tracing.py): ``--trace`` runs the server with tracing on at
``--trace-sample`` (default 0.01, the service's default), exporting OTLP/HTTP
to ``--trace-endpoint`` or, without one, to a span-counting receiver this
script runs (serve/dev/otlp_sink.py); without ``--trace`` tracing is off
(``LIFELINE_TRACE_SAMPLE=0``). For the A/B, alternate single runs of each
and sum them up with ``loadtests/ab_summary.py``.

Help chats (loadtests/chat_load.py): ``--chats N`` runs N chats alongside
the sessions, from a load-generator process of their own, against a server
with its Serve deployments (the ChatAssistant among them) and the local
Messages API stand-in streaming at ``--llm-first-token-s`` /
``--llm-tokens-per-s``; each run then reports the chats' question -> first
token p50/p95 too. For the chat's cost, compare with ``--serve`` (the same
server, Serve and stand-in included, no chats): the A/B differs in the
chats alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgpack
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.core.events import URGENT_TYPES  # noqa: E402
from loadtests.journeys import SOURCES, load_journeys  # noqa: E402
from loadtests.wsload import WsClient  # noqa: E402
from serve.dev.pyclient import events_frame, hello_frame  # noqa: E402

ORIGIN = "http://loadtest.local"
FLUSH_S = 0.1
TICK_S = 0.002
SENT_KEPT = 200  # send times kept per visitor after their ack


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def pooled_iv(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Intervention latency percentiles over the samples of all ``runs`` (a run sees ~130)."""
    pooled = [x for r in runs for x in r.get("iv_ms", [])]
    out: dict[str, Any] = {"iv_pooled_samples": len(pooled)}
    for p in (50, 95, 99):
        out[f"iv_pooled_p{p}_ms"] = pct(pooled, p)
    return out


def pooled_line(summary: dict[str, Any]) -> str:
    """One line for a :func:`pooled_iv` result."""
    ps = " / ".join(f"{summary[f'iv_pooled_p{p}_ms']:.1f}" for p in (50, 95, 99))
    return f"intervention p50 / p95 / p99 over {summary['iv_pooled_samples']} samples: {ps} ms"


# -- load generator processes ---------------------------------------------------------


class Visitor:
    """One visitor: one socket and one session for the whole run, replaying journeys back to back.

    Events come at Poisson times (``rate`` per second) and are batched and
    resent as the browser client does it (serve/static/lifeline.js): flushed
    100 ms after the first pending event, at once for urgent events; after a
    ``sequence_gap`` everything unacknowledged is resent 30 ms later, after
    ``overloaded`` or ``rate_limited`` 1-3 s later. A cut socket (a gateway
    died) is reopened with the browser's backoff (0.25-0.5 s, doubling),
    the session resumed with its token, and everything unacknowledged resent;
    events made meanwhile wait in ``pending``. Not a task: the process's
    scheduler calls :meth:`step` when the visitor is due.
    """

    def __init__(
        self,
        journeys: list[list[dict]],
        rate: float,
        res: dict[str, Any],
        window: tuple[float, float],
        rng: random.Random,
    ) -> None:
        self.sid = f"lt-{uuid.uuid4().hex[:16]}"
        self.vid = f"v-{uuid.uuid4().hex[:16]}"  # a visitor, as the real client names one
        self.journeys, self.rate, self.res, self.window, self.rng = journeys, rate, res, window, rng
        self.j = rng.randrange(len(journeys))
        self.events, self.idx = journeys[self.j], 0
        self.seq = self.acked = 0
        self.unacked: dict[int, dict] = {}
        self.sent_at: dict[int, float] = {}  # seq -> when first sent
        self.iv_sent: dict[Any, float] = {}  # intervention id -> when its trigger was sent
        self.pending: list[dict] = []
        self.next_at = self.flush_at = self.resend_at = float("inf")
        self.ws: WsClient | None = None
        self.welcome: asyncio.Future | None = None
        self.token: str | None = None  # the resume token of the last welcome
        self.url = ""
        self.open = False  # the socket is up and welcomed
        self.leaving = False  # closed on purpose: no reconnection
        self.cut_at: float | None = None  # perf_counter of the first cut (a gateway died)
        self.resumed_at: float | None = None  # perf_counter of the first resume's welcome
        self.tries = 0  # reconnection attempts

    async def connect(self, ws_url: str) -> None:
        self.url = ws_url
        await self._hello()
        self.next_at = time.perf_counter() + self.rng.expovariate(self.rate)

    async def _hello(self) -> None:
        """Open a socket and say hello (resuming with the token once there is one)."""
        self.welcome = asyncio.get_running_loop().create_future()
        ws = await WsClient.connect(f"{self.url}?site=loadtest", ORIGIN, self.on_message)
        self.ws = ws
        ws.send(msgpack.packb(hello_frame(self.sid, self.token, vid=self.vid)))
        try:
            welcome = await asyncio.wait_for(self.welcome, 30)
        except BaseException:
            ws.close()
            raise
        if welcome.get("t") != "welcome":
            ws.close()
            raise ConnectionError(f"refused: {welcome}")
        self.token = welcome["token"]
        self.ack(welcome["acked"], time.perf_counter())  # what the store has: acknowledged
        self.open = True
        ws.closed.add_done_callback(lambda _f: self._cut(ws))

    def _cut(self, ws: WsClient) -> None:
        if ws is not self.ws or self.leaving:
            return
        self.open = False
        self.res["cuts"] = self.res.get("cuts", 0) + 1
        if self.cut_at is None:
            self.cut_at = time.perf_counter()
        asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Reopen with the browser client's backoff (serve/static/lifeline.js), then resend."""
        for tries in range(12):
            d = min(30.0, 0.5 * 2**tries)
            await asyncio.sleep(d / 2 + self.rng.random() * d / 2)
            if self.leaving:
                return
            self.tries += 1
            try:
                await self._hello()
            except (OSError, ConnectionError, asyncio.TimeoutError):
                continue
            self.res["resumed"] = self.res.get("resumed", 0) + 1
            if self.resumed_at is None:
                self.resumed_at = time.perf_counter()
            self.resend_at = time.perf_counter()  # the next step resends everything unacked
            return

    def leave(self) -> None:
        """Close the socket for good (the end of the run)."""
        self.leaving = True
        if self.ws is not None:
            self.ws.close()

    def in_window(self, t: float) -> bool:
        return self.window[0] <= t <= self.window[1]

    def on_message(self, data: bytes) -> None:
        frame = msgpack.unpackb(data)
        now = time.perf_counter()
        t = frame.get("t")
        if t == "ack":
            self.ack(frame["seq"], now)
        elif t == "intervention":
            self.res["interventions"] += 1
            sent = self.sent_at.get(frame.get("seq", -1))
            if sent is not None:
                self.iv_sent[frame.get("iid")] = sent  # its follow-up is timed from it too
            if sent is not None and self.in_window(now):
                self.res["iv_lat"].append(now - sent)
                # When, s into the window (the fault benchmark keeps the minute around a fault).
                self.res.setdefault("iv_at", []).append(now - self.window[0])
        elif t == "update":  # the LLM nudge or recommendations following an intervention
            self.res["updates"] = self.res.get("updates", 0) + 1
            sent = self.iv_sent.pop(frame.get("iid"), None)
            if sent is not None and self.in_window(now):
                self.res.setdefault("upd_lat", []).append(now - sent)
        elif t in ("welcome", "error") and self.welcome is not None and not self.welcome.done():
            self.welcome.set_result(frame)
        elif t == "error":
            code = frame.get("code", "?")
            self.res["errors"][code] = self.res["errors"].get(code, 0) + 1
            expected = frame.get("expected")  # where to resend from; not an ack
            if expected or code in ("sequence_gap", "rate_limited", "overloaded"):
                delay = 0.03 if code == "sequence_gap" else 1.0 + 2.0 * self.rng.random()
                self.resend_at = min(self.resend_at, now + delay)

    def ack(self, seq: int, now: float) -> None:
        if seq <= self.acked:
            return
        record = self.in_window(now)
        for s in range(self.acked + 1, seq + 1):
            if self.unacked.pop(s, None) is not None and record:
                self.res["ack_lat"].append(now - self.sent_at[s])
                self.res["ack_at"].append(now - self.window[0])
                self.res["acked"] += 1
        # Send times are kept a while after the ack: the intervention an event
        # triggers arrives after its ack.
        for s in range(self.acked - SENT_KEPT + 1, seq - SENT_KEPT + 1):
            self.sent_at.pop(s, None)
        self.acked = seq

    def step(self, now: float) -> float | None:
        """Do what is due at ``now``; returns when the visitor is next due (None: gone)."""
        if now >= self.next_at:
            if self.idx >= len(self.events):  # the next journey, same visitor
                self.j += 1
                self.events, self.idx = self.journeys[self.j % len(self.journeys)], 0
            self.seq += 1
            ev = dict(self.events[self.idx], seq=self.seq, ts=int(time.time() * 1000))
            self.idx += 1
            self.pending.append(ev)
            self.next_at = now + self.rng.expovariate(self.rate)
            self.flush_at = now if ev["type"] in URGENT_TYPES else min(self.flush_at, now + FLUSH_S)
        if now >= self.resend_at:
            self.resend_at = float("inf")
            self.pending = [self.unacked[s] for s in sorted(self.unacked)] + self.pending
            self.flush_at = now
        if now >= self.flush_at:
            self.flush_at = float("inf")
            if not self.flush(now):
                return None
        return min(self.next_at, self.flush_at, self.resend_at)

    def flush(self, now: float) -> bool:
        """Send what is pending; while the socket is cut it waits (the resume resends it)."""
        if not self.open or self.ws is None:
            return True
        for i in range(0, len(self.pending), 100):  # the server's per-frame limit
            batch = self.pending[i : i + 100]
            fresh = 0
            for ev in batch:
                if ev["seq"] not in self.sent_at:
                    self.sent_at[ev["seq"]] = now
                    fresh += 1
                self.unacked[ev["seq"]] = ev
            if self.in_window(now):
                self.res["sent"] += fresh
            if not self.ws.send(msgpack.packb(events_frame(self.sid, batch))):
                # Cut: this batch and the ones before are in ``unacked``, resent on resume.
                self.pending = self.pending[i + 100 :]
                return True
        self.pending = []
        return True


async def drain(visitors: list[Visitor], timeout_s: float) -> None:
    """Stop new events and step the visitors until nothing is pending or unacknowledged
    (their resends go out and are acked), or ``timeout_s`` passes; the caller checks which."""
    for v in visitors:
        v.next_at = float("inf")
    deadline = time.perf_counter() + timeout_s
    while any(v.unacked or v.pending for v in visitors) and time.perf_counter() < deadline:
        for v in visitors:
            v.step(time.perf_counter())
        await asyncio.sleep(0.05)  # resends and their acks, across many sockets


async def drive(visitors: list[Visitor], t_end: float) -> None:
    """Call each visitor when it is due: one scheduler for the process, not a task per visitor."""
    heap = [(v.next_at, i) for i, v in enumerate(visitors)]
    heapq.heapify(heap)
    while heap:
        now = time.perf_counter()
        if now >= t_end:
            return
        while heap and heap[0][0] <= now:
            _, i = heapq.heappop(heap)
            due = visitors[i].step(now)
            if due is not None:
                heapq.heappush(heap, (due, i))
        if heap:
            # Ticks of at least 2 ms: a sleep per due visitor (10,000/s) cost the
            # generator more CPU than its sockets did. Send times are taken when
            # sending, so the tick adds no latency to what is measured.
            await asyncio.sleep(max(TICK_S, heap[0][0] - time.perf_counter()))


def lifeline_worker(
    ws_url: str,
    sessions: int,
    rate: float,
    warmup: float,
    duration: float,
    journeys: list[list[dict]],
    seed: int,
    q: mp.Queue,
    start_at: float,
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res: dict[str, Any] = {
        "sent": 0,
        "acked": 0,
        "ack_lat": [],
        "ack_at": [],  # when each of ack_lat arrived, s into the window (perf_counter)
        "iv_lat": [],
        "interventions": 0,
        "errors": {},
        "connect_errors": 0,
    }
    # The generator's own collector pauses would read as server latency: record them.
    pauses: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter()
        window = (t0 + warmup, t0 + warmup + duration)
        rng = random.Random(seed)
        visitors = [
            Visitor(journeys, rate, res, window, random.Random(rng.random()))
            for _ in range(sessions)
        ]

        async def connect(v: Visitor) -> Visitor | None:
            for _attempt in range(5):
                try:
                    await v.connect(ws_url)
                    return v
                except Exception as exc:
                    res["connect_errors"] += 1
                    name = type(exc).__name__
                    res["errors"][name] = res["errors"].get(name, 0) + 1
                    await asyncio.sleep(
                        0.5 + v.rng.random()
                    )  # back off with jitter, as browsers do
            return None

        # Ramp connections over the first second rather than in one burst.
        tasks = []
        for i, v in enumerate(visitors):
            tasks.append(asyncio.create_task(connect(v)))
            if i % 50 == 49:
                await asyncio.sleep(0.02)
        connected = [v for v in await asyncio.gather(*tasks) if v is not None]
        # Journeys and visitors live for the whole run: keep the collector off them,
        # as the gateways and shards keep it off their start-up heap.
        gc.collect()
        gc.freeze()
        pauses.clear()
        await drive(connected, window[1])
        deadline = time.perf_counter() + 5.0
        while any(v.unacked for v in connected) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)  # the last acks: nothing to await across 1,000 sockets
        for v in connected:
            v.leave()

    proc = psutil.Process()
    proc.cpu_percent()
    asyncio.run(main())
    res["cpu_percent"] = proc.cpu_percent()
    res["rss_mb"] = proc.memory_info().rss / 2**20
    res["gc_max_ms"] = max(pauses, default=0.0) * 1000.0
    q.put(res)


def echo_worker(url: str, conns: int, duration: float, q: mp.Queue, start_at: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    count = [0]
    lat: list[float] = []
    payload = msgpack.packb(
        {
            "t": "events",
            "sid": "x" * 20,
            "now": 0,
            "events": [
                {
                    "type": "click",
                    "seq": 1,
                    "ts": 0,
                    "selector": "#calc-submit",
                    "x": 1,
                    "y": 2,
                    "reacted": False,
                }
            ],
        }
    )

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t_end = float("inf")  # set once every client is connected
        done = asyncio.get_running_loop().create_future()
        clients: list[WsClient] = []

        def closed_loop(i: int) -> Any:
            sent = [0.0]

            def on_message(_data: bytes) -> None:
                now = time.perf_counter()
                count[0] += 1
                lat.append(now - sent[0])
                if now >= t_end:
                    if count[0] and not done.done():
                        done.set_result(None)
                    return
                sent[0] = now
                clients[i].send(payload)

            return on_message, sent

        starters = []
        for i in range(conns):
            on_message, sent = closed_loop(i)
            clients.append(await WsClient.connect(url, None, on_message))
            starters.append(sent)
        t0 = time.perf_counter()
        t_end = t0 + duration
        for c, sent in zip(clients, starters, strict=True):
            sent[0] = t0
            c.send(payload)
        await asyncio.wait_for(done, duration + 30)
        for c in clients:
            c.close()

    asyncio.run(main())
    q.put({"msgs": count[0], "lat": lat[::10]})


# -- orchestration ---------------------------------------------------------------------


def watch_console(port: int, env: dict[str, str]) -> subprocess.Popen:
    """A Chromium on the console's Live page (loadtests/console_watcher.py), once it updates."""
    password = uuid.uuid4().hex
    add = [sys.executable, "-m", "cluster.cli", "operators", "add", "watcher", "--role", "viewer"]
    subprocess.run(
        [*add, "--password-stdin"], input=password + "\n", env=env, cwd=ROOT, text=True, check=True
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "loadtests" / "console_watcher.py"),
            f"http://127.0.0.1:{port}",
            "watcher",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(password + "\n")
    proc.stdin.flush()
    if proc.stdout.readline().strip() != "watching":
        raise RuntimeError("the console watcher did not see the Live page update")
    return proc


def console_json(port: int, path: str, prefix: str) -> dict[str, Any]:
    """GET a console API path with a read-only token of a service account made for the run."""
    global _TOKEN
    if _TOKEN is None:
        cmd = [sys.executable, "-m", "cluster.cli", "operators", "token", "bench", "--create"]
        env = dict(os.environ, LIFELINE_PREFIX=prefix)
        _TOKEN = subprocess.run(
            cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {_TOKEN}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:  # /api/health answers 503 with its body when unwell
        return json.loads(err.read())


_TOKEN: str | None = None


def port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:``port`` (we could bind it)."""
    import socket

    with socket.socket() as s:
        # As the servers bind: a finished run's connections in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_http(url: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())
        except Exception:
            time.sleep(0.5)  # polling a starting subprocess: there is nothing to await
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s")


def start_sink() -> Any:
    """A span-counting OTLP/HTTP receiver on a thread of this process (its own event loop)."""
    import threading

    from serve.dev.otlp_sink import OtlpSink

    loop = asyncio.new_event_loop()
    sink = OtlpSink(keep=False)
    threading.Thread(target=loop.run_forever, name="otlp-sink", daemon=True).start()
    asyncio.run_coroutine_threadsafe(sink.start(), loop).result(30)
    return sink


def server_processes(server: subprocess.Popen) -> dict[str, psutil.Process]:
    """The gateway processes, the shard actors and Redis: the server's own process tree only."""
    root = psutil.Process(server.pid)
    procs = {"gateway": root}
    for p in root.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "cluster.gateway_worker" in cmd:
            procs[f"gateway-{len([k for k in procs if k.startswith('gateway')])}"] = p
        elif "SessionShard" in cmd:
            procs[f"shard-{len([k for k in procs if k.startswith('shard')])}"] = p
        elif "raylet" in cmd or "gcs_server" in cmd:
            procs[p.name()[:20]] = p
    ports = redis_ports(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    for p in psutil.process_iter(["name"]):
        if p.info["name"] != "redis-server":
            continue
        with contextlib.suppress(psutil.Error):
            listening = {c.laddr.port for c in p.net_connections("inet") if c.status == "LISTEN"}
            if listening & ports:  # Redis Cluster: one entry per node, redis, redis-2, ...
                n = len([k for k in procs if k.startswith("redis")])
                procs["redis" if n == 0 else f"redis-{n + 1}"] = p
    return procs


def redis_ports(url: str) -> set[int]:
    """The ports of the Redis servers ``url`` names (every node of a Redis Cluster)."""
    from urllib.parse import urlsplit

    from cluster.redis_cluster import is_cluster, parse

    if is_cluster(url):
        return {port for _host, port in parse(url)[0]}
    return {urlsplit(url).port or 6379}


def measure_procs(procs: dict[str, psutil.Process], seconds: float) -> dict[str, dict[str, float]]:
    """CPU and RSS of each process over a window; ``machine``: busy and stolen shares of all CPUs.

    Steal is time the hypervisor ran something else on this VM's virtual
    CPUs: the machine is shared, and a vCPU taken away mid-call stalls
    whatever ran on it, so runs are only comparable with their steal beside them.
    """
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.cpu_percent()
    before = psutil.cpu_times()
    time.sleep(seconds)  # sampling window for CPU percentages
    after = psutil.cpu_times()
    # Linux counts guest time inside user time: leave it out of the total.
    fields = [f for f in after._fields if not f.startswith("guest")]
    delta = {k: getattr(after, k) - getattr(before, k) for k in fields}
    total = sum(delta.values()) or 1.0
    idle = delta["idle"] + delta.get("iowait", 0.0) + delta.get("steal", 0.0)
    out: dict[str, dict[str, float]] = {
        "machine": {
            "busy_percent": 100.0 * (total - idle) / total,
            "steal_percent": 100.0 * delta.get("steal", 0.0) / total,
        }
    }
    for name, p in procs.items():
        with contextlib.suppress(psutil.Error):
            out[name] = {"cpu_percent": p.cpu_percent(), "rss_mb": p.memory_info().rss / 2**20}
    return out


def split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def run_echo(port: int, conns: int, duration: float, procs: int) -> dict[str, Any]:
    q: mp.Queue = mp.Queue()
    start_at = time.time() + 1.0
    ps = [
        mp.Process(target=echo_worker, args=(f"ws://127.0.0.1:{port}/", c, duration, q, start_at))
        for c in split(conns, procs)
    ]
    for p in ps:
        p.start()
    results = [q.get() for _ in ps]
    for p in ps:
        p.join()
    lat = [x for r in results for x in r["lat"]]
    return {"msgs_per_s": sum(r["msgs"] for r in results) / duration, "p99_ms": pct(lat, 99) * 1000}


def run_lifeline(
    ws_url: str,
    server_procs: dict[str, psutil.Process],
    args: argparse.Namespace,
    journeys: list[list[dict]],
    run: int,
) -> dict[str, Any]:
    q: mp.Queue = mp.Queue()
    start_at = time.time() + 2.0
    shares = split(args.sessions, args.procs)
    ps = [
        mp.Process(
            target=lifeline_worker,
            args=(
                ws_url,
                n,
                args.rate,
                args.warmup,
                args.duration,
                journeys,
                1000 * run + i,
                q,
                start_at,
            ),
        )
        for i, n in enumerate(shares)
    ]
    chat_q: mp.Queue = mp.Queue()
    if args.chats:
        from loadtests.chat_load import chat_worker

        ps.append(
            mp.Process(
                target=chat_worker,
                args=(ws_url, args.chats, args.warmup, args.duration, chat_q, start_at),
            )
        )
    for p in ps:
        p.start()
    time.sleep(2.0 + args.warmup)  # into the measurement window
    usage = measure_procs(server_procs, args.duration * 0.8)
    results = [q.get() for _ in shares]
    chats = chat_q.get() if args.chats else None
    for p in ps:
        p.join()
    ack = [x for r in results for x in r["ack_lat"]]
    by_second: list[list[float]] = [[] for _ in range(int(args.duration) + 1)]
    for r in results:  # every generator's window opens at the same wall-clock moment
        for at, lat in zip(r["ack_at"], r["ack_lat"], strict=True):
            by_second[min(int(at), len(by_second) - 1)].append(lat)
    iv = [x for r in results for x in r["iv_lat"]]
    upd = [x for r in results for x in r.get("upd_lat", [])]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    for i, r in enumerate(results):
        usage[f"loadgen-{i}"] = {
            "cpu_percent": r["cpu_percent"],
            "rss_mb": r["rss_mb"],
            "gc_max_ms": r["gc_max_ms"],  # the generator's longest collector pause
        }
    sent = sum(r["sent"] for r in results)
    return {
        "events_per_s": sum(r["acked"] for r in results)
        / args.duration,  # acknowledged in the window
        "sent_per_s": sent / args.duration,
        "ack_p50_ms": pct(ack, 50) * 1000,
        "ack_p95_ms": pct(ack, 95) * 1000,
        "ack_p99_ms": pct(ack, 99) * 1000,
        "iv_p50_ms": pct(iv, 50) * 1000,
        "iv_p95_ms": pct(iv, 95) * 1000,
        "iv_p99_ms": pct(iv, 99) * 1000,
        "interventions": sum(r["interventions"] for r in results),
        "iv_samples": len(iv),
        # --serve: trigger -> the follow-up (LLM nudge text, recommendations) on the socket.
        "updates": sum(r.get("updates", 0) for r in results),
        "upd_p50_ms": pct(upd, 50) * 1000 if upd else None,
        "upd_p99_ms": pct(upd, 99) * 1000 if upd else None,
        # Every sample, for percentiles pooled over runs: with the 60 s cooldown a
        # 30 s run sees only ~100-200 interventions, so its own p99 is its 2nd largest.
        "iv_ms": [round(x * 1000, 2) for x in sorted(iv)],
        "errors": errors,
        "connect_errors": sum(r["connect_errors"] for r in results),
        "steal_percent": usage["machine"]["steal_percent"],
        "procs": usage,
        # Is the tail spread over the run or a few stalls? p99 of each second's acks.
        "ack_p99_ms_by_second": [round(pct(b, 99) * 1000, 1) for b in by_second if b],
        "chats": chats,  # --chats: the chats' question -> first token and errors, else None
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=2000, help="concurrent visitors (sockets)")
    ap.add_argument("--rate", type=float, default=5.0, help="events/s per visitor")
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway processes sharing the WebSocket port (1, as lifeline up: on 2 cores at "
        "10,000 events/s a second one cost 11 points of the machine; BENCHMARKS.md)",
    )
    ap.add_argument("--source", choices=SOURCES, default="mix")
    ap.add_argument("--trace", action="store_true", help="run the server with tracing on")
    ap.add_argument("--trace-sample", type=float, default=0.01, help="head share with --trace")
    ap.add_argument(
        "--trace-endpoint",
        default="",
        help="OTLP/HTTP traces URL with --trace (default: a span-counting receiver run here)",
    )
    ap.add_argument(
        "--console-live",
        action="store_true",
        help="keep the console's Live page open in Chromium during the runs (what it costs)",
    )
    ap.add_argument(
        "--chats", type=int, default=0, help="help chats alongside the sessions (implies --serve)"
    )
    ap.add_argument(
        "--serve",
        action="store_true",
        help="run the server with its Serve deployments and the paced LLM stand-in (the "
        "baseline of --chats)",
    )
    ap.add_argument(
        "--port-offset", type=int, default=0, help="added to the server's and echo's ports"
    )
    ap.add_argument("--llm-first-token-s", type=float, default=0.3)
    ap.add_argument("--llm-tokens-per-s", type=float, default=50.0)
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "spine.json")
    args = ap.parse_args()
    args.serve = args.serve or args.chats > 0

    journeys = load_journeys(args.source, 2000, seed=1)
    print(
        f"{len(journeys)} journeys ({args.source}), mean {statistics.mean(map(len, journeys)):.1f} events"
    )
    prefix = f"llbench-{uuid.uuid4().hex[:6]}:"
    env = dict(os.environ, LIFELINE_PREFIX=prefix, PYTHONUNBUFFERED="1")
    sink = None
    if args.trace:
        endpoint = args.trace_endpoint
        if not endpoint:
            sink = start_sink()
            endpoint = sink.url
        env |= {
            "LIFELINE_TRACE_SAMPLE": str(args.trace_sample),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        }
    else:
        env["LIFELINE_TRACE_SAMPLE"] = "0"
    ports = [p + args.port_offset for p in (18765, 18080, 18766, 18090)]
    for port in ports + ([18787 + args.port_offset] if args.serve else []):
        # Another bench's server on these ports would answer our health check and take
        # our load: measuring someone else's server silently is worse than stopping.
        if not port_free(port):
            raise SystemExit(f"port {port} is in use (another benchmark?): use --port-offset")
    ws_port, http_port, echo_port, console_port = ports
    log_path = args.out.parent / "spine-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server_log = log_path.open("w")
    stub = None
    if args.serve:
        # The model stand-in streams at a realistic pace, in a process of its own.
        stub_port = 18787 + args.port_offset
        stub = subprocess.Popen(
            [sys.executable, "-m", "serve.dev.llm_stub", "--port", str(stub_port),
             "--first-token-s", str(args.llm_first_token_s),
             "--tokens-per-s", str(args.llm_tokens_per_s)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        env |= {
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{stub_port}",
            "ANTHROPIC_API_KEY": "local-stand-in",
        }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "up",
            *([] if args.serve else ["--no-serve"]),
            "--no-llm-stub",
            "--ws-port",
            str(ws_port),
            "--http-port",
            str(http_port),
            "--console-port",
            str(console_port),
            "--gateways",
            str(args.gateways),
        ],
        cwd=ROOT,
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    echo = subprocess.Popen(
        [sys.executable, str(ROOT / "loadtests" / "echo_server.py"), str(echo_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watcher = None
    try:
        # Serve (its deployments and their replicas) adds a minute or more to the start.
        health = wait_http(
            f"http://127.0.0.1:{console_port}/healthz", 360.0 if args.serve else 120.0
        )
        print("server up:", health)
        if args.console_live:
            watcher = watch_console(console_port, env)
        procs = server_processes(server)
        idle_rss = procs["gateway"].memory_info().rss
        runs = []
        for run in range(args.runs):
            e = run_echo(echo_port, min(args.sessions, 200), 10.0, args.procs)
            e_all = run_echo(echo_port, args.sessions, 10.0, args.procs)
            lf = run_lifeline(f"ws://127.0.0.1:{ws_port}/ws", procs, args, journeys, run)
            lf["echo_msgs_per_s_200"] = e["msgs_per_s"]
            lf["echo_msgs_per_s_all"] = e_all["msgs_per_s"]
            lf["ratio_to_echo"] = lf["events_per_s"] / max(e["msgs_per_s"], e_all["msgs_per_s"])
            runs.append(lf)
            shown = {k: v for k, v in lf.items() if k not in ("procs", "iv_ms")}
            print(f"run {run}: {json.dumps(shown)}")
            print("   procs:", json.dumps(lf["procs"]))
        stats = console_json(console_port, "/api/stats", prefix)
        stats["shards"] = console_json(console_port, "/api/health", prefix).get("shard_info")
        keys = [
            "events_per_s",
            "sent_per_s",
            "ack_p50_ms",
            "ack_p95_ms",
            "ack_p99_ms",
            "iv_p50_ms",
            "iv_p95_ms",
            "iv_p99_ms",
            "echo_msgs_per_s_200",
            "echo_msgs_per_s_all",
            "ratio_to_echo",
            "steal_percent",
        ]
        summary = {k: statistics.median(r[k] for r in runs) for k in keys}
        summary |= pooled_iv(runs)
        busy_rss = statistics.median(r["procs"]["gateway"]["rss_mb"] for r in runs) * 2**20
        summary["gateway_rss_per_connection_kb"] = (busy_rss - idle_rss) / args.sessions / 1024
        summary["gateway_stats"] = stats
        summary["args"] = vars(args) | {"out": str(args.out)}
        summary["machine"] = (
            f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
        )
        summary["gateway_idle_rss_mb"] = idle_rss / 2**20
        summary["tracing"] = {
            "on": args.trace,
            "sample": args.trace_sample if args.trace else 0.0,
            "spans_received": sink.received if sink is not None else None,
        }
        summary["console_live_open"] = args.console_live
        # The server inherits this environment: LIFELINE_ENCRYPT_AT_REST=0 is the plain arm.
        summary["encrypt_at_rest"] = env.get("LIFELINE_ENCRYPT_AT_REST", "1") not in (
            "0",
            "false",
            "",
        )
        if args.chats:
            chat_runs = [r["chats"] for r in runs]
            summary["chats"] = {
                k: statistics.median(c[k] for c in chat_runs)
                for k in ("questions", "ttft_p50_ms", "ttft_p95_ms", "total_p50_ms", "total_p95_ms")
            }
            print("chats (median of runs):", json.dumps(summary["chats"]))
        summary["runs"] = runs
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1, default=str))
        print("\nmedian of", args.runs, "runs:")
        for k in keys:
            print(f"  {k:>22}: {summary[k]:.2f}")
        print("  pooled over all runs:", pooled_line(summary))
        if sink is not None:
            print(f"  tracing: {sink.received} spans received at {args.trace_sample:g}")
    finally:
        if watcher is not None:
            watcher.kill()
        echo.terminate()
        if stub is not None:
            stub.terminate()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        # The run's sessions, logs and snapshots would otherwise stay in Redis for a week.
        from cluster.redis_server import delete_prefix

        with contextlib.suppress(Exception):  # an embedded Redis is gone with the server
            delete_prefix(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0", prefix)
        print(f"server log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
