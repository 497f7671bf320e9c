"""Sum up an A/B of ``bench_spine.py`` runs: medians per arm, pooled intervention latencies.

On a shared VM whose speed drifts, a fair comparison alternates single runs
of each arm (A, B, B, A, ...) and compares the arms' medians; see
BENCHMARKS.md. Each arm is a glob of the ``--out`` JSON files of its runs:

    python loadtests/ab_summary.py [--out=ab.json] before='ab/before-*.json' after='ab/after-*.json'

Per arm it prints the medians of the per-run figures, the intervention
latency percentiles pooled over all the arm's samples (a run sees only
~100-200 interventions, so a run's own p99 is nearly its maximum), and each
process's CPU also as a ratio to the load generators' (their work per event
is fixed, so the ratio moves less with the VM's speed than the raw figure).
Steal (time the hypervisor gave this VM's CPUs to others) is shown per run:
runs with several percent of it have the worst tails.
Limits: reads files written by this version of ``bench_spine.py`` (``iv_ms``
per run); runs without it count in the medians but not in the pooled figures.
"""

from __future__ import annotations

import glob
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.bench_spine import pooled_iv, pooled_line  # noqa: E402

FIGURES = ["events_per_s", "ack_p50_ms", "ack_p99_ms", "iv_p50_ms", "iv_p99_ms", "steal_percent"]
FOLLOW_UPS = ["updates", "upd_p50_ms", "upd_p99_ms"]  # --serve runs: the deployments' updates


def arm_summary(paths: list[str]) -> dict[str, Any]:
    files = [json.loads(Path(p).read_text()) for p in sorted(paths)]
    runs = [run for f in files for run in f["runs"]]
    if not runs:
        raise SystemExit(f"no runs in {paths}")
    out: dict[str, Any] = {"runs": len(runs)}
    # The gateway's own mean from reading a frame to writing its ack, warm-up
    # included (its counters cover the whole file): the server's share of an ack.
    gw = [f["gateway_stats"] for f in files if f.get("gateway_stats", {}).get("acks")]
    if gw:
        each = [g["ack_ms"] / g["acks"] for g in gw]
        out["gateway_ack_mean_ms"] = statistics.median(each)
        out["gateway_ack_mean_ms_each"] = [round(x, 1) for x in each]
    shown = FIGURES + [k for k in FOLLOW_UPS if all(r.get(k) is not None for r in runs)]
    for k in shown:
        out[k] = statistics.median(r[k] for r in runs)
        out[f"{k}_each"] = [round(r[k], 1) for r in runs]
    out["shown"] = shown
    out |= pooled_iv(runs)
    out["busy_percent"] = statistics.median(r["procs"]["machine"]["busy_percent"] for r in runs)
    cpu: dict[str, list[float]] = {}
    for r in runs:
        procs = r["procs"]
        load = statistics.mean(
            v["cpu_percent"] for k, v in procs.items() if k.startswith("loadgen")
        )
        for name, v in procs.items():
            if "cpu_percent" in v:
                cpu.setdefault(name, []).append(v["cpu_percent"])
                cpu.setdefault(f"{name}/loadgen", []).append(v["cpu_percent"] / load)
    out["cpu_percent"] = {k: round(statistics.median(v), 3) for k, v in cpu.items()}
    return out


def main(argv: list[str]) -> int:
    out = None
    if argv and argv[0].startswith("--out="):
        out, argv = Path(argv[0].removeprefix("--out=")), argv[1:]
    if not argv or any("=" not in a for a in argv):
        print(__doc__)
        return 2
    arms = {
        name: arm_summary(glob.glob(pattern)) for name, pattern in (a.split("=", 1) for a in argv)
    }
    for name, s in arms.items():
        print(f"{name}: {s['runs']} runs, machine busy {s['busy_percent']:.1f} %")
        for k in s["shown"]:
            print(f"  {k:>14}: median {s[k]:8.1f}   each {s[f'{k}_each']}")
        if "gateway_ack_mean_ms" in s:
            print(
                f"  gateway's frame -> ack, mean: median {s['gateway_ack_mean_ms']:.1f} ms"
                f"   each {s['gateway_ack_mean_ms_each']}"
            )
        print("  pooled:", pooled_line(s))
        shown = {k: v for k, v in s["cpu_percent"].items() if not k.startswith("loadgen")}
        print("  CPU, % of a core (and per load generator):", json.dumps(shown))
    if out is not None:
        out.write_text(json.dumps(arms, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
