"""Helpers shared by the browser tests: the scripted gateway, the file server, probes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "serve" / "static"
DEMO = STATIC / "demo"
# Where the tests write screenshots and measured figures: a scratch folder by
# default, so a test run leaves the checkout clean; LIFELINE_ARTIFACTS=. writes
# them over the committed ones (docs/screenshots, loadtests/results).
ARTIFACTS = Path(os.environ.get("LIFELINE_ARTIFACTS", ROOT / "build" / "test-artifacts"))
SCREENSHOTS = ARTIFACTS / "docs" / "screenshots"
RESULTS = ARTIFACTS / "loadtests" / "results"
CHROMIUM = os.environ.get("LIFELINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOP = "http://shop.test"
GW = "ws://gw.test/ws"
VIEWPORT = {"width": 1100, "height": 760}

# Hooks every page gets before any script of its own: they record what the client
# emits and renders, with performance.now() stamps, for the tests to read.
PROBE = """
window.__ll = {events: [], renders: [], errors: []};
window.lifelineQueue = window.lifelineQueue || [];
window.lifelineQueue.push(["on", "event", (ev) => { window.__ll.events.push({seq: ev.seq, type: ev.type, at: performance.now()}); }]);
window.lifelineQueue.push(["on", "render", (iv) => {
  const at = performance.now();
  // the frame after the DOM insert is when the offer can be on screen
  requestAnimationFrame(() => window.__ll.renders.push({iid: iv.iid, kind: iv.kind, seq: iv.seq, at, painted: performance.now()}));
}]);
"""


def decode(payload: str | bytes) -> dict[str, Any]:
    return (
        msgpack.unpackb(payload) if isinstance(payload, (bytes, bytearray)) else json.loads(payload)
    )


class ScriptedGateway:
    """Answers the client's WebSocket like the gateway would, and records every frame.

    hello -> welcome (with a token, ``acked`` = what this stand-in holds), events ->
    cumulative ack of the contiguous prefix it holds (resends counted once), and
    whatever the test pushes (``intervene``, ``push``; ``after_welcome`` frames follow every
    welcome). Other frames (chat_*) are only recorded. ``ack_events=False`` holds acks back;
    ``cut()`` closes the page's socket as a dropped connection would.
    """

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []  # every frame the page sent, decoded
        self.raw: list[str | bytes] = []
        self.store: dict[str, dict[int, dict[str, Any]]] = {}  # sid -> seq -> event, as stored
        self.connections: list[Any] = []
        self.ack_events = True
        self.binary = False
        self.down = False  # refuse connections (a server that is away)
        self.sid: str | None = None
        # frames sent right after every welcome (e.g. the chat_state of a session whose chat is open)
        self.after_welcome: list[dict[str, Any]] = []

    async def install(self, context) -> None:
        await context.route_web_socket(re.compile(r"^ws://gw\.test/.*"), self._on_connect)

    async def _on_connect(self, ws) -> None:
        self.connections.append(ws)
        if self.down:
            await ws.close(code=1011, reason="test: server away")
            return
        ws.on_message(lambda m: self._on_message(ws, m))

    def _send(self, ws, frame: dict[str, Any]) -> None:
        ws.send(msgpack.packb(frame) if self.binary else json.dumps(frame))

    @property
    def held(self) -> dict[int, dict[str, Any]]:
        """The current session's stored events."""
        return self.store.setdefault(self.sid or "", {})

    def acked_for(self, sid: str) -> int:
        held, n = self.store.get(sid, {}), 0
        while n + 1 in held:
            n += 1
        return n

    def _on_message(self, ws, message: str | bytes) -> None:
        self.raw.append(message)
        self.binary = isinstance(message, (bytes, bytearray))
        f = decode(message)
        self.frames.append(f)
        if f.get("t") == "hello":
            self.sid = f["sid"]
            self._send(
                ws,
                {
                    "t": "welcome",
                    "v": 1,
                    "sid": f["sid"],
                    "token": "tok-" + f["sid"],
                    "acked": self.acked_for(f["sid"]),
                    "limits": {
                        "batch": 100,
                        "sessions": 4,
                        "frame_bytes": 65536,
                        "events_per_s": 300,
                    },
                },
            )
            for extra in self.after_welcome:
                self._send(ws, {**extra, "sid": f["sid"]})
        elif f.get("t") == "events":
            held = self.store.setdefault(f["sid"], {})
            for ev in f["events"]:
                held.setdefault(ev["seq"], ev)
            if self.ack_events:
                self._send(ws, {"t": "ack", "sid": f["sid"], "seq": self.acked_for(f["sid"])})
        elif f.get("t") == "ping":
            self._send(ws, {"t": "pong", "now": int(time.time() * 1000)})

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        out = [e for f in self.frames if f.get("t") == "events" for e in f["events"]]
        return [e for e in out if type_ is None or e["type"] == type_]

    def push(self, frame: dict[str, Any]) -> None:
        self._send(self.connections[-1], frame)

    def intervene(self, kind: str, iid: str, text: str = "", **extra: Any) -> None:
        self.push(
            {
                "t": "intervention",
                "sid": self.sid,
                "iid": iid,
                "kind": kind,
                "text": text,
                "score": 0.8,
                "reasons": [{"signal": "exit_risk", "strength": 0.8}],
                **extra,
            }
        )

    async def cut(self) -> None:
        await self.connections[-1].close(code=4000, reason="test: connection cut")


def serve_file(name: str, ws_url: str = GW, site: str = "demo") -> tuple[bytes, str] | None:
    """What the lead's HTTP server answers for a path: the client, or a demo file with placeholders filled."""
    types = {
        ".html": "text/html",
        ".js": "application/javascript",
        ".css": "text/css",
        ".json": "application/json",
        ".webm": "video/webm",
    }
    if name.startswith("help/"):  # the site's help articles, as serve/edge/http.py serves them
        from serve.apps.knowledge import article_html

        page = article_html(site, name[5:])
        return None if page is None else (page.encode(), "text/html")
    if re.fullmatch(r"lifeline(-ui|-chat)?(\.min)?\.js", name):
        path = STATIC / name
    else:
        path = (DEMO / (name or "index.html")).resolve()
        if DEMO.resolve() not in path.parents:
            return None
    if not path.is_file():
        return None
    body = path.read_bytes()
    if path.suffix == ".html":
        body = (
            body.decode()
            .replace("{{LIFELINE_WS}}", ws_url)
            .replace("{{LIFELINE_SITE}}", site)
            .encode()
        )
    return body, types.get(path.suffix, "application/octet-stream")


class Shop:
    """A browser context on the demo shop, served from the repository (no Lifeline server)."""

    def __init__(self, context, gateway: ScriptedGateway) -> None:
        self.context = context
        self.gw = gateway
        self.beacons: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.page_errors: list[str] = []
        self.sockets: list[str] = []

    async def new_page(self):
        page = await self.context.new_page()
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        return page


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll a condition on state the test process holds (frames a route handler recorded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
