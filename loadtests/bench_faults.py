"""Faults under the spine's load (issue #24): a worker node, a Redis primary or a gateway killed, a shard change.

One benchmark, one load and one summary for every fault, chosen with ``--fault``:

* ``primary``: a local Redis primary, two replicas and three Sentinels
  (cluster/sentinel_local.py) behind the stack's ``redis+sentinel://`` URL;
  at ``--kill-at`` the primary gets SIGKILL and Sentinel promotes a replica.
  ``--wait 1`` acknowledges an append once a replica has it, ``--wait 0``
  measures the primary's ack alone (appendfsync everysec, asynchronous
  replication: a bounded loss is expected, README).
* ``gateway``: the stack with two gateway processes sharing the WebSocket
  port, as ``lifeline up --gateways 2`` starts them (cluster/stack.py: the
  main process's gateway and one supervised cluster/gateway_worker.py); at
  ``--kill-at`` the extra one gets SIGKILL. Its visitors' sockets are cut:
  they reconnect (to the surviving gateway: the dead one no longer listens),
  resume with their tokens and resend what was not acknowledged; the
  supervisor restarts the process meanwhile.
* ``reshard``: at ``--add-at`` a shard is added, at ``--remove-at`` removed
  again, through the code path of ``lifeline shards add|remove``.
* ``node``: a local Ray cluster of a head and two worker nodes, each its own
  raylet (cluster/local_cluster.py, as tests/test_multinode.py starts it),
  which the stack joins (detached shards, one per node with ``--shards 3``);
  at ``--kill-at`` the worker node holding the most shards loses its raylet
  and every process under it (SIGKILL), and Ray restarts its shards on the
  surviving nodes.

The stack runs in this process (its own Ray cluster, shards as in ``lifeline
up``), so that the main gateway's record of what the shards scored
(``wait_scored``) times the recovery; the load comes from ``--procs``
generator processes driving bench_spine.py's visitors (``Visitor`` and
``drive``: one socket and session each, Poisson events at ``--rate``, the
real client's batching, resends and reconnection). Reports:

* acked lost: events acknowledged before the fault (each generator notes its
  visitors' acked seq half a second after it, see ``NOTE_AFTER_S``) that the
  log lacks at the end; acked missing at end: the same for every ack;
* duplicated: seqs logged twice, over every session's whole log;
* rescored max/p99: for every affected session (``primary``: all;
  ``gateway``: those whose socket the kill cut; ``node``: those whose shard
  was on the killed node; ``reshard``: those whose shard changed) the seconds from the fault until its first event sent after
  the note was scored (``reshard``: from each change's request until the
  moved session's next event was scored by its new shard);
* ack and intervention p50/p99 over the minute around the fault (30 s
  either side of it, or of the first and last change, as far as the run
  covers it), and the fault's own figures (failover time, restart time,
  sessions moved).

    python loadtests/bench_faults.py --fault primary --sessions 2000 --rate 5 --duration 60 --kill-at 30 --wait 1
    python loadtests/bench_faults.py --fault gateway --sessions 2000 --rate 5 --duration 60 --kill-at 30
    python loadtests/bench_faults.py --fault reshard --sessions 2000 --rate 5 --duration 90 --add-at 30 --remove-at 60
    python loadtests/bench_faults.py --fault node --sessions 2000 --rate 5 --duration 60 --kill-at 30 --shards 3

Smoke size (proves it runs, on two shared cores): ``--sessions 100 --rate 5
--duration 20 --kill-at 8`` (``--add-at 6 --remove-at 13`` for ``reshard``).
Results go to ``--out`` (JSON; default loadtests/results/faults-<fault>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.bench_spine import Visitor, drain, drive, pct, split  # noqa: E402
from loadtests.journeys import SOURCES, load_journeys  # noqa: E402

AROUND_S = 30.0  # the "minute around the fault": this much either side of it
# When the generators note what was acked "before the fault": every ack the old
# primary's rounds earned has arrived by then and none from a new primary can have
# (Sentinel waits down-after-milliseconds, 1 s, to act); a killed gateway's sockets
# are cut by then (the kernel resets them at once).
NOTE_AFTER_S = 0.5
DRAIN_S = 15.0  # after the load: resends and their last acks
RESCORE_TIMEOUT_S = 60.0


# -- load generator processes ---------------------------------------------------------


def worker(
    ws_url: str,
    sessions: int,
    rate: float,
    duration: float,
    note_at: float,
    journeys: list[list[dict]],
    seed: int,
    q: Any,
    start_at: float,
) -> None:
    """One generator: its visitors for ``duration`` s from ``start_at`` (wall clock).

    Puts ``("fault", {sid: (acked, next seq, cut)})`` at ``note_at`` s into the
    run and ``("done", {...})`` once its visitors have their last acks.
    """
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res: dict[str, Any] = {"sent": 0, "acked": 0, "ack_lat": [], "ack_at": [], "iv_lat": []}
    res.update(iv_at=[], interventions=0, errors={}, cuts=0, resumed=0)

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter()  # ack_at and iv_at are seconds since t0 (= start_at)
        rng = random.Random(seed)
        window = (t0, t0 + duration + DRAIN_S)
        visitors = [
            Visitor(journeys, rate, res, window, random.Random(rng.random()))
            for _ in range(sessions)
        ]
        for i in range(0, len(visitors), 50):  # ramp the hellos, as bench_spine does
            await asyncio.gather(*(v.connect(ws_url) for v in visitors[i : i + 50]))
        runner = asyncio.create_task(drive(visitors, t0 + duration))
        await asyncio.sleep(max(0.0, t0 + note_at - time.perf_counter()))
        q.put(("fault", {v.sid: (v.acked, v.seq + 1, v.cut_at is not None) for v in visitors}))
        await runner
        await drain(visitors, DRAIN_S)
        final = {v.sid: (v.acked, len(v.unacked) + len(v.pending)) for v in visitors}
        # Seconds into the run of each cut visitor's cut and resume, and its attempts.
        res["cut_resumed"] = [
            (v.cut_at - t0, v.resumed_at - t0 if v.resumed_at else None, v.tries)
            for v in visitors
            if v.cut_at is not None
        ]
        for v in visitors:
            v.leave()
        q.put(("done", {"res": res, "final": final}))

    asyncio.run(main())


# -- the faults ----------------------------------------------------------------------


class Fault:
    """One kind of fault: the stack it needs, what it does at its times, whom it affects."""

    def __init__(self, args: argparse.Namespace, prefix: str, data_dir: str) -> None:
        self.args, self.prefix, self.data_dir = args, prefix, data_dir
        self.stack: Any = None

    def times(self) -> list[float]:
        """Seconds into the run at which :meth:`inject` is called (0, 1, ...)."""
        return [self.args.kill_at]

    async def prepare(self, i: int) -> None:
        """Before fault ``i``'s clock starts: what may take a while to find (nothing by default)."""

    def settings(self, **extra: Any) -> Any:
        from cluster.config import Settings

        return Settings(
            prefix=self.prefix,
            ws_port=0,
            http_port=0,
            console_port=0,
            shards=self.args.shards,
            data_dir=self.data_dir,
            **extra,
        )

    async def start(self) -> Any:
        raise NotImplementedError

    async def inject(self, i: int) -> dict[str, Any]:
        """Do fault ``i``; its figures (``rescored_s``: seconds per affected session, if timed here)."""
        raise NotImplementedError

    async def settle(self, at: float) -> dict[str, Any]:
        """After the first fault: wait for the system's own repair; its figures."""
        return {}

    async def after(self) -> dict[str, Any]:
        """Once the affected sessions are scored again: more of the fault's figures."""
        return {}

    def affected(self, notes: dict[str, tuple[int, int, bool]]) -> list[str]:
        """The sessions whose rescoring is timed from the first fault (sid list)."""
        return list(notes)

    async def stop(self) -> None:
        if self.stack is not None:
            await self.stack.stop()


class PrimaryKill(Fault):
    """SIGKILL the Redis primary under Sentinel."""

    async def start(self) -> Any:
        from cluster.sentinel_local import SentinelSet
        from cluster.stack import Stack

        self.sset = await asyncio.to_thread(SentinelSet, 2)
        s = self.settings(
            redis_url=self.sset.url,
            redis_wait_replicas=self.args.wait,
            redis_wait_ms=self.args.wait_ms,
        )
        self.stack = Stack(s)
        return await self.stack.start(shard_name_suffix=f"-{uuid.uuid4().hex[:4]}")

    async def inject(self, i: int) -> dict[str, Any]:
        self.old = await asyncio.to_thread(self.sset.kill_primary)
        return {"wait_replicas": self.args.wait, "wait_ms": self.args.wait_ms}

    async def settle(self, at: float) -> dict[str, Any]:
        new = await asyncio.to_thread(self.sset.wait_failover, self.old, 60.0)
        took = time.perf_counter() - at
        return {"old_primary": self.old, "new_primary": new, "failover_s": round(took, 2)}

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            if hasattr(self, "sset"):
                await asyncio.to_thread(self.sset.stop)


class GatewayKill(Fault):
    """SIGKILL the extra gateway process of a two-gateway stack (``lifeline up --gateways 2``)."""

    async def start(self) -> Any:
        from cluster.stack import Stack

        self.stack = Stack(self.settings())
        suffix = f"-{uuid.uuid4().hex[:4]}"
        return await self.stack.start(shard_name_suffix=suffix, gateways=2)

    async def inject(self, i: int) -> dict[str, Any]:
        (self.proc,) = self.stack.processes
        self.pid = self.proc.pid
        os.kill(self.pid, signal.SIGKILL)
        return {"killed_pid": self.pid}

    async def settle(self, at: float) -> dict[str, Any]:
        # The supervisor's restart (cluster/processes.py): its state, nothing to await.
        while self.proc.pid == self.pid or self.proc.state != "up":
            if time.perf_counter() - at > 120:
                return {"restarted_s": None}
            await asyncio.sleep(0.1)
        return {"restarted_s": round(time.perf_counter() - at, 2), "new_pid": self.proc.pid}

    def affected(self, notes: dict[str, tuple[int, int, bool]]) -> list[str]:
        return [sid for sid, (_a, _n, cut) in notes.items() if cut]


class Reshard(Fault):
    """Add a shard, then remove it (``lifeline shards add|remove``'s code path)."""

    def times(self) -> list[float]:
        return [self.args.add_at, self.args.remove_at]

    async def start(self) -> Any:
        from cluster.stack import Stack

        self.stack = Stack(self.settings())
        self.name = ""
        return await self.stack.start(shard_name_suffix=f"-{uuid.uuid4().hex[:4]}")

    async def inject(self, i: int) -> dict[str, Any]:
        gw = self.stack.gateway
        old, asked = gw.ring, time.perf_counter()
        if i == 0:
            outcome = await self.stack.add_shard()
        else:
            outcome = await self.stack.remove_shard(self.name)
        self.name = outcome["name"]
        info = {"op": "add" if i == 0 else "remove", "name": self.name}
        info["switch_s"] = round(time.perf_counter() - asked, 3)
        # The sessions whose owner changed, each until its next event is scored by the new one.
        waits = []
        for sid, peer in list(gw.peers_by_sid.items()):
            if old.owner(sid) != gw.ring.owner(sid):
                cursor = peer.conn.sessions.get(sid) if peer.conn is not None else None
                if cursor is not None:
                    waits.append(rescored(gw, sid, cursor.scored + 1, asked))
        times = list(await asyncio.gather(*waits))
        finite = [t for t in times if t != float("inf")]
        info["affected"] = len(waits)  # moved
        info["rescored_max_s"] = round(max(times), 2) if times else None
        info["not_rescored"] = len(times) - len(finite)
        info["rescored_s"] = times
        return info

    def affected(self, notes: dict[str, tuple[int, int, bool]]) -> list[str]:
        return []  # timed per change, in inject


class NodeKill(Fault):
    """SIGKILL a worker node of a local multi-node Ray cluster (its raylet and everything under it)."""

    async def start(self) -> Any:
        from cluster.stack import Stack

        # This process joins the cluster main() started (RAY_ADDRESS and the token are in its
        # environment: Ray reads the token once, at import), as `lifeline up` would.
        self.stack = Stack(self.settings())
        return await self.stack.start()

    def node(self, name: str) -> Any:
        from cluster.local_cluster import LocalNode

        return LocalNode(name, self.args.cluster_root / name, 1)

    async def prepare(self, i: int) -> None:
        import ray

        from cluster.local_cluster import node_name

        # Node id -> node name (head, a, b), of the nodes alive now.
        names = {n["NodeID"]: node_name(n.get("Resources", {})) for n in ray.nodes() if n["Alive"]}
        self.node_of = {}  # shard name -> node name
        for name, shard in self.stack.gateway.shards.items():
            self.node_of[name] = names[(await shard.ping.remote())["node_id"]]
        on_workers = [n for n in self.node_of.values() if n != "head"]
        self.victim = max(set(on_workers), key=on_workers.count)
        self.moved = [s for s, n in self.node_of.items() if n == self.victim]
        self.victim_id = next(i for i, n in names.items() if n == self.victim)
        # Found before the clock starts (it takes a while on a busy machine), killed at once.
        self.procs = await asyncio.to_thread(self.node(self.victim).processes)

    async def inject(self, i: int) -> dict[str, Any]:
        self.killed_wall = time.time()
        pids = await asyncio.to_thread(self.node(self.victim).kill, self.procs)
        return {"victim": self.victim, "shards_on_it": self.moved, "killed_pids": len(pids)}

    async def settle(self, at: float) -> dict[str, Any]:
        import ray

        # Where the time goes: the head declaring the node dead, Ray restarting its shards.
        dead_s = None
        while time.perf_counter() - at < 60:
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            if self.victim_id not in alive:
                dead_s = round(time.perf_counter() - at, 2)
                break
            await asyncio.sleep(0.05)  # the GCS's node table has no event to await here
        pings = [await self.stack.gateway.shards[s].ping.remote() for s in self.moved]
        return {
            "node_dead_after_s": dead_s,
            "shard_started_after_s": round(
                max(p["started_at"] for p in pings) - self.killed_wall, 2
            ),
            "shard_ready_after_s": round(max(p["ready_at"] for p in pings) - self.killed_wall, 2),
            "placed_after": sorted({p["node_id"][:8] for p in pings}),
        }

    async def after(self) -> dict[str, Any]:
        # Where the restarted shards' time went (busy: applying and scoring under the lock).
        pings = [await self.stack.gateway.shards[s].ping.remote() for s in self.moved]
        keys = ("activations", "whole_log_reads", "load_ms", "busy_ms", "batches", "events")
        return {"restarted": [{k: round(p[k]) for k in keys} for p in pings]}

    def affected(self, notes: dict[str, tuple[int, int, bool]]) -> list[str]:
        ring = self.stack.gateway.ring
        return [sid for sid in notes if ring.owner(sid) in self.moved]

    async def stop(self) -> None:
        import ray

        if self.stack is None or self.stack.gateway is None:
            return await super().stop()
        names = list(self.stack.gateway.shards)
        await super().stop()
        for name in names:  # detached: what `lifeline down` does
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, namespace="lifeline"), no_restart=True)


FAULTS: dict[str, type[Fault]] = {
    "primary": PrimaryKill,
    "gateway": GatewayKill,
    "reshard": Reshard,
    "node": NodeKill,
}


async def rescored(gw: Any, sid: str, seq: int, since: float) -> float:
    """Seconds from ``since`` until event ``seq`` of ``sid`` is scored (inf: not in time)."""
    try:
        await gw.wait_scored(sid, seq, timeout=RESCORE_TIMEOUT_S)
    except asyncio.TimeoutError:
        return float("inf")
    return time.perf_counter() - since


# -- the run and its summary -----------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from cluster.redis_server import delete_prefix

    data_dir = tempfile.TemporaryDirectory(prefix="lifeline-bench-faults-")
    prefix = f"llbench-{args.fault}-{uuid.uuid4().hex[:6]}:"
    fault = FAULTS[args.fault](args, prefix, data_dir.name)
    times = fault.times()
    journeys = load_journeys(args.source, 500, seed=1)
    ctx = mp.get_context("spawn")  # not fork: this process runs Ray
    q = ctx.Queue()
    procs: list[Any] = []
    try:
        stack = await fault.start()
        gw = stack.gateway
        start_at = time.time() + 5.0  # the generators' imports
        for i, n in enumerate(split(args.sessions, args.procs)):
            note_at = times[0] + NOTE_AFTER_S
            p = ctx.Process(
                target=worker,
                args=(stack.ws_url, n, args.rate, args.duration, note_at, journeys, i, q, start_at),
            )
            p.start()
            procs.append(p)
        faults: list[dict[str, Any]] = []
        notes: dict[str, tuple[int, int, bool]] = {}
        rescore: list[float] = []
        for i, t in enumerate(times):
            await asyncio.sleep(max(0.0, start_at + t - time.time()))
            await fault.prepare(i)
            at, wall = time.perf_counter(), time.time()
            info = await fault.inject(i)
            info["at_s"] = round(wall - start_at, 2)
            if i == 0:
                for _ in procs:
                    kind, part = await asyncio.to_thread(q.get)
                    assert kind == "fault", kind
                    notes.update(part)
                settling = asyncio.ensure_future(fault.settle(at))
                waits = [rescored(gw, sid, notes[sid][1], at) for sid in fault.affected(notes)]
                rescore += await asyncio.gather(*waits)
                info |= await settling
                info |= await fault.after()
                info.setdefault("affected", len(waits))  # reshard: the sessions moved
            rescore += info.pop("rescored_s", [])
            faults.append(info)
            print(json.dumps(info), flush=True)
        # Off the event loop: the gateway runs on it and must keep serving the visitors.
        parts = [(await asyncio.to_thread(q.get, timeout=args.duration + 180))[1] for _ in procs]
        for p in procs:
            p.join(10)
        summary = await summarize(gw, parts, notes, rescore, [f["at_s"] for f in faults])
        return {"fault": args.fault, "sessions": args.sessions, "rate": args.rate} | {
            "duration_s": args.duration,
            "shards": args.shards,
            **summary,
            "faults": faults,
        }
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        redis_url = getattr(fault.stack, "redis_url", "")
        await fault.stop()
        if args.fault != "primary" and redis_url:  # the Sentinel set's Redis goes with it
            delete_prefix(redis_url, prefix)
        data_dir.cleanup()


async def summarize(
    gw: Any,
    parts: list[dict[str, Any]],
    notes: dict[str, tuple[int, int, bool]],
    rescore: list[float],
    fault_at: list[float],
) -> dict[str, Any]:
    """The figures every fault reports (module docstring), from the log and the generators."""
    lost = missing = duplicated = left = 0
    for part in parts:
        for sid, (acked, unacked) in part["final"].items():
            seqs = [e["seq"] for e in await gw.store.read_events("loadtest", sid)]
            have = set(seqs)
            duplicated += len(seqs) - len(have)
            lost += sum(1 for s in range(1, notes[sid][0] + 1) if s not in have)
            missing += sum(1 for s in range(1, acked + 1) if s not in have)
            left += unacked
    lo, hi = fault_at[0] - AROUND_S, fault_at[-1] + AROUND_S
    ack, iv = [], []
    errors: dict[str, int] = {}
    for part in parts:
        r = part["res"]
        ack += [x for at, x in zip(r["ack_at"], r["ack_lat"], strict=True) if lo <= at <= hi]
        iv += [x for at, x in zip(r["iv_at"], r["iv_lat"], strict=True) if lo <= at <= hi]
        for k, n in r["errors"].items():
            errors[k] = errors.get(k, 0) + n
    finite = [x for x in rescore if x != float("inf")]

    def ms(values: list[float], p: float) -> float | None:
        return round(pct(values, p) * 1000, 1) if values else None

    return {
        "acked_before_fault": sum(a for a, _n, _c in notes.values()),
        "acked_lost": lost,
        "acked_missing_at_end": missing,
        "duplicated": duplicated,
        "left_unacked_at_end": left,
        "rescored_sessions": len(rescore),
        "rescored_max_s": round(max(rescore), 2) if rescore else None,
        "rescored_p99_s": round(pct(finite, 99), 2) if finite else None,
        "not_rescored": len(rescore) - len(finite),
        "acked_total": sum(p["res"]["acked"] for p in parts),
        "ack_p50_ms_around": ms(ack, 50),
        "ack_p99_ms_around": ms(ack, 99),
        "iv_p50_ms_around": ms(iv, 50),
        "iv_p99_ms_around": ms(iv, 99),
        "iv_samples": len(iv),
        "cuts": sum(p["res"]["cuts"] for p in parts),
        "resumed": sum(p["res"]["resumed"] for p in parts),
        **resume_figures(parts, fault_at[0]),
        "errors": errors,
    }


def on_local_cluster(argv: list[str]) -> int:
    """``--fault node``: start a head and two worker raylets, run this benchmark as their driver.

    A child process: Ray reads its token from the environment once, at import.
    """
    import subprocess

    from cluster.local_cluster import LocalCluster

    cluster = LocalCluster(workers=("a", "b"), cpus=1, head_cpus=1, dashboard=False)
    cluster.start()
    try:
        argv = [sys.executable, __file__, *argv, "--cluster-root", str(cluster.root)]
        return subprocess.run(argv, env=cluster.env, check=False).returncode
    finally:
        cluster.stop()


def resume_figures(parts: list[dict[str, Any]], at: float) -> dict[str, Any]:
    """For cut visitors: seconds from the fault to the cut and to the resume's welcome."""
    rows = [r for p in parts for r in p["res"].get("cut_resumed", [])]
    if not rows:
        return {}
    resumed = sorted(r - at for _c, r, _t in rows if r is not None)
    cut = sorted(c - at for c, _r, _t in rows)
    return {
        "cut_max_s": round(cut[-1], 2),
        "resumed_p50_s": round(pct(resumed, 50), 2) if resumed else None,
        "resumed_max_s": round(resumed[-1], 2) if resumed else None,
        "reconnect_tries_max": max(t for _c, _r, t in rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--fault", choices=sorted(FAULTS), required=True)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=5.0, help="events/s per visitor")
    ap.add_argument("--duration", type=float, help="seconds of load (default 60; 90 for reshard)")
    ap.add_argument("--kill-at", type=float, default=30.0, help="primary, gateway: s into the run")
    ap.add_argument(
        "--add-at", type=float, default=30.0, help="reshard: add a shard, s into the run"
    )
    ap.add_argument("--remove-at", type=float, default=60.0, help="reshard: remove it")
    ap.add_argument("--wait", type=int, default=1, help="primary: LIFELINE_REDIS_WAIT_REPLICAS")
    ap.add_argument("--wait-ms", type=int, default=100, help="primary: LIFELINE_REDIS_WAIT_MS")
    ap.add_argument("--shards", type=int, default=2, help="shards at start (node: 3, one a node)")
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--source", choices=SOURCES, default="sim", help="the visitors' journeys")
    ap.add_argument("--out", type=Path, help="default loadtests/results/faults-<fault>.json")
    ap.add_argument("--cluster-root", type=Path, help=argparse.SUPPRESS)  # node: set by main()
    args = ap.parse_args(argv)
    if args.duration is None:
        args.duration = 90.0 if args.fault == "reshard" else 60.0
    times = [args.add_at, args.remove_at] if args.fault == "reshard" else [args.kill_at]
    if not 0 < times[0] <= times[-1] < args.duration:
        ap.error("the fault times must fall inside --duration, in order")
    out = args.out or ROOT / "loadtests" / "results" / f"faults-{args.fault}.json"
    if args.fault == "node" and args.cluster_root is None:
        return on_local_cluster(argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("LIFELINE_TRACE_SAMPLE", "0")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    tolerated = args.fault == "primary" and args.wait == 0  # the documented bound, README
    bad = result["duplicated"] or (result["acked_lost"] and not tolerated)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
