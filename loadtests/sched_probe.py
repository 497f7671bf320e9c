"""Change how the kernel schedules a running Lifeline's gateways and shards: an experiment tool.

Used to test whether the spine's latency tail on a saturated 2-core machine
is a scheduling artefact (it is not: BENCHMARKS.md): it waits until
``lifeline up`` (as ``bench_spine.py`` starts it) has its shards and
gateways, then sets, on every thread of those processes, either

* ``--slice-us N``: the EEVDF time slice (``sched_attr.sched_runtime``,
  Linux 6.12 and newer), or
* ``--nice N``: the nice value.

Neither helped (a 300 us or 6 ms slice, nice -5: alternated runs in
``loadtests/results/session10/slice`` and ``nice``), so ``lifeline up`` sets
neither. Run it beside a benchmark run:

    python loadtests/sched_probe.py --slice-us 300 &
    python loadtests/bench_spine.py --runs 1

Limits: Linux only; threads started after it ran keep their defaults; the
process names are those ``lifeline up`` uses today.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import psutil

SYS_SCHED_SETATTR, SYS_SCHED_GETATTR = 314, 315  # x86_64


class SchedAttr(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


def set_slice(tid: int, ns: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    attr = SchedAttr()
    if libc.syscall(SYS_SCHED_GETATTR, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        raise OSError(ctypes.get_errno(), f"sched_getattr({tid})")
    attr.size, attr.sched_runtime = ctypes.sizeof(attr), ns
    if libc.syscall(SYS_SCHED_SETATTR, tid, ctypes.byref(attr), 0) != 0:
        raise OSError(ctypes.get_errno(), f"sched_setattr({tid})")


def server_processes() -> tuple[list[psutil.Process], list[psutil.Process]]:
    shards, gateways = [], []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "SessionShard" in cmd:
            shards.append(p)
        elif "cluster.gateway_worker" in cmd or (
            ("cluster.cli" in cmd or "bin/lifeline" in cmd) and " up" in cmd
        ):
            gateways.append(p)
    return shards, gateways


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--slice-us", type=float, help="EEVDF slice for every thread, in us")
    how.add_argument("--nice", type=int, help="nice value for every thread")
    ap.add_argument("--shards", type=int, default=2, help="shards to wait for")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    deadline = time.monotonic() + args.timeout
    while True:
        shards, gateways = server_processes()
        if len(shards) >= args.shards and gateways:
            break
        if time.monotonic() > deadline:
            print("no running Lifeline found", file=sys.stderr)
            return 1
        time.sleep(1.0)  # polling for processes another command starts
    time.sleep(3.0)  # let their threads start
    changed = 0
    for p in shards + gateways:
        for t in p.threads():
            if args.slice_us is not None:
                set_slice(t.id, int(args.slice_us * 1000))
            else:
                os.setpriority(os.PRIO_PROCESS, t.id, args.nice)
            changed += 1
    print(f"changed {changed} threads of {len(shards)} shards and {len(gateways)} gateways")
    return 0


if __name__ == "__main__":
    sys.exit(main())
