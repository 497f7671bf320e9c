"""Security headers for every HTTP response, one middleware for the console and the gateway.

Each app gives its own defaults (the console's strict CSP and ``no-store``,
the gateway's frame-ancestors and referrer policy); a handler's own header
wins (``setdefault``), so a demo page can carry a CSP with its inline
scripts' hashes and the client script its ``public`` caching. HSTS is added
when the request came over TLS (``request.secure``); behind a proxy that
terminates TLS, the proxy sets HSTS (docs/SECURITY.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

HSTS = "max-age=31536000"
# For anything with personal data (beacon replies, documents about a visitor): never cached.
NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def security_headers(defaults: Mapping[str, str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware that adds ``defaults`` (and HSTS under TLS) to every response,
    error responses included."""
    items = tuple(defaults.items())

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        for k, v in items:
            response.headers.setdefault(k, v)
        if request.secure:
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        if isinstance(response, web.HTTPException) and response.status >= 400:
            raise response
        return response

    return middleware
