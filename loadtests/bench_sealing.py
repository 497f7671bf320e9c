"""What encryption at rest costs per event, call by call, with the real ``cryptography`` AES-GCM.

The gateway seals each run of a session's events (one events frame, 1-2
events) for the log in ``Append.of`` (serve/edge/store.py), on its event
loop. This benchmark replays the spine benchmark's journeys as visitors send
them (``loadtests/bench_stages.py``'s ``Replay``: ~1.35 events per frame),
validates and packs them once, then times, over ``--entries`` runs each and
in a rotating order (the machine is shared: each repeat measures every
variant back to back, in CPU time of the thread, and the report is the
median over ``--repeats``):

* ``append_plain``: ``Append.of`` without a sealer (packing only: the
  baseline sealing is added to);
* ``append_sealed``: ``Append.of`` with the session's ``Sealer``, as the
  append path does with ``LIFELINE_ENCRYPT_AT_REST=1``; ``seal_cost`` is
  the difference;
* ``seal``: ``Sealer.seal`` on the packed payloads (the code in force);
* ``seal_urandom``: the same with a fresh ``os.urandom`` nonce per entry,
  as ``Sealer.seal`` did up to session 15 (the reference for the nonce change);
* ``nonce_urandom``, ``nonce_counter``: the nonce alone, each way;
* ``encrypt``: the AES-GCM call alone (one fixed nonce: timing only);
* per hello: ``hello_candidate`` (``MasterKeys.new_wrapped``: the candidate
  key a hello offers), ``hello_sealer`` (``MasterKeys.sealer``: unwrap the
  stored key, build its AES-GCM object, whose OpenSSL contexts are set up
  with the key there) and ``first_seal`` (a new ``Sealer``'s first call).

Per entry figures are ns per run (one stream entry); ``ns_per_event``
divides by the mean events per run. No Redis, no sockets.

``--gateway``: instead, a whole gateway in-process, 1,000 sessions, in three
arms taken in turn: not sealing, sealing, and sealing with session 15's
``os.urandom`` nonces. Masked WebSocket frames go into
``Peer.data_received``, through the real append pipeline and its script to
the real Redis ($REDIS_URL or 127.0.0.1:6379, keys under a fresh prefix,
deleted after), acks to a transport that only counts (no shards: their
batches are dropped). Reports the process's CPU us per frame in each arm
(medians over ``--repeats``, and the median of each sealing arm's
difference to the plain arm of the same repeat), the per-frame figure the spine benchmark's
gateway CPU is made of; ``--profile DIR`` also writes a cProfile of each
arm's last two repeats.

    python loadtests/bench_sealing.py --entries 20000 --repeats 15 --out loadtests/results/session16/sealperf/bench_sealing.json
    python loadtests/bench_sealing.py --gateway --frames 20000 --repeats 6
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from cluster import sealing  # noqa: E402
from cluster.sealing import NONCE_BYTES, MasterKeys, Sealer  # noqa: E402
from loadtests.bench_stages import Replay  # noqa: E402
from loadtests.journeys import load_journeys  # noqa: E402
from serve.edge.store import Append  # noqa: E402

SITE = "loadtest"


def runs_of(journeys: list, n: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """``n`` validated runs (sid, events) as visitors send them, 1-2 events each."""
    from actors.core.events import validate_event

    replay = Replay(journeys, seed=7)
    out = []
    for _ in range(n):
        i, raw = replay.next()
        out.append((replay.sids[i], [validate_event(e, e["ts"]) for e in raw]))
    return out


def _counter_nonce() -> Callable[[], bytes]:
    """A counter nonce like ``sealing.next_nonce``, to time one against session 15's code."""
    count = itertools.count(int.from_bytes(os.urandom(NONCE_BYTES), "big"))
    mask = (1 << 96) - 1
    return lambda: (next(count) & mask).to_bytes(NONCE_BYTES, "big")


def timed(fn: Callable[[], Any]) -> int:
    """CPU ns of this thread in one call of ``fn``, garbage collection off.

    CPU time, not wall time: on a shared machine the wall clock also counts
    the time other processes held the core.
    """
    gc.disable()
    try:
        t0 = time.thread_time_ns()
        fn()
        return time.thread_time_ns() - t0
    finally:
        gc.enable()


class UrandomSealer(Sealer):
    """``Sealer`` as it was up to session 15: a fresh ``os.urandom`` nonce per entry."""

    __slots__ = ()

    def seal(self, payload: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._encrypt(nonce, payload, None)


ARMS = ("plain", "sealed", "sealed_urandom")


def gateway_frames(journeys: list, frames: int, arm: str, redis_url: str, profile: Any) -> float:
    """CPU us per events frame of an in-process gateway appending to the real Redis.

    ``arm``: "plain" (not sealing), "sealed" (every session has its visitor's
    data key, as the hello's reply gives it, and its runs are sealed on their
    way to the log) or "sealed_urandom" (the same with session 15's
    :class:`UrandomSealer`). ``profile``: a ``cProfile.Profile`` to run
    around the frames, or None.
    """
    import asyncio
    import uuid

    from actors.core.sites import Site
    from cluster.redis_server import delete_prefix
    from loadtests.bench_stages import events_frames, open_peer
    from serve.edge.gateway import Gateway
    from serve.edge.protocol import Limits

    prefix = f"llbench-seal-{uuid.uuid4().hex[:8]}:"
    master = MasterKeys("bench-master-key-0123456789")

    async def run() -> float:
        site = Site(SITE, origins=("http://loadtest.local",))
        limits = Limits(events_per_s=1e9, burst=1e9)
        gw = Gateway(
            redis_url,
            prefix,
            [None, None],
            {site.key: site},
            "s",
            limits,
            master=master,
            seal=arm != "plain",
        )
        replay = Replay(journeys, seed=3)
        peers = []
        for sid in replay.sids:
            peer = open_peer(gw, sid)
            if arm != "plain":  # what the hello's script reply gives the cursor: a visitor's key
                ref = f"{SITE}:v-{sid[3:]}"
                sealer = master.sealer(ref, master.new_wrapped(SITE))
                if arm == "sealed_urandom":
                    sealer = UrandomSealer(ref, master.unwrap_ref(ref, master.new_wrapped(SITE)))
                peer.conn.sessions[sid].sealer = sealer
            gw.peers_by_sid[sid] = peer
            peers.append(peer)
        for peer in peers:
            peer.transport.writes = 0  # type: ignore[union-attr]  # not the handshake's
        wire_frames = events_frames(replay, peers, frames)
        loop = asyncio.get_running_loop()
        pipe = gw.pipeline
        tasks = [loop.create_task(pipe.append_loop()), loop.create_task(pipe.settle_loop())]
        if profile is not None:
            profile.enable()
        t0 = time.process_time()
        for k in range(0, frames, 25):  # ~25 frames per append round, as in the spine benchmark
            for peer, data in wire_frames[k : k + 25]:
                peer.data_received(data)
            while pipe.busy:  # awaited, not spun: the CPU figure must not count waiting
                await pipe.round_done.wait()
            pipe._pending = {name: [] for name in pipe._pending}  # no shards here
            pipe._pending_events = 0
        spent = time.process_time() - t0
        if profile is not None:
            profile.disable()
        for task in tasks:
            task.cancel()
        acks = sum(p.transport.writes for p in peers)  # type: ignore[union-attr]
        assert acks == frames and gw.stats.errors == 0, (acks, gw.stats.errors)
        assert gw.stats.append_failures == 0
        gw.store.close()
        await gw.redis.aclose()
        return spent / frames * 1e6

    try:
        return asyncio.run(run())
    finally:
        delete_prefix(redis_url, prefix)


def gateway_main(args: argparse.Namespace) -> int:
    """``--gateway``: CPU per frame of an in-process gateway, each arm in turn (rotating order)."""
    import cProfile

    from cluster.gc_tuning import tune_for_throughput

    tune_for_throughput()  # the collector settings the gateways run with
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    journeys = load_journeys("sim", 2000, seed=1)
    us: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for rep in range(args.repeats):
        for arm in ARMS[rep % 3 :] + ARMS[: rep % 3]:
            profile = None
            if args.profile is not None and rep >= args.repeats - 2:
                profile = cProfile.Profile()
            us[arm].append(gateway_frames(journeys, args.frames, arm, redis_url, profile))
            if profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile.dump_stats(args.profile / f"gateway-{arm}-{rep}.prof")
    med = {arm: statistics.median(v) for arm, v in us.items()}
    # The arms of one repeat ran back to back: their differences cancel most of
    # what the machine's other load did to that repeat.
    paired = {
        arm: statistics.median(a - b for a, b in zip(us[arm], us["plain"], strict=True))
        for arm in ARMS[1:]
    }
    out = {
        "gateway_cpu_us_per_frame": med,
        "paired_extra_us_per_frame": paired,
        "seal_cpu_us_per_frame": med["sealed"] - med["plain"],
        "seal_urandom_cpu_us_per_frame": med["sealed_urandom"] - med["plain"],
        "seal_share_percent": 100.0 * (med["sealed"] - med["plain"]) / med["plain"],
        "runs_us": us,
        "args": {k: str(v) for k, v in vars(args).items()},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--entries", type=int, default=20_000, help="runs sealed per variant and repeat"
    )
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--hellos", type=int, default=2_000, help="hellos per repeat (key work)")
    ap.add_argument("--gateway", action="store_true", help="a gateway in-process, with Redis")
    ap.add_argument("--frames", type=int, default=20_000, help="frames per arm, repeat (--gateway)")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile dumps here (--gateway)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    if args.gateway:
        return gateway_main(args)

    journeys = load_journeys("sim", 2000, seed=1)
    runs = runs_of(journeys, args.entries)
    events = sum(len(evs) for _, evs in runs)
    master = MasterKeys("bench-master-key-0123456789")
    # One subject per session, as in the spine benchmark (each session its own visitor).
    sealers = {sid: master.sealer(f"{SITE}:{sid}", master.new_wrapped(SITE)) for sid, _ in runs}
    for s in sealers.values():
        s.seal(b"warm")  # each session's first seal builds its cipher context (per session)
    packed = [(sealers[sid], msgpack.packb(evs)) for sid, evs in runs]
    aead = AESGCM(os.urandom(32))
    encrypt = aead.encrypt
    fixed = os.urandom(NONCE_BYTES)
    urandom = os.urandom
    wrapped = master.new_wrapped(SITE)
    ref = f"{SITE}:s-bench"

    def append_plain() -> None:
        for sid, evs in runs:
            Append.of(SITE, sid, evs[0]["seq"], evs[-1]["seq"], evs)

    def append_sealed() -> None:
        for sid, evs in runs:
            Append.of(SITE, sid, evs[0]["seq"], evs[-1]["seq"], evs, sealers[sid])

    def seal() -> None:
        for sealer, payload in packed:
            sealer.seal(payload)

    def seal_urandom() -> None:  # Sealer.seal up to session 15 (UrandomSealer)
        for sealer, payload in packed:
            nonce = urandom(NONCE_BYTES)
            nonce + sealer._encrypt(nonce, payload, None)

    def nonce_urandom() -> None:
        for _ in packed:
            urandom(NONCE_BYTES)

    def nonce_counter() -> None:
        # sealing.next_nonce; before it existed (session 15's code), the same counter here
        nonce = getattr(sealing, "next_nonce", None) or _counter_nonce()
        for _ in packed:
            nonce()

    def encrypt_only() -> None:
        for _, payload in packed:
            encrypt(fixed, payload, None)

    def hello_candidate() -> None:
        for _ in range(args.hellos):
            master.new_wrapped(SITE)

    def hello_sealer() -> None:
        for _ in range(args.hellos):
            master.sealer(ref, wrapped)

    fresh: list = []

    def first_seal() -> None:
        for s in fresh:
            s.seal(b"x" * 180)

    per_entry = {
        "append_plain": append_plain,
        "append_sealed": append_sealed,
        "seal": seal,
        "seal_urandom": seal_urandom,
        "nonce_urandom": nonce_urandom,
        "nonce_counter": nonce_counter,
        "encrypt": encrypt_only,
    }
    per_hello = {"hello_candidate": hello_candidate, "hello_sealer": hello_sealer}
    samples: dict[str, list[float]] = {k: [] for k in [*per_entry, *per_hello, "first_seal"]}
    names = list(per_entry)
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no fixed slot
        for name in order:
            samples[name].append(timed(per_entry[name]) / len(runs))
        for name, fn in per_hello.items():
            samples[name].append(timed(fn) / args.hellos)
        fresh[:] = [master.sealer(ref, wrapped) for _ in range(args.hellos)]
        samples["first_seal"].append(timed(first_seal) / args.hellos)
    med = {k: statistics.median(v) for k, v in samples.items()}
    per_run = {k: round(med[k]) for k in per_entry}
    out: dict[str, Any] = {
        "ns_per_run": per_run,
        "ns_per_event": {k: round(med[k] * len(runs) / events) for k in per_entry},
        "seal_cost_ns_per_run": round(med["append_sealed"] - med["append_plain"]),
        "seal_cost_ns_per_event": round(
            (med["append_sealed"] - med["append_plain"]) * len(runs) / events
        ),
        "ns_per_hello": {k: round(med[k]) for k in [*per_hello, "first_seal"]},
        "events_per_run": events / len(runs),
        "payload_bytes_mean": statistics.mean(len(p) for _, p in packed),
        "args": vars(args) | {"out": str(args.out) if args.out else None},
        "samples_ns": {k: [round(x) for x in v] for k, v in samples.items()},
        "python": sys.version.split()[0],
        "cryptography": __import__("cryptography").__version__,
        "load_average": os.getloadavg(),
    }
    shown = {k: v for k, v in out.items() if k != "samples_ns"}
    print(json.dumps(shown, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
