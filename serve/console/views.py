"""Each console page's view: its KPIs, charts, tables and forms as one JSON document.

``GET /api/view/{page}`` answers with what the page shows (console.js
renders it generically), under the page's own role; ``GET
/api/export/{page}/{table}.csv`` gives any table of a view as CSV
(analyst, audited). The numbers come from the modules that own them
(insights, explorer, models, sites, live metrics); this module only
shapes them for display.

A view is ``{"kpis": [...], "charts": [...], "tables": [...], "forms":
[...], "filters": [...], "notes": [...]}``; a chart is ``{"id", "title",
"type": "line"|"bar", "labels", "series": [{"name", "values"}]}``; a table
is ``{"id", "title", "columns": [{"key", "label", "num"?, "link"?}],
"rows": [{...}]}`` where a row may carry ``_actions`` (buttons: label,
method, url, body; ``download``: save the answer as that file; an answer
with ``view`` is rendered as the page) that only a role allowed to use them
is given. A form with ``view`` set answers the page's view, rendered in place
(the Visitors look-up: its fields travel in a POST body, not the URL).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from cluster.keys import subject_digest
from serve.console import admin_views, audit, explorer_view, insights, live, support, visitors
from serve.console.accounts import ROLES, SCOPES, Operator
from serve.console.auth import error
from serve.console.pages import CHAT_PAGE, PAGES, SESSION_PAGE
from serve.console.routing import Route
from serve.console.shapes import View, col, table, to_csv, when

ViewFn = Callable[[web.Request], Awaitable[View]]


# -- admin pages -----------------------------------------------------------------------------


async def operators_view(request: web.Request) -> View:
    ops = await request.app["accounts"].list()
    me: Operator = request["operator"]
    rows = []
    for o in ops:
        actions = [
            {
                "label": f"Make {r}",
                "method": "POST",
                "url": f"/api/operators/{o['name']}",
                "body": {"role": r},
                "secondary": True,
            }
            for r in ROLES
            if r != o["role"]
        ]
        if o["name"] != me.name:
            actions.append(
                {
                    "label": "Remove",
                    "method": "DELETE",
                    "url": f"/api/operators/{o['name']}",
                    "confirm": f"Remove {o['name']}?",
                }
            )
        rows.append({**o, "created": when(o["created"] * 1000), "_actions": actions})
    return {
        "tables": [
            table(
                "operators",
                "Operators",
                [col("name", "Name"), col("role", "Role"), col("created", "Created")],
                rows,
                csv=False,
            )
        ],
        "forms": [
            {
                "id": "add",
                "title": "Add an operator",
                "method": "POST",
                "url": "/api/operators",
                "submit": "Add operator",
                "fields": [
                    {"name": "name", "label": "Name"},
                    {"name": "role", "label": "Role", "type": "select", "options": list(ROLES)},
                    {"name": "password", "label": "Password (12+ characters)", "type": "password"},
                ],
            },
            {
                "id": "token",
                "title": "Issue an API token",
                "method": "POST",
                "url": "/api/tokens",
                "submit": "Issue token",
                "fields": [
                    {"name": "name", "label": "Operator", "value": me.name},
                    {"name": "scope", "label": "Scope", "type": "select", "options": list(SCOPES)},
                    {"name": "ttl_days", "label": "Days", "value": "90"},
                ],
            },
        ],
    }


async def audit_view(request: web.Request) -> View:
    ctx = request.app["ctx"]
    entries = await audit.read(ctx.redis, ctx.keys.audit, 500)
    rows = [
        {
            "when": when(e["ts"]),
            "who": e["who"],
            "action": e["action"],
            "from": e["from"],
            "detail": ", ".join(f"{k}={v}" for k, v in e["detail"].items()),
        }
        for e in entries
    ]
    return {
        "tables": [
            table(
                "audit",
                "Newest 500 actions",
                [
                    col("when", "When"),
                    col("who", "Who"),
                    col("action", "Action"),
                    col("from", "From"),
                    col("detail", "Detail"),
                ],
                rows,
            )
        ],
        "notes": ["The audit log is append-only: the console has no way to edit or delete it."],
    }


VIEWS: dict[str, ViewFn] = {
    "live": live.view,
    "outcomes": insights.VIEWS["outcomes"],
    "funnel": insights.VIEWS["funnel"],
    "segments": insights.VIEWS["segments"],
    "models": admin_views.models_view,
    "sites": admin_views.sites_view,
    "sessions": explorer_view.sessions_view,
    "session": explorer_view.session_view,
    "visitors": visitors.visitors_view,
    "operators": operators_view,
    "audit": audit_view,
    "support": support.queue_view,
    "chat": support.chat_view,
}


def _page_role(name: str) -> str:
    for p in (*PAGES, SESSION_PAGE, CHAT_PAGE):
        if p.name == name:
            return p.role
    raise KeyError(name)


def view_handler(name: str, fn: ViewFn):
    async def handler(request: web.Request) -> web.Response:
        try:
            view = await fn(request)
        except ValueError as exc:  # a bad filter: said, not a 500
            return error(400, "bad_request", str(exc))
        return web.json_response(view, dumps=_dumps)

    handler.__name__ = f"view_{name}"
    return handler


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str, allow_nan=False)


async def export_csv(request: web.Request) -> web.StreamResponse:
    """``GET /api/export/{page}/{table}.csv``: a table of a page's view (analyst), audited."""
    name, tid = request.match_info["page"], request.match_info["table"]
    fn = VIEWS.get(name)
    if fn is None:
        return error(404, "not_found", f"no page {name!r}")
    op: Operator = request["operator"]
    if not op.may(_page_role(name)):
        return error(403, "forbidden", f"this needs the {_page_role(name)} role; you are {op.role}")
    try:
        view = await fn(request)
    except ValueError as exc:  # a bad filter: said, not a 500 (as the view's own route)
        return error(400, "bad_request", str(exc))
    # A table marked csv=False is not for export (the Visitors page's: its query holds a
    # visitor id, which the audit entry below would keep).
    found = [t for t in view.get("tables", []) if t["id"] == tid and t.get("csv") is not False]
    if not found:
        return error(404, "not_found", f"page {name!r} has no table {tid!r}")
    await audit.record_action(
        request,
        "export",
        page=name,
        table=tid,
        rows=len(found[0]["rows"]),
        query=audited_query(request.query),
    )
    return web.Response(
        text=to_csv(found[0]),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}-{tid}.csv"'},
    )


# Query parameters whose value may name a subject (the Sessions page's sid prefix, a
# session page's sid, a vid): the audit log, shared and kept longer than their data,
# never holds them.
SUBJECT_PARAMS = frozenset({"sid", "vid"})


def audited_query(query: Mapping[str, str]) -> dict[str, str]:
    """An export's query as its audit entry keeps it: each parameter as given, except that
    a subject's id (or id prefix) becomes its length and its digest
    (:func:`cluster.keys.subject_digest` of the site and the value, the pseudonym the
    erasure proof and the Visitors page's audit use; a short prefix's digest can be
    guessed, but a short prefix names nobody)."""
    site = query.get("site", "")
    return {
        k: f"{len(v)} chars, digest {subject_digest(site, v)}" if k in SUBJECT_PARAMS else v
        for k, v in query.items()
    }


def routes() -> list[Route]:
    out = [
        Route("GET", f"/api/view/{n}", view_handler(n, fn), _page_role(n))
        for n, fn in VIEWS.items()
    ]
    out.append(
        Route("GET", "/api/export/{page:[a-z]+}/{table:[a-z0-9_-]+}.csv", export_csv, "analyst")
    )
    return out
