"""The gateway's HTTP side (aiohttp): client script, demo shop, beacon, health, metrics.

The WebSocket endpoint is served by the ``websockets`` library on its own
port (:mod:`serve.edge.gateway`); everything a browser fetches over plain HTTP is
here, including ``POST /beacon``, which ``sendBeacon`` needs (a WebSocket
server only speaks GET).

HTML pages of the demo carry placeholders filled in per request:
``{{LIFELINE_WS}}`` (the WebSocket URL) and ``{{LIFELINE_SITE}}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from serve.edge import client_build
from serve.edge.gateway import Gateway
from serve.edge.protocol import decode, nests_within

log = logging.getLogger("lifeline.http")

STATIC = Path(__file__).resolve().parents[1] / "static"  # serve/static: the browser assets
DEMO = STATIC / "demo"
BEACON_MAX_BYTES = 64 * 1024
CLIENT_CACHE_CONTROL = "public, max-age=300"
BEACON_MAX_DEPTH = 16  # body, events, event, then a field of MAX_DEPTH (8) in actors/core/events.py
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


def build_app(
    gateway: Gateway,
    ws_url: str,
    demo_site: str = "demo",
    extra_status: Any = None,
    shard_info: Any = None,
    processes: Callable[[], list[dict[str, Any]]] | None = None,
) -> web.Application:
    """The aiohttp application; ``ws_url`` is what pages are told to connect to.

    ``processes`` lists this host's gateway processes with their ``state``
    (cluster/stack.py): ``/healthz`` shows them and is not ok while any is not ``up``.
    """
    app = web.Application(client_max_size=BEACON_MAX_BYTES)
    client = client_build.load()  # once: the files are part of the installed package

    async def client_js(request: web.Request) -> web.Response:
        """The minified client (8 KB gzipped), gzip-encoded when accepted, revalidated by ETag.

        Browsers may reuse it for 5 minutes, then ask again with If-None-Match
        and get a bodiless 304 while it is unchanged: a new client reaches
        every visitor within 5 minutes of a deploy.
        """
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

    async def demo(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        path = (DEMO / name).resolve()
        if DEMO.resolve() not in path.parents or not path.is_file():
            raise web.HTTPNotFound(text="no such page\n")
        if path.suffix == ".html":
            html = (
                path.read_text()
                .replace("{{LIFELINE_WS}}", ws_url)
                .replace("{{LIFELINE_SITE}}", demo_site)
            )
            return web.Response(
                text=html, content_type="text/html", headers={"Cache-Control": "no-cache"}
            )
        return web.FileResponse(
            path, headers={"Content-Type": _TYPES.get(path.suffix, "application/octet-stream")}
        )

    async def help_article(request: web.Request) -> web.Response:
        """The help articles nudges link to (the site's knowledge base)."""
        from serve.apps.knowledge import article_html

        html = article_html(demo_site, request.match_info["article"])
        if html is None:
            raise web.HTTPNotFound(text="no such help article\n")
        return web.Response(text=html, content_type="text/html")

    async def beacon(request: web.Request) -> web.Response:
        site = gateway.site_for(request.query_string, request.headers.get("Origin"))
        if isinstance(site, str):
            return web.json_response({"code": "forbidden", "detail": site}, status=403)
        raw = await request.read()
        if len(raw) > BEACON_MAX_BYTES:
            return web.json_response(
                {"code": "frame_too_large", "detail": "beacon over 64 KiB"}, status=413
            )
        # The socket's decoder, so a beacon body is refused for what a frame is
        # (NaN, Infinity, nesting past the stack: a 400, never a 500).
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
        status, reply = await gateway.beacons.receive(site, body)
        return web.json_response(reply, status=status)

    async def healthz(request: web.Request) -> web.Response:
        try:
            redis_ok = bool(await gateway.redis.ping())
        except Exception:
            redis_ok = False
        own = gateway.health()  # its background loops: one that keeps failing turns health red
        gateways = processes() if processes is not None else []
        # A gateway process down (restarting) means this host serves with less than it was
        # given: not ok, so that a load balancer or an operator hears of it.
        ok = redis_ok and own["ok"] and all(g.get("state") == "up" for g in gateways)
        body = {
            "ok": ok,
            "redis": redis_ok,
            "gateway": gateway.id,
            "loops": own["loops"],
            "shards": len(gateway.shards),
            "connections": gateway.stats.connections,
        }
        if gateways:
            body["gateways"] = gateways
        if extra_status is not None:
            body.update(extra_status())
        if shard_info is not None:
            try:
                infos = await asyncio.wait_for(shard_info(), 5.0)
                body["shard_info"] = infos
                # A shard whose background loop is down (snapshots, model polling) is not well.
                sick = [i.get("index") for i in infos if not i.get("healthy", True)]
                if sick:
                    body["ok"] = False
                    body["shards_unhealthy"] = sick
            except Exception as exc:  # a shard restarting: health says so rather than hanging
                body["shard_info"] = f"unavailable: {type(exc).__name__}"
        return web.json_response(body, status=200 if body["ok"] else 503)

    async def metrics(request: web.Request) -> web.Response:
        """Prometheus text format, from the gateway's counters."""
        lines = []
        labels = {
            "errors_by_code": ("errors_by_code", "code"),
            "loop_failures": ("loop_failures", "loop"),
        }
        for key, value in gateway.stats.snapshot().items():
            if key in labels:  # a map: one labelled series per entry
                base, label = labels[key]
                name = f"lifeline_gateway_{base}_total"
                lines.append(f"# TYPE {name} counter")
                lines += [f'{name}{{{label}="{k}"}} {float(v)}' for k, v in sorted(value.items())]
                continue
            if key in ("connections", "mean_shard_batch"):
                name, kind = f"lifeline_gateway_{key}", "gauge"
            else:
                name, kind = f"lifeline_gateway_{key}_total", "counter"
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name} {float(value)}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(gateway.stats.snapshot())

    app.router.add_get("/lifeline.js", client_js)
    app.router.add_post("/beacon", beacon)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/help/{article:[A-Za-z0-9_-]+}", help_article)
    app.router.add_get("/", demo)
    app.router.add_get("/{name:[A-Za-z0-9_.-]+}", demo)
    return app
