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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from actors.events import URGENT_TYPES  # noqa: E402

ORIGIN = "http://loadtest.local"
FLUSH_S = 0.1


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


# -- journeys -----------------------------------------------------------------------


def load_journeys(source: str, n: int, seed: int) -> list[list[dict[str, Any]]]:
    """Raw event journeys (client form) from the simulator and/or the real click data."""
    out: list[list[dict[str, Any]]] = []
    if source in ("sim", "mix"):
        from training.simulator import simulate

        out += [j.events for j in simulate(n if source == "sim" else n // 2, seed=seed)]
    if source in ("real", "mix"):
        from training.loaders import load_diginetica, load_yoochoose

        k = n if source == "real" else n - len(out)
        out += [s.events for s in load_diginetica(limit_sessions=k // 2) if len(s.events) >= 2]
        out += [s.events for s in load_yoochoose(limit_sessions=k - k // 2) if len(s.events) >= 2]
    random.Random(seed).shuffle(out)
    return [j for j in out if j]


# -- load generator processes ---------------------------------------------------------


async def _visitor(
    ws_url: str,
    journeys: list[list[dict]],
    rate: float,
    t_end: float,
    t_measure: float,
    res: dict[str, Any],
    rng: random.Random,
) -> None:
    """One visitor: one socket and one session for the whole run, replaying journeys back to back.

    Events come at Poisson times (``rate`` per second) and are batched as the
    real client batches them: flushed 100 ms after the first pending event,
    or at once for urgent events.
    """
    from serve.pyclient import LifelineClient

    client = LifelineClient(ws_url, "loadtest", f"lt-{uuid.uuid4().hex[:16]}", ORIGIN)
    client.keep_frames = False
    for _attempt in range(5):
        try:
            welcome = await client.connect()
            break
        except Exception as exc:
            res["connect_errors"] += 1
            res["errors"][type(exc).__name__] = res["errors"].get(type(exc).__name__, 0) + 1
            await asyncio.sleep(0.5 + rng.random())  # back off with jitter, as the real client does
    else:
        return
    if welcome.get("t") != "welcome":
        res["connect_errors"] += 1
        return
    j = rng.randrange(len(journeys))
    events = journeys[j]
    idx = 0
    pending: list[dict] = []
    flush_at: float | None = None
    seq = 0
    next_at = time.perf_counter() + rng.expovariate(rate)
    while time.perf_counter() < t_end:
        now = time.perf_counter()
        due = min(next_at, flush_at or float("inf"))
        if due > now:
            await asyncio.sleep(due - now)
            now = time.perf_counter()
        if now >= next_at:
            if idx >= len(events):  # the next journey, same visitor
                j += 1
                events, idx = journeys[j % len(journeys)], 0
            seq += 1
            ev = dict(events[idx], seq=seq, ts=int(time.time() * 1000))
            idx += 1
            pending.append(ev)
            next_at = now + rng.expovariate(rate)
            if flush_at is None:
                flush_at = now + FLUSH_S
            if ev["type"] in URGENT_TYPES:
                flush_at = now
        if flush_at is not None and now >= flush_at and pending:
            try:
                await client.send_events(pending)
            except Exception:
                break
            if now >= t_measure:
                res["sent"] += len(pending)
            pending, flush_at = [], None
    if client.unacked:
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await client.wait_acked(max(client.unacked), timeout=5.0)
    _account(client, res, t_measure, t_end)
    await client.close()


def _account(client: Any, res: dict[str, Any], t_measure: float, t_end: float) -> None:
    in_window = [lat for arrived, lat in client.ack_latency if t_measure <= arrived <= t_end]
    res["ack_lat"].extend(in_window)
    res["acked"] += len(in_window)
    res["interventions"] += len(client.of_type("intervention"))
    res["iv_lat"].extend(
        lat for arrived, lat in client.intervention_latency() if t_measure <= arrived <= t_end
    )
    for frame in client.of_type("error"):
        res["errors"][frame.get("code", "?")] = res["errors"].get(frame.get("code", "?"), 0) + 1


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
        "iv_lat": [],
        "interventions": 0,
        "errors": {},
        "connect_errors": 0,
    }

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter()
        t_measure, t_end = t0 + warmup, t0 + warmup + duration
        rng = random.Random(seed)
        # Ramp connections over the first second rather than in one burst.
        tasks = []
        for i in range(sessions):
            tasks.append(
                asyncio.create_task(
                    _visitor(
                        ws_url, journeys, rate, t_end, t_measure, res, random.Random(rng.random())
                    )
                )
            )
            if i % 50 == 49:
                await asyncio.sleep(0.02)
        await asyncio.gather(*tasks, return_exceptions=True)

    proc = psutil.Process()
    proc.cpu_percent()
    asyncio.run(main())
    res["cpu_percent"] = proc.cpu_percent()
    res["rss_mb"] = proc.memory_info().rss / 2**20
    q.put(res)


def echo_worker(url: str, conns: int, duration: float, q: mp.Queue, start_at: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    import websockets

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

    async def one(t_end: float) -> None:
        async with websockets.connect(url, compression=None) as ws:
            while time.perf_counter() < t_end:
                t = time.perf_counter()
                await ws.send(payload)
                await ws.recv()
                count[0] += 1
                lat.append(time.perf_counter() - t)

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t_end = time.perf_counter() + duration
        await asyncio.gather(*(one(t_end) for _ in range(conns)), return_exceptions=True)

    asyncio.run(main())
    q.put({"msgs": count[0], "lat": lat[::10]})


# -- orchestration ---------------------------------------------------------------------


def wait_http(url: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())
        except Exception:
            time.sleep(0.5)  # polling a starting subprocess: there is nothing to await
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s")


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
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "redis-server":
            procs["redis"] = p
    return procs


def measure_procs(procs: dict[str, psutil.Process], seconds: float) -> dict[str, dict[str, float]]:
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.cpu_percent()
    time.sleep(seconds)  # sampling window for CPU percentages
    out = {}
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
    for p in ps:
        p.start()
    time.sleep(2.0 + args.warmup)  # into the measurement window
    usage = measure_procs(server_procs, args.duration * 0.8)
    results = [q.get() for _ in ps]
    for p in ps:
        p.join()
    ack = [x for r in results for x in r["ack_lat"]]
    iv = [x for r in results for x in r["iv_lat"]]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    for i, r in enumerate(results):
        usage[f"loadgen-{i}"] = {"cpu_percent": r["cpu_percent"], "rss_mb": r["rss_mb"]}
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
        "errors": errors,
        "connect_errors": sum(r["connect_errors"] for r in results),
        "procs": usage,
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
        "--gateways", type=int, default=2, help="gateway processes sharing the WebSocket port"
    )
    ap.add_argument("--source", choices=["sim", "real", "mix"], default="mix")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "spine.json")
    args = ap.parse_args()

    journeys = load_journeys(args.source, 2000, seed=1)
    print(
        f"{len(journeys)} journeys ({args.source}), mean {statistics.mean(map(len, journeys)):.1f} events"
    )
    env = dict(os.environ, LIFELINE_PREFIX=f"llbench-{uuid.uuid4().hex[:6]}:", PYTHONUNBUFFERED="1")
    ws_port, http_port, echo_port = 18765, 18080, 18766
    log_path = args.out.parent / "spine-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server_log = log_path.open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "up",
            "--no-serve",
            "--no-llm-stub",
            "--ws-port",
            str(ws_port),
            "--http-port",
            str(http_port),
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
    try:
        health = wait_http(f"http://127.0.0.1:{http_port}/healthz")
        print("server up:", health)
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
            print(f"run {run}: {json.dumps({k: v for k, v in lf.items() if k != 'procs'})}")
            print("   procs:", json.dumps(lf["procs"]))
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/stats").read())
        stats["shards"] = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz").read()
        ).get("shard_info")
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
        ]
        summary = {k: statistics.median(r[k] for r in runs) for k in keys}
        busy_rss = statistics.median(r["procs"]["gateway"]["rss_mb"] for r in runs) * 2**20
        summary["gateway_rss_per_connection_kb"] = (busy_rss - idle_rss) / args.sessions / 1024
        summary["gateway_stats"] = stats
        summary["args"] = vars(args) | {"out": str(args.out)}
        summary["machine"] = (
            f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
        )
        summary["gateway_idle_rss_mb"] = idle_rss / 2**20
        summary["runs"] = runs
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1, default=str))
        print("\nmedian of", args.runs, "runs:")
        for k in keys:
            print(f"  {k:>22}: {summary[k]:.2f}")
    finally:
        echo.terminate()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        print(f"server log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
