"""The visitor's own data-rights requests on the gateway's HTTP listener (docs/RIGHTS.md).

``POST /v1/visitor/access?site=KEY`` and ``POST /v1/visitor/erase?site=KEY``,
body ``{"sid": ..., "token": ...}``: the session's resume token (the one
its welcome gave) authenticates the request. The server reads the
session's visitor from its hash and acts for that visitor, every session
of theirs (a session without a visitor: that session only). Access answers
the JSON document (serve/rights/access.py), erasure ``{"erased": true,
"sessions": n, "keys": n, "entries": n}``. Both answer ``Cache-Control:
no-store``; the Origin must be one of the site's (as for the beacon), and
a cross-origin page gets CORS headers for it.

Refusals (JSON ``{"code", "detail"}``): 403 ``forbidden`` (site or
origin), 400 ``bad_frame`` (body), 403 ``bad_token``, 404
``unknown_session``, 410 ``erased`` (already erased), 429 ``rate_limited``
with ``limit``: ``address`` (the gateway's per-address request rate, shared
with its sockets and beacons: serve/edge/ip_limits.py), ``session``
(``RIGHTS_PER_SESSION`` requests per ``RIGHTS_WINDOW_S``) or ``site``
(``RIGHTS_PER_SITE`` per second).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from actors.core.sites import Site
from serve.edge.ip_limits import RETRY_AFTER, address_refusal
from serve.edge.protocol import RESUME, SID_RE, TokenBucket, keyring_of
from serve.rights.access import AccessReader

RIGHTS_PER_SESSION = 5  # requests of one session in RIGHTS_WINDOW_S
RIGHTS_WINDOW_S = 60.0
RIGHTS_PER_SITE = 20.0  # requests per second of one site, every session together
RIGHTS_BUCKETS = 10_000  # sessions whose rate is remembered (oldest forgotten first)
NO_STORE = {"Cache-Control": "no-store"}
BODY_MAX = 1024


class RightsEndpoints:
    """The two routes, their checks and rate limits; one per gateway process."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway  # None in tests that serve only the static files
        self._reader: AccessReader | None = None
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def reader(self) -> AccessReader:
        """Made on first use, over the gateway's Redis client."""
        if self._reader is None:
            gw = self.gateway
            self._reader = AccessReader(gw.redis, gw.keys, gw.store.master)
        return self._reader

    def routes(self, app: web.Application) -> None:
        for path, handler in (
            ("/v1/visitor/access", self.access),
            ("/v1/visitor/erase", self.erase),
        ):
            app.router.add_post(path, handler)
            app.router.add_route("OPTIONS", path, self.preflight)

    async def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight: a page of the site on another origin may POST JSON here."""
        site = self._site(request)
        if isinstance(site, web.Response):
            return site
        headers = {
            **self._cors(request),
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers=headers)

    async def access(self, request: web.Request) -> web.Response:
        """The visitor's access document."""
        found = await self._authorised(request)
        if isinstance(found, web.Response):
            return found
        site, sid, vid = found
        reader = self.reader
        doc = await (reader.visitor(site.key, vid) if vid else reader.session(site.key, sid))
        return web.json_response(doc, headers={**NO_STORE, **self._cors(request)})

    async def erase(self, request: web.Request) -> web.Response:
        """Erase the visitor (or the session without one); the answer gives the proof's counts."""
        found = await self._authorised(request)
        if isinstance(found, web.Response):
            return found
        site, sid, vid = found
        gw = self.gateway
        keep = gw.store.retention(site.key)
        if vid:
            proof = await gw.eraser.erase_visitor(site.key, vid, keep, "request")
        else:
            proof = await gw.eraser.erase_session(site.key, sid, keep, "request")
        body = {"erased": True, **{k: proof.get(k, 0) for k in ("sessions", "keys", "entries")}}
        return web.json_response(body, headers={**NO_STORE, **self._cors(request)})

    # -- checks ---------------------------------------------------------------------

    def _site(self, request: web.Request) -> Site | web.Response:
        site = self.gateway.site_for(request.query_string, request.headers.get("Origin"))
        if isinstance(site, str):
            return _refuse(403, "forbidden", site)
        return site

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}

    async def _authorised(
        self, request: web.Request
    ) -> tuple[Site, str, str | None] | web.Response:
        """(site, sid, the session's vid or None) of a request whose token is right, or its refusal."""
        refused = address_refusal(self.gateway.ip_limits, request.remote)
        if refused is not None:  # the address's rate, as its sockets and beacons (ip_limits.py)
            self.gateway.stats.ip_refused += 1
            return web.json_response(refused, status=429, headers={**NO_STORE, **RETRY_AFTER})
        site = self._site(request)
        if isinstance(site, web.Response):
            return site
        # read(n) may return a first chunk only: read to the end, or one byte past the bound.
        try:
            raw = await request.content.readexactly(BODY_MAX + 1)
        except asyncio.IncompleteReadError as short:
            raw = short.partial
        try:
            body = json.loads(raw) if len(raw) <= BODY_MAX else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _refuse(
                400, "bad_frame", f"body must be a JSON object of at most {BODY_MAX} bytes"
            )
        sid, token = body.get("sid"), body.get("token")
        if not isinstance(sid, str) or SID_RE.fullmatch(sid) is None:
            return _refuse(400, "bad_sid", "sid must be 8 to 64 characters of [A-Za-z0-9_-]")
        # The session's resume token, as a resume checks it (cluster/tokens.py: key id, expiry).
        if keyring_of(self.gateway.secret).check(token, RESUME, site.key, sid) is not None:
            return _refuse(403, "bad_token", "token does not match this session")
        limit = self._refused(site.key, sid)
        if limit is not None:
            return _refuse(
                429, "rate_limited", "too many data requests: try again in a minute", limit=limit
            )
        store = self.gateway.store
        fields = await store.r.hmget(store.keys.session(site.key, sid), "seq", "vid")
        if fields[0] is None:
            if await store.erased(site.key, sid):
                return _refuse(410, "erased", "this session's data was erased")
            return _refuse(404, "unknown_session", "no such session for this site")
        vid = fields[1].decode() if fields[1] is not None else None
        return site, sid, vid

    def _refused(self, site: str, sid: str) -> str | None:
        """Take one request from the session's and the site's buckets; None if both had it,
        else the first limit that refused (``session`` or ``site``)."""
        now = time.monotonic()
        buckets = self._buckets
        refused = None
        for limit, key, rate, burst in (
            ("session", f"{site}|{sid}", RIGHTS_PER_SESSION / RIGHTS_WINDOW_S, RIGHTS_PER_SESSION),
            ("site", site, RIGHTS_PER_SITE, RIGHTS_PER_SITE),
        ):
            bucket = buckets.pop(key, None) or TokenBucket(rate, float(burst), now)
            buckets[key] = bucket
            if not bucket.take(1, now) and refused is None:
                refused = limit
        while len(buckets) > RIGHTS_BUCKETS:
            del buckets[next(iter(buckets))]
        return refused


def _refuse(status: int, code: str, detail: str, **extra: str) -> web.Response:
    return web.json_response(
        {"code": code, "detail": detail, **extra}, status=status, headers=NO_STORE
    )
