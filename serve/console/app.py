"""The console's aiohttp application: every route with the role it needs, checked on the server.

Each module of the console declares its routes as :class:`Route` rows (its
``ROUTES``); :func:`build_console` registers them all. A route's ``role``
is the least role that may call it (``None``: public). Sign-in, sessions,
CSRF and roles are enforced by the middleware in :mod:`serve.console.auth`,
for pages and JSON alike: hiding a button is never the check.
"""

from __future__ import annotations

import importlib

from aiohttp import web

from serve.console.context import ConsoleContext
from serve.console.routing import Route

# Modules with a ROUTES tuple, imported when the app is built (they import Route from here).
ROUTE_MODULES = (
    "serve.console.operators",
    "serve.console.live",
    "serve.console.explorer",
    "serve.console.insights",
    "serve.console.models",
    "serve.console.sites",
    "serve.console.visitors",
    "serve.console.support",
)


def all_routes() -> list[Route]:
    """Every route of the console, from each of its modules."""
    from serve.console import auth, ops, pages

    routes = [
        Route("GET", "/healthz", ops.healthz, None),
        Route("GET", "/metrics", ops.metrics, None),
        Route("GET", "/api/health", ops.health_detail),
        Route("GET", "/api/stats", ops.stats),
        Route("GET", "/login", auth.login_page, None),
        Route("POST", "/login", auth.login, None),
        Route("POST", "/logout", auth.logout),
        Route("GET", "/api/me", auth.me),
        Route("GET", "/static/{path:[A-Za-z0-9_./-]+}", pages.static, None),
    ]
    routes += [Route("GET", p.path, pages.page_handler(p), p.role) for p in pages.PAGES]
    for s in (pages.SESSION_PAGE, pages.CHAT_PAGE):
        routes.append(Route("GET", s.path, pages.page_handler(s), s.role))
    for name in ROUTE_MODULES:
        routes += importlib.import_module(name).ROUTES
    from serve.console import views

    return routes + views.routes()


def build_console(ctx: ConsoleContext) -> web.Application:
    """The console application over ``ctx``."""
    from serve.console.accounts import Accounts
    from serve.console.auth import authorize, security_headers

    app = web.Application(middlewares=[security_headers, authorize], client_max_size=256 * 1024)
    app["ctx"] = ctx
    app["accounts"] = Accounts(ctx.redis, ctx.keys)
    roles: dict[tuple[str, str], str | None] = {}
    resources: dict[str, web.Resource] = {}  # one per path, however its methods are spread
    for route in all_routes():
        resource = resources.get(route.path) or app.router.add_resource(route.path)
        resources[route.path] = resource
        resource.add_route(route.method, route.handler)
        roles[(route.method, resource.canonical)] = route.role
    app["route_roles"] = roles
    return app
