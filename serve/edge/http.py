"""The gateway's public HTTP side (aiohttp): client script, demo shop, beacon, help articles,
the visitor's data-rights requests (:mod:`serve.edge.rights_http`).

The WebSocket endpoint is served by the ``websockets`` library on its own
port (:mod:`serve.edge.gateway`); everything a browser fetches over plain HTTP is
here, including ``POST /beacon``, which ``sendBeacon`` needs (a WebSocket
server only speaks GET).

HTML pages of the demo carry placeholders filled in per request:
``{{LIFELINE_WS}}`` (the WebSocket URL) and ``{{LIFELINE_SITE}}``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from serve.edge import client_build
from serve.edge.gateway import Gateway
from serve.edge.ip_limits import RETRY_AFTER, address_refusal
from serve.edge.protocol import decode, nests_within
from serve.edge.rights_http import RightsEndpoints
from serve.headers import NO_STORE, security_headers

log = logging.getLogger("lifeline.http")

STATIC = Path(__file__).resolve().parents[1] / "static"  # serve/static: the browser assets
DEMO = STATIC / "demo"
BEACON_MAX_BYTES = 64 * 1024
CLIENT_CACHE_CONTROL = "public, max-age=300"
BEACON_MAX_DEPTH = 16  # body, events, event, then a field of MAX_DEPTH (8) in actors/core/events.py
# Every response of the public side (serve/headers.py adds HSTS under TLS). Pages get a
# fuller CSP of their own (Handlers.page_csp); this one covers the rest.
GATEWAY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # The browsers' default, stated: the demo's own navigation keeps its referrer (the
    # tracker reads it), other sites get the origin only.
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "X-Frame-Options": "DENY",
}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_TYPES = {
    ".html": "text/html",
    ".js": "application/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def build_app(gateway: Gateway, ws_url: str, demo_site: str = "demo") -> web.Application:
    """The public aiohttp application; ``ws_url`` is what pages are told to connect to.

    Health, metrics and counters are not here: they are the operator's, on the
    console's port (:mod:`serve.console.ops`).
    """
    h = Handlers(gateway, ws_url, demo_site)
    app = web.Application(
        client_max_size=BEACON_MAX_BYTES, middlewares=[security_headers(GATEWAY_HEADERS)]
    )
    for path in client_build.SCRIPTS:
        app.router.add_get(path, h.client_js)
    app.router.add_post("/beacon", h.beacon)
    RightsEndpoints(gateway).routes(app)
    app.router.add_get("/help/{article:[A-Za-z0-9_-]+}", h.help_article)
    app.router.add_get("/", h.demo)
    app.router.add_get("/{name:[A-Za-z0-9_.-]+}", h.demo)
    return app


class Handlers:
    """The app's request handlers, and what they answer from (see :func:`build_app`)."""

    def __init__(self, gateway: Gateway, ws_url: str, demo_site: str) -> None:
        self.gateway = gateway
        self.ws_url = ws_url
        self.demo_site = demo_site
        ws = urlsplit(ws_url)
        self.ws_origin = f"{ws.scheme}://{ws.netloc}"
        # Once: the files are part of the installed package.
        self.scripts = {
            path: client_build.load(source_name=src, build_name=build)
            for path, (src, build) in client_build.SCRIPTS.items()
        }

    async def client_js(self, request: web.Request) -> web.Response:
        """A client script (the tracker, 8 KB gzipped, or the cards' code it loads on demand),
        minified, gzip-encoded when accepted, revalidated by ETag.

        Browsers may reuse it for 5 minutes, then ask again with If-None-Match
        and get a bodiless 304 while it is unchanged: a new client reaches
        every visitor within 5 minutes of a deploy.
        """
        client = self.scripts[request.path]
        gz = "gzip" in request.headers.get("Accept-Encoding", "")
        etag = client.gzip_etag if gz else client.etag
        headers = {
            "Cache-Control": CLIENT_CACHE_CONTROL,
            "ETag": etag,
            "Vary": "Accept-Encoding",
        }
        wanted = request.headers.get("If-None-Match", "")
        if wanted and any(
            t.strip() in (client.etag, client.gzip_etag, "*") for t in wanted.split(",")
        ):
            return web.Response(status=304, headers=headers)
        if gz:
            headers["Content-Encoding"] = "gzip"
        return web.Response(
            body=client.gzipped if gz else client.body,
            content_type="application/javascript",
            charset="utf-8",
            headers=headers,
        )

    async def demo(self, request: web.Request) -> web.StreamResponse:
        """A demo page or asset; HTML pages get the WebSocket URL and site key filled in."""
        name = request.match_info.get("name") or "index.html"
        path = (DEMO / name).resolve()
        if DEMO.resolve() not in path.parents or not path.is_file():
            raise web.HTTPNotFound(text="no such page\n")
        if path.suffix == ".html":
            html = (
                path.read_text()
                .replace("{{LIFELINE_WS}}", self.ws_url)
                .replace("{{LIFELINE_SITE}}", self.demo_site)
            )
            headers = {"Cache-Control": "no-cache", "Content-Security-Policy": self.page_csp(html)}
            return web.Response(text=html, content_type="text/html", headers=headers)
        return web.FileResponse(
            path, headers={"Content-Type": _TYPES.get(path.suffix, "application/octet-stream")}
        )

    def page_csp(self, html: str) -> str:
        """A demo page's CSP: same-origin scripts plus its own inline ones (by hash), the socket.

        Styles allow 'unsafe-inline': the intervention cards style their shadow root
        with a ``<style>`` element and the demo uses style attributes; scripts, what an
        injection would need, stay locked to the page's own files and hashes.
        """
        hashes = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
            for m in _INLINE_SCRIPT.findall(html)
        )
        return (
            f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data:; media-src 'self'; connect-src 'self' {self.ws_origin}; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
        )

    async def help_article(self, request: web.Request) -> web.Response:
        """The help articles nudges link to (the site's knowledge base)."""
        from serve.apps.knowledge import article_html

        html = article_html(self.demo_site, request.match_info["article"])
        if html is None:
            raise web.HTTPNotFound(text="no such help article\n")
        return web.Response(text=html, content_type="text/html")

    async def beacon(self, request: web.Request) -> web.Response:
        """``POST /beacon``: a page-hide flush, checked here for its address's rate, size and
        shape, then the gateway's."""
        refused = address_refusal(self.gateway.ip_limits, request.remote)
        if refused is not None:
            self.gateway.stats.ip_refused += 1
            return web.json_response(refused, status=429, headers={**NO_STORE, **RETRY_AFTER})
        site = self.gateway.site_for(request.query_string, request.headers.get("Origin"))
        if isinstance(site, str):
            return web.json_response(
                {"code": "forbidden", "detail": site}, status=403, headers=NO_STORE
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # aiohttp's client_max_size: answered as ours
            raw = None
        body = beacon_body(raw)
        if isinstance(body, web.Response):
            body.headers.update(NO_STORE)
            return body
        status, reply = await self.gateway.beacons.receive(site, body)
        return web.json_response(reply, status=status, headers=NO_STORE)


def beacon_body(raw: bytes | None) -> dict[str, Any] | web.Response:
    """A beacon's body as a JSON object, or the error response that refuses it.

    The socket's decoder, so a beacon body is refused for what a frame is
    (NaN, Infinity, nesting past the stack: a 400, never a 500). ``raw`` None:
    the body was too large to read.
    """
    if raw is None or len(raw) > BEACON_MAX_BYTES:
        return web.json_response(
            {"code": "frame_too_large", "detail": "beacon over 64 KiB"}, status=413
        )
    try:
        body, why = decode(raw.decode())
    except UnicodeDecodeError:
        body, why = None, "body is not UTF-8"
    if body is None:
        return web.json_response(
            {"code": "bad_frame", "detail": f"body must be a JSON object: {why}"}, status=400
        )
    if not nests_within(body, BEACON_MAX_DEPTH):
        return web.json_response(
            {"code": "bad_frame", "detail": f"body nests deeper than {BEACON_MAX_DEPTH}"},
            status=400,
        )
    return body
