"""The spine benchmark on a 1-head + 2-worker local Ray cluster against a single node.

Alternates, on the same machine, single runs of ``loadtests/bench_spine.py``
(its driver, unchanged): the **single** arm as it always runs (``lifeline
up`` starts its own one-node Ray cluster), and the **multinode** arm with
``RAY_ADDRESS`` naming a :class:`cluster.local_cluster.LocalCluster` (a head
and two worker nodes, each its own raylet), so that ``lifeline up`` joins it
and its detached shards are spread over the three raylets. Both arms get the
same shard count (``--shards``). The cluster is started for each multinode
run and stopped after it (``lifeline down``, then every process of it), so a
single run does not share the machine with an idle cluster.

What crossing raylets can cost here: a gateway's batches go to a shard over
the shard's own TCP link (actors/shard/link.py), not as Ray calls, and no
object goes through Ray's object store on the event path; Ray is on the
path only to find a shard's link (once, and after a restart). So the
difference is mostly what more raylets cost the machine (their agents,
health checks, the GCS's bookkeeping), which one machine shares, not a cost
per event; on real machines the link's TCP round trip crosses the network.

    python loadtests/bench_multinode.py --pairs 3 --sessions 2000 --rate 5 --duration 30
    python loadtests/bench_multinode.py --pairs 1 --sessions 200 --rate 5 --duration 10  # smoke

Writes each run's bench_spine summary and a summary of both arms (medians)
to ``--out`` (a directory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.local_cluster import LocalCluster  # noqa: E402

KEYS = ("events_per_s", "ack_p50_ms", "ack_p99_ms", "iv_p50_ms", "iv_p99_ms")


def spine(args: argparse.Namespace, env: dict[str, str], out: Path) -> dict[str, Any]:
    """One bench_spine run with ``env``; its summary."""
    argv = [sys.executable, str(ROOT / "loadtests" / "bench_spine.py"), "--runs", "1"]
    argv += ["--sessions", str(args.sessions), "--rate", str(args.rate)]
    argv += ["--duration", str(args.duration), "--warmup", str(args.warmup), "--out", str(out)]
    subprocess.run(argv, cwd=ROOT, env=env, check=True)
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="single/multinode runs, alternated")
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--shards", type=int, default=2, help="shards in both arms")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "loadtests" / "results" / "session16" / "multinode"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ, LIFELINE_SHARDS=str(args.shards))
    base.pop("RAY_ADDRESS", None)
    arms: dict[str, list[dict[str, Any]]] = {"single": [], "multinode": []}
    for pair in range(args.pairs):
        for arm in ("single", "multinode") if pair % 2 == 0 else ("multinode", "single"):
            out = args.out / f"{arm}-{pair}.json"
            if arm == "single":
                arms[arm].append(spine(args, base, out))
                continue
            cluster = LocalCluster(workers=("a", "b"), cpus=1, head_cpus=1, dashboard=False)
            started = time.monotonic()
            cluster.start()
            print(f"local cluster up in {time.monotonic() - started:.0f} s", flush=True)
            try:
                env = dict(cluster.env, LIFELINE_SHARDS=str(args.shards))
                arms[arm].append(spine(args, env, out))
                subprocess.run(
                    [sys.executable, "-m", "cluster.cli", "down"], cwd=ROOT, env=env, check=False
                )
            finally:
                cluster.stop()
    summary = {
        arm: {k: statistics.median(r[k] for r in runs) for k in KEYS} for arm, runs in arms.items()
    }
    summary["args"] = {k: str(v) for k, v in vars(args).items()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
