"""Security headers on the gateway's public HTTP side (serve/edge/http.py, serve/headers.py)."""

from __future__ import annotations

import base64
import hashlib
import re

from aiohttp.test_utils import TestClient, TestServer

from serve.edge.http import build_app
from serve.edge.ip_limits import IpLimits


class _NoSites:
    """A gateway stand-in that knows no site: the beacon's refusal needs nothing more."""

    ip_limits = IpLimits()  # loopback is exempt: the test client is never limited

    def site_for(self, query: str, origin: str | None) -> str:
        return "unknown site key"


async def test_every_response_carries_the_headers_and_pages_their_own_csp() -> None:
    app = build_app(gateway=_NoSites(), ws_url="ws://127.0.0.1:8765/ws")  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/")
        html = await page.text()
        csp = page.headers["Content-Security-Policy"]
        # Every inline script of the page is allowed by its hash, nothing else inline.
        inline = re.findall(r"<script>(.*?)</script>", html, re.S)
        assert inline
        for body in inline:
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
        assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
        assert "connect-src 'self' ws://127.0.0.1:8765" in csp
        assert "frame-ancestors 'none'" in csp
        for r in (page, await client.get("/lifeline.js"), await client.get("/nope.html")):
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            assert "Strict-Transport-Security" not in r.headers  # plain HTTP: no HSTS
        # The client script keeps its own caching; the beacon's answers are never stored.
        assert (await client.get("/lifeline.js")).headers["Cache-Control"].startswith("public")
        refused = await client.post("/beacon?site=nope", data=b"{}")
        assert refused.status == 403
        assert refused.headers["Cache-Control"] == "no-store"
