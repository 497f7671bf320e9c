"""Garbage-collector settings for the hot-path processes (shards, gateways).

A batch of a few thousand events allocates hundreds of thousands of small
objects (feature rows are lists of floats), which with CPython's default
thresholds (700, 10, 10) triggers several *full* collections per batch; in
a Ray worker a full collection walks every object Ray, protobuf, NumPy and
XGBoost created at start-up, so a batch that computes in 0.1 s took over a
second. After start-up we move what exists into the permanent generation
(``gc.freeze``: never scanned again) and collect the young generation less
often. The session state itself holds no reference cycles, so nothing
accumulates.
"""

from __future__ import annotations

import gc
import sys

GEN0_THRESHOLD = 50_000
SWITCH_INTERVAL_S = 0.0005


def tune_for_throughput() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 20, 20)
    # Ray hands every call and every reply between its own threads and the
    # event loop's thread; each handoff waits for the GIL, by default up to 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
