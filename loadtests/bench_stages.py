"""Where an event's CPU goes, stage by stage, without the noise of a full load test.

Three in-process measurements on the spine benchmark's journeys (simulated,
Diginetica and YOOCHOOSE, as visitors send them), each a median over
``--runs``:

* **gateway**: the protocol work per events frame of 1-2 events, as
  ``serve.edge.gateway`` does it: decode and check the frame, validate and
  sequence its events, pack them once for the log and the shard (and seal
  them for the log, unless ``LIFELINE_ENCRYPT_AT_REST=0``), encode the
  ack. No sockets, no Redis (their cost is the rest of a gateway's CPU).
  ``--seal-only`` runs this stage alone, with and without sealing, alternated.
* **socket**: a gateway's whole in-process path per events frame: masked
  WebSocket frames into ``Peer.data_received``, the append loop against a
  store that is always durable, acks to a transport that only counts (no
  Redis, no shards, no system calls).
* **core**: the shard's pure core (``SessionHost.process``: apply, one
  in-place prediction per batch, policy) per event, on batches of
  ``--batch`` events from 1,000 sessions.
* **append**: client CPU per append round (~8 sessions' runs) on the
  gateway's own Redis connection (``serve.edge.resp``), against the same script
  called through redis-py in the same run. Needs Redis.
* **call**: a ``SessionShard`` call of ``--batch`` events through Ray and
  over the shard's link (CPU of the actor's process and of the caller)
  against ``ShardCore.handle`` on the same batches in-process: what each
  path adds. Needs Redis
  ($REDIS_URL or 127.0.0.1:6379); starts its own small Ray cluster.

    python loadtests/bench_stages.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.core.events import validate_event  # noqa: E402
from actors.core.host import EVENTS, pack_batch  # noqa: E402
from loadtests.journeys import load_journeys  # noqa: E402
from serve.edge.store import Append  # noqa: E402

SESSIONS = 1000


class Replay:
    """Visitors stepping through their journeys: the next 1-2 events of a random one."""

    def __init__(self, journeys: list[list[dict[str, Any]]], seed: int) -> None:
        self.rng = random.Random(seed)
        self.journeys = journeys
        self.sids = [f"st-{uuid.uuid4().hex[:16]}" for _ in range(SESSIONS)]
        self.seqs = [0] * SESSIONS
        self.ts = int(time.time() * 1000) - 3_600_000

    def next(self) -> tuple[int, list[dict[str, Any]]]:
        i = self.rng.randrange(SESSIONS)
        journey = self.journeys[i % len(self.journeys)]
        out = []
        for _ in range(self.rng.choice((1, 1, 2))):  # ~1.35 events per frame, as measured
            self.seqs[i] += 1
            self.ts += 7
            out.append(dict(journey[self.seqs[i] % len(journey)], seq=self.seqs[i], ts=self.ts))
        return i, out

    def batch(self, n: int) -> list[tuple[str, str, list[str], list[dict[str, Any]]]]:
        """About ``n`` validated events from many sessions, grouped as the gateway groups them."""
        items, count = [], 0
        while count < n:
            i, raw = self.next()
            events = [validate_event(e, e["ts"]) for e in raw]
            assert all(isinstance(e, dict) for e in events), events
            items.append((self.sids[i], "loadtest", ["necessary", "analytics"], events))
            count += len(events)
        return items


def gateway_stage(journeys: list, frames: int, seal: bool = False) -> dict[str, float]:
    """us per frame for each step of the gateway's protocol work.

    ``seal``: each session has its data key (cluster/sealing.py), as with
    ``LIFELINE_ENCRYPT_AT_REST=1``, and ``pack`` includes sealing the run for the log.
    """
    import msgpack

    from cluster.sealing import MasterKeys
    from serve.edge.protocol import Connection, Limits

    replay = Replay(journeys, seed=1)
    limits = Limits(events_per_s=1e9, burst=1e9)
    master = MasterKeys("bench-master-key-0123456789")
    conns = []
    for sid in replay.sids:
        c = Connection("loadtest", b"secret", limits)
        c.accept_hello(
            c.hello({"t": "hello", "v": 1, "sid": sid, "consent": ["analytics"]}), False, 0
        )
        if seal:  # what the hello's reply gives the cursor, once per session
            ref = f"loadtest:{sid}"
            c.sessions[sid].sealer = master.sealer(ref, master.new_wrapped("loadtest"))
        conns.append(c)
    wire = []
    for _ in range(frames):
        i, events = replay.next()
        wire.append((i, msgpack.packb({"t": "events", "sid": replay.sids[i], "events": events})))
    spent = dict.fromkeys(("decode", "validate", "pack", "ack"), 0.0)
    now_ms = replay.ts
    for i, message in wire:
        c = conns[i]
        t0 = time.perf_counter()
        frame, err = c.receive(message)
        t1 = time.perf_counter()
        plan = c.events(frame, now_ms)
        t2 = time.perf_counter()
        Append.of(c.site, plan.sid, plan.first, plan.last, plan.append, plan.sealer)
        t3 = time.perf_counter()
        c.encode(c.appended(plan.sid, plan.last))
        t4 = time.perf_counter()
        assert err is None and plan.last and not plan.replies
        spent["decode"] += t1 - t0
        spent["validate"] += t2 - t1
        spent["pack"] += t3 - t2
        spent["ack"] += t4 - t3
    out = {k: v / frames * 1e6 for k, v in spent.items()}
    out["total"] = sum(out.values())
    return out


def open_peer(gw: Any, sid: str) -> Any:
    """A gateway Peer on a :class:`_Transport`, its handshake and hello of ``sid`` done in
    process (site ``loadtest``, analytics consent), as a socket's would be."""
    from serve.edge.peer import Peer

    peer = Peer(gw)
    peer.connection_made(_Transport())  # type: ignore[arg-type]
    peer.data_received(
        b"GET /ws?site=loadtest HTTP/1.1\r\nHost: x\r\n"
        b"Origin: http://loadtest.local\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert peer.conn is not None and peer.hello_timer is not None
    peer.hello_timer.cancel()
    req = peer.conn.hello({"t": "hello", "sid": sid, "consent": ["analytics"]})
    peer.conn.accept_hello(req, False, 0)  # type: ignore[arg-type]
    return peer


def events_frames(replay: Replay, peers: list[Any], frames: int) -> list[tuple[Any, bytes]]:
    """``frames`` masked binary ``events`` frames of the replay's journeys, each with the
    peer of its session (``peers`` in the order of ``replay.sids``)."""
    import msgpack

    from serve.edge import wire

    out = []
    for _ in range(frames):
        i, events = replay.next()
        frame = {"t": "events", "sid": replay.sids[i], "events": events}
        out.append((peers[i], wire.frame(wire.BINARY, msgpack.packb(frame), True)))
    return out


class _Transport:
    """Where a Peer writes in :func:`socket_stage`: counts the frames, sends nothing."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # A loopback peer, as the load tests' are (exempt from the per-address limits).
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def socket_stage(journeys: list, frames: int) -> float:
    """us of CPU per events frame through a gateway's socket layer, in-process.

    Masked WebSocket frames go into ``Peer.data_received`` as the kernel hands
    them over; the gateway's append loop runs against a store that makes
    every run durable at once (no Redis) and acknowledges each frame to a
    transport that only counts. Shard batches are queued and dropped (no
    shards). So: WebSocket parsing, the protocol work, the append round's
    bookkeeping and the ack writes, without system calls.
    """

    from actors.core.sites import Site
    from serve.edge.gateway import Gateway
    from serve.edge.protocol import Limits

    async def run() -> float:
        site = Site("loadtest", origins=("http://loadtest.local",))
        limits = Limits(events_per_s=1e9, burst=1e9)
        gw = Gateway(
            "redis://127.0.0.1:1/0", "stages:", [None, None], {site.key: site}, "s", limits
        )

        async def durable(runs: list) -> list[tuple[int, bool]]:
            return [(r.last, True) for r in runs]

        async def start_durable(runs: list) -> Any:
            return durable(runs)

        gw.store.start_append = start_durable  # type: ignore[method-assign]
        replay = Replay(journeys, seed=3)
        peers = []
        for sid in replay.sids:
            peer = open_peer(gw, sid)
            gw.peers_by_sid[sid] = peer
            peers.append(peer)
        for peer in peers:
            peer.transport.writes = 0  # type: ignore[union-attr]  # not the handshake's
        wire_frames = events_frames(replay, peers, frames)
        loop = asyncio.get_running_loop()
        pipe = gw.pipeline
        appender = [loop.create_task(pipe.append_loop()), loop.create_task(pipe.settle_loop())]
        t0 = time.process_time()
        for k in range(0, frames, 100):  # ~100 frames per append round, as under load
            for peer, data in wire_frames[k : k + 100]:
                peer.data_received(data)
            while pipe.busy:
                await asyncio.sleep(0)
            pipe._pending = {name: [] for name in pipe._pending}
            pipe._pending_events = 0
        spent = time.process_time() - t0
        for task in appender:
            task.cancel()
        acks = sum(p.transport.writes for p in peers)  # type: ignore[union-attr]
        assert acks == frames and gw.stats.errors == 0, (acks, gw.stats.errors)
        return spent / frames * 1e6

    return asyncio.run(run())


def core_stage(journeys: list, batch: int, events: int, tally: bool = False) -> float:
    """us per event of SessionHost.process (``tally``: of the shard's console tally hook after it)."""
    from actors.core.detectors import DetectorConfig
    from actors.core.host import SessionHost
    from actors.core.policy import PolicyConfig
    from actors.model.scoring import Scorer
    from actors.shard.tallies import ShardTallies
    from cluster.keys import Keys
    from cluster.redis_client import redis_client

    rules = (DetectorConfig(), PolicyConfig())
    host = SessionHost(lambda _site: rules)
    scorer = Scorer.bundled()
    # Never flushed here: only its in-memory counting is timed (the flush runs on the I/O loop).
    tallies = ShardTallies(
        redis_client("redis://127.0.0.1:6379/0", aio=True, max_connections=64),
        Keys(),
        {},
        lambda _s: 0.1,
    )
    names = scorer.segments.names if scorer.segments is not None else ()
    replay = Replay(journeys, seed=2)
    batches = [replay.batch(batch) for _ in range(events // batch)]
    n = sum(len(evs) for b in batches for *_, evs in b)
    if not tally:
        t0 = time.perf_counter()
        for b in batches:
            host.process(b, scorer)
        return (time.perf_counter() - t0) / n * 1e6
    spent = 0.0  # in the hook alone: the host's time is the plain stage's
    for b in batches:
        results = host.process(b, scorer)
        t0 = time.perf_counter()
        tallies.batch(b, results, host.active, names)
        spent += time.perf_counter() - t0
    return spent / n * 1e6


def _packed(items: list) -> bytes:
    return pack_batch(
        [
            (
                EVENTS,
                sid,
                site,
                consent,
                Append.of(site, sid, evs[0]["seq"], evs[-1]["seq"], evs).payload,
            )
            for sid, site, consent, evs in items
        ]
    )


def call_stage(
    journeys: list, batch: int, calls: int, runs: int, redis_url: str
) -> list[dict[str, float]]:
    """ms of CPU per shard call, per run: through Ray (actor, caller) and in-process."""
    import ray

    from actors.shard.actor import SessionShard, ShardCore
    from actors.shard.link import ShardLink
    from cluster.config import Settings
    from cluster.redis_server import delete_prefix
    from cluster.stack import RAY_SYSTEM_CONFIG

    sites = Settings().sites_file
    prefix = f"llstages-{uuid.uuid4().hex[:6]}:"
    me = psutil.Process()

    def cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            _system_config=RAY_SYSTEM_CONFIG,
        )
    core = ShardCore(0, redis_url, prefix, sites, 1800.0, False)
    core.warm_up(60)
    shard = SessionShard.remote(1, redis_url, prefix, sites, 1800.0, False)
    ray.get(shard.warm_up.remote())
    actor = psutil.Process(ray.get(shard.memory.remote())["pid"])
    # The same sessions and batches go to both: each replay starts them afresh.
    local, remote = Replay(journeys, seed=3), Replay(journeys, seed=3)
    link = ShardLink(shard, "bench")

    async def over_link(work: list[bytes]) -> None:
        for b in work:
            await link.call(b, time.time())
        link.close()  # the next run's loop makes its own connection

    for _ in range(20):
        core.handle(_packed(local.batch(batch)))
        ray.get(shard.handle.remote(_packed(remote.batch(batch))))
    asyncio.run(over_link([_packed(remote.batch(batch)) for _ in range(20)]))
    out = []
    try:
        for _ in range(runs):
            work = [_packed(local.batch(batch)) for _ in range(calls)]
            t0 = cpu(me)
            for b in work:
                core.handle(b)
            in_process = (cpu(me) - t0) / calls * 1e3
            work = [_packed(remote.batch(batch)) for _ in range(calls)]
            a0, c0 = cpu(actor), cpu(me)
            for b in work:
                ray.get(shard.handle.remote(b))
            ray_actor, ray_caller = cpu(actor) - a0, cpu(me) - c0
            work = [_packed(remote.batch(batch)) for _ in range(calls)]
            a0, c0 = cpu(actor), cpu(me)
            asyncio.run(over_link(work))
            out.append(
                {
                    "in_process_ms": in_process,
                    "actor_ms": ray_actor / calls * 1e3,
                    "caller_ms": ray_caller / calls * 1e3,
                    "link_actor_ms": (cpu(actor) - a0) / calls * 1e3,
                    "link_caller_ms": (cpu(me) - c0) / calls * 1e3,
                }
            )
    finally:
        ray.kill(shard)
        delete_prefix(redis_url, prefix)
    return out


def append_stage(journeys: list, rounds: int, runs: int, redis_url: str) -> list[dict[str, float]]:
    """us of client CPU per append round (``EventStore.append_many``), per run.

    The gateway's call (its own connection, ``serve.edge.resp.ScriptCaller``)
    against the same script called through redis-py, the baseline, on the
    same rounds of ~8 sessions' runs each, alternated within each run. The
    CPU includes the system calls and the loopback's share of the kernel.
    """

    from cluster.keys import Keys
    from cluster.redis_client import redis_client
    from cluster.redis_server import delete_prefix
    from serve.edge.resp import ScriptCaller
    from serve.edge.store import APPEND_LUA, EventStore

    prefix = f"llstages-{uuid.uuid4().hex[:6]}:"

    async def run() -> list[dict[str, float]]:
        r = redis_client(redis_url, aio=True)
        store = EventStore(r, Keys(prefix))  # encodes the rounds, as the gateway does
        own = ScriptCaller(r, APPEND_LUA)
        baseline = r.register_script(APPEND_LUA)

        async def via_redis_py(arg: bytes) -> object:
            return await baseline(args=[arg])

        arms = {"gateway_us": own, "redis_py_us": via_redis_py}
        replay = Replay(journeys, seed=4)
        out = []
        try:
            for _ in range(runs):
                result = {}
                for name, call in arms.items():
                    args = [
                        store.append_arg(
                            [
                                Append.of(site, sid, evs[0]["seq"], evs[-1]["seq"], evs)
                                for sid, site, _consent, evs in replay.batch(11)
                            ]
                        )
                        for _ in range(rounds)
                    ]
                    await call(args[0])
                    t0 = time.process_time()
                    for arg in args:
                        await call(arg)
                    result[name] = (time.process_time() - t0) / rounds * 1e6
                out.append(result)
        finally:
            own.close()
            store.close()
            await r.aclose()
        return out

    try:
        return asyncio.run(run())
    finally:
        delete_prefix(redis_url, prefix)


def core_only(args: argparse.Namespace) -> int:
    """us per event of the core stage, and of the console tally hook the shard runs after it."""
    journeys = load_journeys("mix", 2000, seed=1)
    from cluster.gc_tuning import tune_for_throughput

    tune_for_throughput()
    plain, hook = [], []
    for _ in range(args.runs):
        plain.append(core_stage(journeys, args.batch, 20_000))
        hook.append(core_stage(journeys, args.batch, 20_000, tally=True))
    out = {
        "core_us_per_event": statistics.median(plain),
        "tally_hook_us_per_event": statistics.median(hook),
        "runs": {"core": plain, "tally_hook": hook},
        "batch": args.batch,
    }
    print(json.dumps(out, indent=1))
    return 0


def seal_only(args: argparse.Namespace) -> int:
    """The gateway stage with and without sealing, alternated; prints, writes nothing."""
    from cluster.sealing import MasterKeys

    journeys = load_journeys("mix", 2000, seed=1)
    plain, sealed = [], []
    for _ in range(args.runs):
        plain.append(gateway_stage(journeys, 20_000, seal=False))
        sealed.append(gateway_stage(journeys, 20_000, seal=True))
    master = MasterKeys("bench-master-key-0123456789")
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):  # a hello's key work: a candidate, then the stored key unwrapped
        master.sealer("loadtest:s", master.new_wrapped("loadtest"))
    hello_us = (time.perf_counter() - t0) / n * 1e6
    out = {
        "plain_us_per_frame": {k: statistics.median(g[k] for g in plain) for k in plain[0]},
        "sealed_us_per_frame": {k: statistics.median(g[k] for g in sealed) for k in sealed[0]},
        "hello_key_us_per_session": hello_us,
        "runs": args.runs,
    }
    out["seal_us_per_frame"] = (
        out["sealed_us_per_frame"]["pack"] - out["plain_us_per_frame"]["pack"]
    )
    print(json.dumps(out, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64, help="events per shard batch")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "stages.json")
    ap.add_argument(
        "--core-only",
        action="store_true",
        help="only the core stage, with and without the console tally (prints, writes nothing)",
    )
    ap.add_argument(
        "--seal-only",
        action="store_true",
        help="only the gateway stage, with and without encryption at rest (prints, writes nothing)",
    )
    args = ap.parse_args()
    if args.core_only:
        return core_only(args)
    if args.seal_only:
        return seal_only(args)
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    journeys = load_journeys("mix", 2000, seed=1)
    from cluster.gc_tuning import tune_for_throughput

    tune_for_throughput()  # the collector settings the gateways and shards run with
    seal = os.environ.get("LIFELINE_ENCRYPT_AT_REST", "1") not in ("0", "false", "")
    gateway = [gateway_stage(journeys, 20_000, seal) for _ in range(args.runs)]
    sockets = [socket_stage(journeys, 20_000) for _ in range(args.runs)]
    core = [core_stage(journeys, args.batch, 20_000) for _ in range(args.runs)]
    appends = append_stage(journeys, 2000, args.runs, redis_url)
    calls = call_stage(journeys, args.batch, 200, args.runs, redis_url)
    summary = {
        "gateway_us_per_frame": {k: statistics.median(g[k] for g in gateway) for k in gateway[0]},
        "socket_us_per_frame": statistics.median(sockets),
        "core_us_per_event": statistics.median(core),
        "append_call_cpu_us": {k: statistics.median(a[k] for a in appends) for k in appends[0]},
        "shard_call_cpu_ms": {k: statistics.median(c[k] for c in calls) for k in calls[0]},
        "args": vars(args) | {"out": str(args.out)},
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "runs": {
            "gateway": gateway,
            "socket": sockets,
            "core": core,
            "appends": appends,
            "calls": calls,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
