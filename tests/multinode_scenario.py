"""The node-failure scenario of tests/test_multinode.py, run as a driver of the test's cluster.

A separate process because one process is the driver of one Ray cluster,
and the pytest process already drives the suite's (tests/conftest.py). It
joins the local multi-node cluster (``RAY_ADDRESS``, token in the
environment: cluster/local_cluster.py), starts a Stack in joined mode
(detached shards spread over the nodes), drives real WebSocket clients,
kills the worker node that hosts the most shards while they send, and then
starts a second Stack that must find the same shards. It prints one JSON
object with what it saw; the test asserts on it (this file asserts nothing,
so a failure is reported with the figures).

    python tests/multinode_scenario.py --root /tmp/llray-x --dashboard http://... \\
        --redis redis://... --prefix lltest-mn-...: --sessions 24
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.core.events import validate_event  # noqa: E402
from actors.core.session import replay  # noqa: E402
from cluster.config import Settings  # noqa: E402
from cluster.local_cluster import LocalNode, gcs_server, node_name  # noqa: E402
from cluster.stack import Stack  # noqa: E402
from serve.dev.pyclient import LifelineClient  # noqa: E402
from training.simulator import scripted  # noqa: E402

ORIGIN = "http://127.0.0.1:8080"
PARTS = ("calm", "struggling", "calm", "struggling")  # ~74 events a session
FIRST = 20  # events sent (and scored) before the fault
GAP_S = 0.1  # one event per session per GAP_S while the node dies: 10 events/s a session


def journey(start_ms: int) -> list[dict]:
    """Scripted journeys back to back, numbered 1.. and spaced in time (recent: accepted)."""
    out: list[dict] = []
    t = start_ms
    for kind in PARTS:
        part = scripted(kind, "x", t)
        for ev in part:
            out.append(dict(ev, seq=len(out) + 1))
        t = part[-1]["ts"] + 1000
    return out


def placement(dashboard: str) -> dict[str, Any]:
    """Shard name -> node name (head, a, b), from Ray's state API, and restarts per shard."""
    from ray.util.state import list_actors, list_nodes

    node_names, dead_at = {}, {}
    # No state filter: with a dead node among them Ray reports the answer as truncated.
    for node in list_nodes(address=dashboard, detail=True, raise_on_missing_output=False):
        node_names[node.node_id] = node_name(node.resources_total)
        if node.state == "DEAD":
            dead_at[node_names[node.node_id]] = node.end_time_ms / 1000.0
    actors = list_actors(
        address=dashboard,
        filters=[("class_name", "=", "SessionShard"), ("state", "=", "ALIVE")],
        detail=True,
        raise_on_missing_output=False,
    )
    return {
        "nodes": {a.name: node_names.get(a.node_id, a.node_id) for a in actors},
        "actor_ids": {a.name: a.actor_id for a in actors},
        "restarts": {a.name: a.num_restarts for a in actors},
        "dead_at": dead_at,
    }


async def wait_placed(dashboard: str, names: list[str], timeout: float = 30.0) -> dict[str, Any]:
    """The placement once every shard in ``names`` is alive (after a restart, it takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await asyncio.to_thread(placement, dashboard)
        if set(names) <= set(seen["nodes"]) or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.2)  # the state API has no event to await


def settings_of(args: argparse.Namespace) -> Settings:
    """The scenario's stack: the given Redis and prefix, free ports, ``args.shards`` shards."""
    return Settings(
        redis_url=args.redis,
        prefix=args.prefix,
        ws_port=0,
        http_port=0,
        console_port=0,
        shards=args.shards,
        host="127.0.0.1",
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_of(args)
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    stack = Stack(settings)
    await stack.start()
    out["stack_start_s"] = time.monotonic() - t0
    names = list(stack.gateway.shards)
    out["detached"] = stack.placement.detached
    out["names"] = names
    before = await wait_placed(args.dashboard, names)
    out["before"] = before
    on_workers = [n for n in before["nodes"].values() if n != "head"]
    victim = max(set(on_workers), key=on_workers.count) if on_workers else None
    out["victim"] = victim
    if victim is None:
        return out
    moved = [name for name, node in before["nodes"].items() if node == victim]

    now_ms = int(time.time() * 1000)
    sids = [f"mn-{i}-{uuid.uuid4().hex[:8]}" for i in range(args.sessions)]
    journeys = {sid: journey(now_ms - 300_000) for sid in sids}
    clients = {}
    for sid in sids:
        clients[sid] = LifelineClient(stack.ws_url, "demo", sid, ORIGIN)
        welcome = await clients[sid].connect()
        assert welcome["t"] == "welcome", welcome
    gw = stack.gateway
    affected = [sid for sid in sids if gw.ring.owner(sid) in moved]
    out["affected"] = len(affected)
    for sid in sids:
        await clients[sid].send_events(journeys[sid][:FIRST])
    for sid in sids:
        await gw.wait_scored(sid, FIRST, timeout=30)

    # The fault, while every session keeps sending.
    killed_at: list[float] = []
    first_after: dict[str, int] = {}

    async def keep_sending(sid: str) -> None:
        for ev in journeys[sid][FIRST:]:
            await clients[sid].send_events([ev])
            if killed_at and sid not in first_after:
                first_after[sid] = ev["seq"]
            await asyncio.sleep(GAP_S)  # the visitor's pace, not a wait for anything

    senders = [asyncio.ensure_future(keep_sending(sid)) for sid in sids]
    await asyncio.sleep(1.0)  # under way for a second: the node dies mid-stream
    node = LocalNode(victim, Path(args.root) / victim, 1)
    procs = await asyncio.to_thread(node.processes)  # found first: the clock starts at the kill
    killed_at.append(time.monotonic())
    killed_wall = time.time()
    for proc in procs:
        proc.kill()
    out["killed_pids"] = len(await asyncio.to_thread(node.kill, procs))

    async def resumed(sid: str) -> float:
        while sid not in first_after:  # its first event sent after the kill
            await asyncio.sleep(0.01)
        await gw.wait_scored(sid, first_after[sid], timeout=60)
        return time.monotonic() - killed_at[0]

    waits = await asyncio.gather(*(resumed(sid) for sid in affected))
    out["resume_s"] = max(waits) if waits else None
    await asyncio.gather(*senders)
    for sid in sids:
        n = len(journeys[sid])
        await clients[sid].wait_acked(n, timeout=60)
        await gw.wait_scored(sid, n, timeout=60)
    out["after"] = await wait_placed(args.dashboard, names)
    # Where the time to resume went: the head noticing, Ray restarting the shard, the rest.
    dead = out["after"]["dead_at"].get(victim)
    out["node_dead_after_s"] = dead - killed_wall if dead else None
    infos = {name: await gw.shards[name].ping.remote() for name in moved}
    out["shard_started_after_s"] = max(i["started_at"] for i in infos.values()) - killed_wall
    out["shard_ready_after_s"] = max(i["ready_at"] for i in infos.values()) - killed_wall

    # What was acknowledged is stored once, and each session is what an uninterrupted run makes.
    lost, duplicated, differ = 0, 0, []
    for sid in sids:
        stored = await gw.store.read_events("demo", sid)
        seqs = [e["seq"] for e in stored]
        duplicated += len(seqs) - len(set(seqs))
        lost += len(set(range(1, clients[sid].acked + 1)) - set(seqs))
        live = await stack.shard_for(sid).session_row.remote(sid)
        uninterrupted = replay(
            [validate_event(e, now_ms=e["ts"]) for e in stored], sid=sid, site="demo"
        )
        if live != uninterrupted[-1] or len(stored) != len(journeys[sid]):
            differ.append(sid)
    out.update(lost=lost, duplicated=duplicated, differ=differ, sessions=len(sids))
    out["acked"] = sum(c.acked for c in clients.values())
    out["shard_retries"] = gw.stats.shard_retries
    batches = {name: (await gw.shards[name].ping.remote())["batches"] for name in names}

    # A restarted `lifeline up` (here: a second Stack of this driver) finds the same shards.
    for c in clients.values():
        await c.close()
    await stack.stop()
    t1 = time.monotonic()
    again = Stack(settings)
    await again.start()
    out["restart_s"] = time.monotonic() - t1
    out["found_again"] = again.found_shards
    out["again"] = await wait_placed(args.dashboard, names)
    sid = affected[0] if affected else sids[0]
    # The session goes on where it was, on a shard that kept it in memory.
    client = LifelineClient(again.ws_url, "demo", sid, ORIGIN)
    client.token = clients[sid].token
    welcome = await client.connect()
    n = len(journeys[sid])
    extra = dict(journeys[sid][-1], seq=n + 1, ts=journeys[sid][-1]["ts"] + 500)
    await client.send_events([extra])
    await again.gateway.wait_scored(sid, n + 1, timeout=30)
    stored = await again.gateway.store.read_events("demo", sid)
    live = await again.shard_for(sid).session_row.remote(sid)
    out["resumed_acked"] = welcome.get("acked")
    out["resumed_equal"] = (
        live
        == replay([validate_event(e, now_ms=e["ts"]) for e in stored], sid=sid, site="demo")[-1]
        and len(stored) == n + 1
    )
    after_batches = {
        name: (await again.shards[i].ping.remote())["batches"] for i, name in enumerate(names)
    }
    # Batches counted on: the same actors (a new one would count from zero).
    out["batches_kept"] = all(after_batches[k] >= batches[k] for k in names)
    await client.close()
    await again.stop()
    out["total_s"] = time.monotonic() - t0
    return out


async def gcs_restart(args: argparse.Namespace) -> dict[str, Any]:
    """The head's GCS dies and comes back (GCS fault tolerance): scoring never stops."""
    import ray

    settings = settings_of(args)
    out: dict[str, Any] = {}
    stack = Stack(settings)
    await stack.start()
    sid = f"gcs-{uuid.uuid4().hex[:8]}"
    events = journey(int(time.time() * 1000) - 300_000)
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN)
    await client.connect()
    await client.send_events(events[:10])
    await stack.gateway.wait_scored(sid, 10, timeout=30)
    # The GCS goes: batches keep flowing over the shards' own links, which need no GCS.
    old = await asyncio.to_thread(gcs_server, Path(args.root) / "head")
    argv, env = old.cmdline(), old.environ()
    old.kill()
    await asyncio.to_thread(old.wait, 10)
    down_at = time.monotonic()
    await client.send_events(events[10:20])
    await stack.gateway.wait_scored(sid, 20, timeout=30)
    out["scored_while_down_s"] = time.monotonic() - down_at
    out["gcs_was_down"] = not old.is_running()
    subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    back_at = time.monotonic()
    # Ray calls work again: a name lookup goes through the (new) GCS.
    name = list(stack.gateway.shards)[0]
    while True:
        try:
            await asyncio.to_thread(ray.get_actor, name, namespace="lifeline")
            break
        except Exception:  # not yet: the GCS is starting, the driver reconnecting
            if time.monotonic() - back_at > 60:
                raise
            await asyncio.sleep(0.2)  # nothing to await but the lookup itself
    out["lookup_after_restart_s"] = time.monotonic() - back_at
    pings = [await sh.ping.remote() for sh in stack.shards]
    out["shards_answer"] = len(pings)
    await client.send_events(events[20:])
    await stack.gateway.wait_scored(sid, len(events), timeout=30)
    stored = await stack.gateway.store.read_events("demo", sid)
    out["stored"] = [e["seq"] for e in stored] == list(range(1, len(events) + 1))
    live = await stack.shard_for(sid).session_row.remote(sid)
    uninterrupted = replay(
        [validate_event(e, now_ms=e["ts"]) for e in stored], sid=sid, site="demo"
    )
    out["equal"] = live == uninterrupted[-1]
    await client.close()
    await stack.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="the LocalCluster's root directory")
    ap.add_argument("--dashboard", required=True, help="the head's dashboard URL (state API)")
    ap.add_argument("--redis", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=24)
    ap.add_argument("--gcs-restart", action="store_true", help="the GCS restart scenario instead")
    args = ap.parse_args()
    out = asyncio.run(gcs_restart(args) if args.gcs_restart else run(args))
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
