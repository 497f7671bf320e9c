"""Journeys the load generators replay: simulated, the real click data, or scripted struggle.

One place for what ``bench_spine.py``, ``bench_stages.py`` and the Locust
file replay. A journey is a list of raw client events (the form the
tracking client sends, before ``seq`` and ``ts`` are set); the replayers
give each event its own sequence number and send time.

Limits: ``real`` and ``mix`` read ../shared/data (see training/loaders.py);
``struggling`` is one deterministic script (rage and dead clicks, failing
form submits) repeated, for exercising the intervention path.
"""

from __future__ import annotations

import random
from typing import Any

SOURCES = ("sim", "real", "mix", "struggling")


def load_journeys(source: str, n: int, seed: int) -> list[list[dict[str, Any]]]:
    """``n`` raw event journeys (client form), shuffled by ``seed``; see :data:`SOURCES`."""
    if source not in SOURCES:
        raise ValueError(f"unknown journey source {source!r}; one of {SOURCES}")
    if source == "struggling":
        from training.simulator import scripted

        return [scripted("struggling", "", 0)]
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
