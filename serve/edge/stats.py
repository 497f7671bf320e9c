"""The gateway's counters: what an operator (and the load test) reads from /metrics.

Latencies are histograms in :mod:`serve.edge.metrics`; the summed ``ack_ms``
and ``shard_call_ms`` stay for the benchmarks, which read means from them.

A leaf module: the socket, the pipeline and the beacon all count into one
:class:`Stats` owned by :class:`serve.edge.gateway.Gateway`, and none of
them may import the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Counters an operator (and the load test) reads from /metrics."""

    connections: int = 0
    frames: int = 0
    events_acked: int = 0
    events_scored: int = 0
    errors: int = 0  # error frames sent (and beacon errors answered), all codes
    interventions: int = 0
    updates: int = 0
    shard_calls: int = 0
    shard_retries: int = 0
    append_rounds: int = 0
    append_failures: int = 0  # append rounds Redis did not take (down, or a bad reply)
    shard_call_ms: float = 0.0  # summed round trips of shard calls
    acks: int = 0
    ack_ms: float = 0.0  # summed time from reading a frame to acknowledging it
    handshake_timeouts: int = 0
    half_open_refused: int = 0
    ip_refused: int = 0  # sockets, beacons, data requests refused per address (ip_limits.py)
    batch_events: list[int] = field(default_factory=list)
    errors_by_code: dict[str, int] = field(default_factory=dict)  # every error frame, by code
    loop_failures: dict[str, int] = field(default_factory=dict)  # set by the gateway's supervisor
    shard_restarts: dict[str, int] = field(default_factory=dict)  # by shard index, seen by its link

    def error(self, code: str) -> None:
        """Count one error frame sent (or beacon error answered)."""
        self.errors += 1
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    @property
    def overloaded(self) -> int:
        return self.errors_by_code.get("overloaded", 0)

    def snapshot(self) -> dict[str, Any]:
        """Counters as JSON; the maps (by code, by loop) become labelled series in /metrics."""
        d = {k: v for k, v in self.__dict__.items() if k != "batch_events"}
        d["errors_by_code"] = dict(self.errors_by_code)
        d["loop_failures"] = dict(self.loop_failures)
        d["shard_restarts"] = dict(self.shard_restarts)
        d["overloaded"] = self.overloaded
        b = self.batch_events[-1000:]
        d["mean_shard_batch"] = sum(b) / len(b) if b else 0.0
        return d
