"""A minimal Python client of the Lifeline protocol (docs/PROTOCOL.md).

For the load generator, the integration tests and server-side integrations
(a native app, a replay tool). It keeps what a client must keep: the resume
token, the acknowledged sequence number, the events not yet acknowledged;
and it records what the server sent, with arrival times, so callers can
await an ack, an intervention or an error instead of sleeping.

Limits: one session per client object; no offline buffer (that is the
browser client's job).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import websockets

FULL_CONSENT = ("necessary", "analytics", "personalization")


def hello_frame(
    sid: str,
    token: str | None = None,
    consent: Sequence[str] = FULL_CONSENT,
    vid: str | None = None,
) -> dict[str, Any]:
    """The frame that opens (or, with a token, resumes) a session (docs/PROTOCOL.md)."""
    frame = {
        "t": "hello",
        "v": 1,
        "sid": sid,
        "token": token,
        "consent": list(consent),
        "now": int(time.time() * 1000),
    }
    if vid is not None:
        frame["vid"] = vid
    return frame


def events_frame(sid: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of events, each with its own ``seq`` and ``ts``, stamped with the client's clock."""
    return {"t": "events", "sid": sid, "now": int(time.time() * 1000), "events": events}


class LifelineClient:
    """One session over one WebSocket."""

    def __init__(
        self,
        ws_url: str,
        site: str,
        sid: str,
        origin: str,
        consent: tuple[str, ...] = FULL_CONSENT,
        binary: bool = True,
        vid: str | None = None,
    ) -> None:
        self.url = f"{ws_url}?site={site}"
        self.vid = vid  # the visitor id the hello names (None: an anonymous session)
        self.site = site
        self.sid = sid
        self.origin = origin
        self.consent = list(consent)
        self.binary = binary
        self.token: str | None = None
        self.acked = 0
        self.unacked: dict[int, dict[str, Any]] = {}
        self.frames: list[tuple[float, dict[str, Any]]] = []  # (perf_counter at arrival, frame)
        self.sent_at: dict[int, float] = {}  # seq -> perf_counter when first sent
        self.ack_latency: list[
            tuple[float, float]
        ] = []  # (arrival, seconds from send), per acked event
        self.ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._resend: asyncio.Task | None = None
        self._changed = asyncio.Condition()
        self._waiters = 0  # notify only when somebody waits: the load generator never does
        self.keep_frames = (
            True  # False: keep only interventions, updates and errors (long load runs)
        )
        self.closed: tuple[int | None, str] | None = None

    # -- connection -------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open the socket and say hello (resuming if a token is held); returns the welcome."""
        self.closed = None
        self.ws = await websockets.connect(
            self.url, origin=self.origin, compression=None, max_size=2**22, open_timeout=30
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await self.send_frame(hello_frame(self.sid, self.token, self.consent, self.vid))
        welcome = await self.wait_for(lambda f: f["t"] in ("welcome", "error"))
        if welcome["t"] == "welcome":
            self.token = welcome["token"]
            self._on_ack(welcome["acked"])
        return welcome

    async def send_frame(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(msgpack.packb(frame) if self.binary else json.dumps(frame))

    async def send_raw(self, message: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(message)

    async def send_events(self, events: list[dict[str, Any]]) -> None:
        """Send events (already numbered); they stay in ``unacked`` until acknowledged."""
        now = time.perf_counter()
        for ev in events:
            seq = ev.get("seq")
            if isinstance(seq, int):
                self.unacked[seq] = ev
                self.sent_at.setdefault(seq, now)
        await self.send_frame(events_frame(self.sid, events))

    async def resend_unacked(self, batch: int = 50) -> None:
        pending = [self.unacked[s] for s in sorted(self.unacked)]
        for i in range(0, len(pending), batch):
            await self.send_events(pending[i : i + batch])

    async def abort(self) -> None:
        """Drop the connection without a closing handshake, as a network cut would."""
        if self.ws is not None and self.ws.transport is not None:
            self.ws.transport.abort()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    # -- receiving ---------------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                frame = (
                    msgpack.unpackb(message) if isinstance(message, bytes) else json.loads(message)
                )
                now = time.perf_counter()
                if frame.get("t") == "ack":
                    self._on_ack(frame["seq"], now)
                elif frame.get("t") == "error" and frame.get("code") in (
                    "sequence_gap",
                    "overloaded",
                ):
                    # Resend from the expected number (e.g. a resumed socket raced the old
                    # one's last append). Not an ack: the events below it may still be on
                    # their way to the store; their acks follow.
                    expected = int(frame.get("expected", 1))
                    if expected in self.unacked:
                        self._resend = asyncio.get_running_loop().create_task(self.resend_unacked())
                if self.keep_frames or frame.get("t") not in ("ack", "pong"):
                    self.frames.append((now, frame))
                if self._waiters:
                    async with self._changed:
                        self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            ws = self.ws
            self.closed = (ws.close_code, ws.close_reason or "") if ws is not None else (None, "")
            async with self._changed:
                self._changed.notify_all()

    def _on_ack(self, seq: int, now: float | None = None) -> None:
        if seq <= self.acked:
            return
        for s in [s for s in self.unacked if s <= seq]:
            del self.unacked[s]
            sent = self.sent_at.get(s)
            if sent is not None and now is not None:
                self.ack_latency.append((now, now - sent))
        self.acked = seq

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0, start: int = 0
    ) -> dict[str, Any]:
        """The first frame (from index ``start``) matching ``pred``; waits for it if needed."""

        async def find() -> dict[str, Any]:
            i = start
            async with self._changed:
                while True:
                    while i < len(self.frames):
                        if pred(self.frames[i][1]):
                            return self.frames[i][1]
                        i += 1
                    if self.closed is not None:
                        raise ConnectionError(f"connection closed {self.closed} while waiting")
                    await self._changed.wait()

        return await self._waiting(find(), timeout)

    async def _waiting(self, coro, timeout: float):
        self._waiters += 1
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            self._waiters -= 1

    async def wait_acked(self, seq: int, timeout: float = 10.0) -> None:
        async def done() -> None:
            async with self._changed:
                while self.acked < seq:
                    if self.closed is not None:
                        raise ConnectionError(
                            f"connection closed {self.closed} at ack {self.acked}"
                        )
                    await self._changed.wait()

        await self._waiting(done(), timeout)

    async def roundtrip(self, timeout: float = 10.0) -> None:
        """Ping and await the pong: every frame the server queued before it has arrived."""
        start = len(self.frames)
        await self.send_frame({"t": "ping"})
        await self.wait_for(lambda f: f["t"] == "pong", timeout, start)

    def intervention_latency(self) -> list[tuple[float, float]]:
        """(arrival, seconds from sending the triggering event to the intervention's arrival)."""
        out = []
        for arrived, frame in self.frames:
            if frame.get("t") == "intervention":
                sent = self.sent_at.get(frame.get("seq", -1))
                if sent is not None:
                    out.append((arrived, arrived - sent))
        return out

    def of_type(self, t: str) -> list[dict[str, Any]]:
        return [f for _, f in self.frames if f.get("t") == t]
