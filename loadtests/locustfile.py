"""Locust load test of the Lifeline spine, held to its SLOs.

Each Locust user is one visitor: one WebSocket, one session, replaying
journeys back to back (simulated, the real click data, or a scripted
struggling journey) with Poisson event times and the browser client's
batching (a batch goes 100 ms after its first event, at once for urgent
events). What the service answers shows up in Locust's statistics, request
type ``WS``:

* ``ack``: every acknowledged event, from its send to its ack (the ack
  means the event is durable in Redis);
* ``intervention``: from the send of the event that triggered it to its
  arrival on the socket;
* ``update``: from the trigger to the later LLM text or recommendations;
* failures: error frames (``error <code>``; a refused event, a sequence
  gap, ``overloaded``, ``rate_limited``), a refused hello, a dropped socket.

When the run ends, the SLOs are checked (see :func:`slo_breaches`):
p99 event -> ack <= ``--slo-ack-p99-ms`` (25), p99 trigger ->
intervention <= ``--slo-iv-p99-ms`` (50), failures <= ``--slo-fail-ratio``
(1 %). A breach is logged and makes Locust exit with code 1, so a CI job
can gate on it. Start the service first (``lifeline up``), then::

    locust -f loadtests/locustfile.py --headless -u 200 -r 50 -t 1m \\
        --host ws://127.0.0.1:8765/ws

``--journeys struggling`` sends the scripted struggling journey, which
draws interventions; ``--site``/``--origin`` must match a site of
``cluster/sites.toml`` (default: the ``loadtest`` site). Locust runs its
users on one core per process: add ``--processes 2`` (or workers on other
machines) past a few thousand events per second.

Limits: Locust rounds response times over 100 ms to 10 ms; the lean
generator behind BENCHMARKS.md's figures is ``bench_spine.py``, which costs
a fraction of Locust's CPU per event and so leaves more of a shared machine
to the server.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
import msgpack
from gevent.event import AsyncResult
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import WorkerRunner
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # locust adds only loadtests/

from actors.core.events import (  # noqa: E402
    BAD_EVENT,
    BAD_TYPE,
    CLOCK_SKEW,
    MISSING_FIELD,
    SEQUENCE_GAP,
    TOO_LARGE,
    UNKNOWN_TYPE,
    URGENT_TYPES,
)
from loadtests.journeys import SOURCES, load_journeys  # noqa: E402
from serve.dev.pyclient import events_frame, hello_frame  # noqa: E402

log = logging.getLogger("lifeline.locust")

FLUSH_S = 0.1  # the browser client's batch timer
MAX_EVENTS_PER_FRAME = 100  # the server's per-frame limit
SENT_KEPT = 200  # send times kept after their ack, for the interventions that follow
WS = "WS"
# Error codes that refuse one event for good (docs/PROTOCOL.md).
REFUSED_EVENT = frozenset({UNKNOWN_TYPE, MISSING_FIELD, BAD_TYPE, TOO_LARGE, CLOCK_SKEW, BAD_EVENT})


class ServerError(Exception):
    """An error frame from the server, named by its code (how Locust groups failures)."""


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--site", default="loadtest", help="site key (cluster/sites.toml)")
    parser.add_argument("--origin", default="http://loadtest.local", help="Origin header")
    parser.add_argument(
        "--journeys", choices=SOURCES, default="sim", help="what the visitors replay"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="events/s per visitor")
    parser.add_argument("--slo-ack-p99-ms", type=float, default=25.0)
    parser.add_argument("--slo-iv-p99-ms", type=float, default=50.0)
    parser.add_argument("--slo-fail-ratio", type=float, default=0.01)


_journeys: list[list[dict[str, Any]]] = []


@events.init.add_listener
def _load(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    source = opts.journeys if opts is not None else "sim"
    _journeys[:] = load_journeys(source, 500, seed=1)


def slo_breaches(
    ack_p99_ms: float | None,
    iv_p99_ms: float | None,
    fail_ratio: float,
    limits: dict[str, float],
) -> list[str]:
    """The SLOs a run missed, as sentences; empty when it met them all.

    A figure of None (no sample) breaks no SLO: a run without interventions
    says nothing about their latency. ``limits``: ``ack_p99_ms``,
    ``iv_p99_ms``, ``fail_ratio``.
    """
    out = []
    if ack_p99_ms is not None and ack_p99_ms > limits["ack_p99_ms"]:
        out.append(f"p99 event -> ack {ack_p99_ms:.0f} ms > {limits['ack_p99_ms']:g} ms")
    if iv_p99_ms is not None and iv_p99_ms > limits["iv_p99_ms"]:
        out.append(f"p99 trigger -> intervention {iv_p99_ms:.0f} ms > {limits['iv_p99_ms']:g} ms")
    if fail_ratio > limits["fail_ratio"]:
        out.append(f"failures {fail_ratio:.2%} > {limits['fail_ratio']:.2%}")
    return out


def _p99(environment: Environment, name: str) -> float | None:
    entry = environment.stats.entries.get((name, WS))
    if entry is None or entry.num_requests == 0:
        return None
    return float(entry.get_response_time_percentile(0.99))


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master holds the whole run's figures
    opts = environment.parsed_options
    limits = {
        "ack_p99_ms": getattr(opts, "slo_ack_p99_ms", 25.0),
        "iv_p99_ms": getattr(opts, "slo_iv_p99_ms", 50.0),
        "fail_ratio": getattr(opts, "slo_fail_ratio", 0.01),
    }
    ack, iv = _p99(environment, "ack"), _p99(environment, "intervention")
    breaches = slo_breaches(ack, iv, environment.stats.total.fail_ratio, limits)
    if iv is None:
        log.warning("SLO: no intervention arrived, so its latency was not measured")
    if breaches:
        log.error("SLO missed: %s", "; ".join(breaches))
        environment.process_exit_code = 1
    else:
        log.info("SLOs met: ack p99 %s ms, intervention p99 %s ms", ack, iv)


class Visitor(User):
    """One visitor: one WebSocket and one session, replaying journeys at Poisson times."""

    host = "ws://127.0.0.1:8765/ws"

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.site = getattr(opts, "site", "loadtest")
        self.origin = getattr(opts, "origin", "http://loadtest.local")
        self.rate = getattr(opts, "rate", 5.0)
        self.rng = random.Random()
        self.sid = f"locust-{uuid.uuid4().hex[:16]}"
        self.seq = self.acked = 0
        self.unacked: dict[int, dict[str, Any]] = {}
        self.sent_at: dict[int, float] = {}
        self.iv_sent: dict[Any, float] = {}  # iid -> its trigger's send time
        self.resend_at = float("inf")
        self.welcome: AsyncResult = AsyncResult()
        started = time.perf_counter()
        self.ws: ClientConnection | None = None
        self.closing = contextlib.ExitStack()
        try:
            self.ws = self.closing.enter_context(
                connect(
                    f"{self.host}?site={self.site}",
                    origin=self.origin,  # type: ignore[arg-type]
                    compression=None,
                    open_timeout=30,
                )
            )
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            self._fire("connect", started, exc)
            raise StopUser() from exc
        self.reader = gevent.spawn(self._read)
        self._send(hello_frame(self.sid))
        welcome = self.welcome.get(timeout=30)
        if welcome.get("t") != "welcome":
            self._fire("connect", started, ServerError(welcome.get("code", "refused")))
            raise StopUser()
        self._fire("connect", started)

    def on_stop(self) -> None:
        self.closing.close()

    @task
    def replay(self) -> None:
        """Replay journeys back to back until Locust stops the user."""
        journey = self.rng.choice(_journeys)
        pending: list[dict[str, Any]] = []
        flush_at = float("inf")
        next_at = time.perf_counter() + self.rng.expovariate(self.rate)
        i = 0
        while i < len(journey) or pending:
            now = time.perf_counter()
            if i < len(journey) and now >= next_at:
                self.seq += 1
                ev = dict(journey[i], seq=self.seq, ts=int(time.time() * 1000))
                i += 1
                pending.append(ev)
                next_at = now + self.rng.expovariate(self.rate)
                urgent = ev["type"] in URGENT_TYPES
                flush_at = now if urgent else min(flush_at, now + FLUSH_S)
            if now >= self.resend_at:  # after a gap or a refusal: everything unacked, in order
                self.resend_at = float("inf")
                pending = [self.unacked[s] for s in sorted(self.unacked)] + [
                    e for e in pending if e["seq"] not in self.unacked
                ]
                flush_at = now
            if now >= flush_at:
                self._flush(pending, now)
                pending, flush_at = [], float("inf")
            due = min(next_at if i < len(journey) else float("inf"), flush_at, self.resend_at)
            if due == float("inf"):
                break
            gevent.sleep(max(0.0, due - time.perf_counter()))

    # -- the socket ----------------------------------------------------------------

    def _send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        try:
            self.ws.send(msgpack.packb(frame))
        except ConnectionClosed as exc:  # the reader has counted the drop; this visitor is gone
            raise StopUser() from exc

    def _flush(self, pending: list[dict[str, Any]], now: float) -> None:
        for k in range(0, len(pending), MAX_EVENTS_PER_FRAME):
            batch = pending[k : k + MAX_EVENTS_PER_FRAME]
            for ev in batch:
                self.sent_at.setdefault(ev["seq"], now)
                self.unacked[ev["seq"]] = ev
            self._send(events_frame(self.sid, batch))

    def _read(self) -> None:
        assert self.ws is not None
        try:
            for data in self.ws:
                self._on_frame(msgpack.unpackb(data) if isinstance(data, bytes) else {})
        except ConnectionClosedOK:  # closed by us (the run ended) or a clean close
            pass
        except ConnectionClosed as exc:
            self._fire("socket", time.perf_counter(), exc)
        if not self.welcome.ready():
            self.welcome.set({"t": "error", "code": "closed"})

    def _on_frame(self, frame: dict[str, Any]) -> None:
        t = frame.get("t")
        if t == "ack":
            self._ack(int(frame["seq"]))
        elif t == "intervention":
            sent = self.sent_at.get(frame.get("seq", -1))
            if sent is not None:
                self._fire(t, sent)
                self.iv_sent[frame.get("iid")] = sent
                if len(self.iv_sent) > 16:  # a session sees a few; keep the newest
                    del self.iv_sent[next(iter(self.iv_sent))]
        elif t == "update":  # carries the intervention's iid, not the trigger's seq
            sent = self.iv_sent.get(frame.get("iid"))
            if sent is not None:
                self._fire(t, sent)
        elif not self.welcome.ready() and t in ("welcome", "error"):
            self.welcome.set(frame)
        elif t == "error":
            code = str(frame.get("code", "?"))
            self._fire("events", time.perf_counter(), ServerError(code))
            if code in REFUSED_EVENT and "seq" in frame:
                # Refused for good: it consumes its number (the next ack covers
                # it) but was never stored, so it is neither resent nor counted.
                self.unacked.pop(frame["seq"], None)
            elif code in (SEQUENCE_GAP, "rate_limited", "overloaded"):
                delay = 0.03 if code == SEQUENCE_GAP else 1.0 + 2.0 * self.rng.random()
                self.resend_at = min(self.resend_at, time.perf_counter() + delay)

    def _ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        now = time.perf_counter()
        for s in range(self.acked + 1, seq + 1):
            if self.unacked.pop(s, None) is not None and s in self.sent_at:
                self._fire("ack", self.sent_at[s], now=now)
        for s in range(self.acked - SENT_KEPT + 1, seq - SENT_KEPT + 1):
            self.sent_at.pop(s, None)
        self.acked = seq

    def _fire(
        self, name: str, since: float, exc: BaseException | None = None, now: float | None = None
    ) -> None:
        elapsed = ((now if now is not None else time.perf_counter()) - since) * 1000.0
        self.environment.events.request.fire(
            request_type=WS,
            name=name,
            response_time=elapsed,
            response_length=0,
            exception=exc,
            context={},
        )
