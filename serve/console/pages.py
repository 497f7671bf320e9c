"""The console's HTML pages: one server-rendered shell per page, filled by console.js.

Each page is a shell (layout, navigation for the operator's role, the
page's sections with their headings and empty tables/canvases); the data
comes from the JSON API, so what a page shows and what a script can fetch
are the same, checked by the same roles. Static assets (console.js,
console.css, the vendored Chart.js) are served from serve/static/console.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from serve.console.accounts import Operator

STATIC = Path(__file__).resolve().parents[1] / "static" / "console"


@dataclass(frozen=True)
class Page:
    path: str
    name: str  # data-page: which part of console.js fills it
    title: str
    role: str


PAGES = (
    Page("/", "live", "Live", "viewer"),
    Page("/outcomes", "outcomes", "Outcomes", "viewer"),
    Page("/funnel", "funnel", "Funnel", "viewer"),
    Page("/segments", "segments", "Segments", "viewer"),
    Page("/sessions", "sessions", "Sessions", "analyst"),
    Page("/models", "models", "Models", "viewer"),
    Page("/sites", "sites", "Sites", "admin"),
    Page("/visitors", "visitors", "Visitors", "admin"),
    Page("/operators", "operators", "Operators", "admin"),
    Page("/audit", "audit", "Audit log", "admin"),
    Page("/support", "support", "Support", "support"),
)
SESSION_PAGE = Page("/sessions/{site}/{sid}", "session", "Session", "analyst")
CHAT_PAGE = Page("/support/{site}/{sid}", "chat", "Support chat", "support")


def _nav(op: Operator, current: str) -> str:
    links = []
    for p in PAGES:
        if not op.may(p.role):
            continue
        here = ' aria-current="page"' if p.name == current else ""
        links.append(f'<li><a href="{p.path}"{here}>{html.escape(p.title)}</a></li>')
    return "".join(links)


def render(page: Page, op: Operator, csrf: str, attrs: Mapping[str, str] | None = None) -> str:
    """The shell of ``page`` for ``op``; ``attrs`` become data- attributes of <main>."""
    data = "".join(f' data-{html.escape(k)}="{html.escape(v)}"' for k, v in (attrs or {}).items())
    who = f"{html.escape(op.name)} ({html.escape(op.role)})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{html.escape(csrf)}">
<title>{html.escape(page.title)} · Lifeline console</title>
<link rel="stylesheet" href="/static/console.css"><link rel="icon" href="data:,">
</head><body>
<a class="skip" href="#main">Skip to content</a>
<header><span class="brand">Lifeline</span>
<nav aria-label="Console pages"><ul>{_nav(op, page.name)}</ul></nav>
<form method="post" action="/logout" class="signout"><span>{who}</span>
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<button type="submit">Sign out</button></form></header>
<main id="main" data-page="{page.name}" data-role="{html.escape(op.role)}"{data}>
<h1>{html.escape(page.title)}</h1>
<p class="status" role="status" aria-live="polite"></p>
</main>
<script src="/static/vendor/chart.umd.min.js"></script>
<script src="/static/console.js"></script>
</body></html>
"""


def render_login(csrf: str, next_path: str, query: Mapping[str, str]) -> str:
    failed = (
        '<p class="error" role="alert">Wrong name or password.</p>' if "failed" in query else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Lifeline console</title>
<link rel="stylesheet" href="/static/console.css"><link rel="icon" href="data:,">
</head><body class="login">
<main id="main"><h1>Lifeline console</h1>{failed}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<label for="name">Name</label><input id="name" name="name" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form></main></body></html>
"""


def page_handler(page: Page):
    async def handler(request: web.Request) -> web.Response:
        attrs = dict(request.match_info)
        text = render(page, request["operator"], request.get("csrf", ""), attrs)
        return web.Response(text=text, content_type="text/html")

    handler.__name__ = f"page_{page.name}"
    return handler


_TYPES = {".js": "application/javascript", ".css": "text/css", ".md": "text/plain"}


async def static(request: web.Request) -> web.StreamResponse:
    """``GET /static/{path}``: the console's own scripts and styles (no listing, no escape)."""
    path = (STATIC / request.match_info["path"]).resolve()
    if STATIC.resolve() not in path.parents or not path.is_file() or path.suffix not in _TYPES:
        raise web.HTTPNotFound(text="no such file\n")
    return web.FileResponse(
        path, headers={"Content-Type": _TYPES[path.suffix], "Cache-Control": "no-cache"}
    )
