"""The console's aiohttp application: every route with the role it needs, checked on the server.

Each module of the console declares its routes as :class:`Route` rows (its
``ROUTES``); :func:`build_console` registers them all. A route's ``role``
is the least role that may call it (``None``: public). Sign-in, sessions,
CSRF and roles are enforced by the middleware in :mod:`serve.console.auth`,
for pages and JSON alike: hiding a button is never the check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from serve.console import ops
from serve.console.context import ConsoleContext

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROLES = ("viewer", "analyst", "admin", "support")


@dataclass(frozen=True)
class Route:
    """One console route: ``role`` is the least role allowed (None: anyone, signed in or not)."""

    method: str
    path: str
    handler: Handler
    role: str | None = "viewer"


OPS_ROUTES = (
    Route("GET", "/healthz", ops.healthz, None),
    Route("GET", "/metrics", ops.metrics, None),
    Route("GET", "/api/health", ops.health_detail),
    Route("GET", "/api/stats", ops.stats),
)


def all_routes() -> list[Route]:
    """Every route of the console, from each of its modules."""
    return [*OPS_ROUTES]


def build_console(ctx: ConsoleContext) -> web.Application:
    """The console application over ``ctx``."""
    app = web.Application()
    app["ctx"] = ctx
    for route in all_routes():
        app.router.add_route(route.method, route.path, route.handler)
    return app
