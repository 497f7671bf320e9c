"""The Visitors page's back end: an admin looks a visitor up, downloads their data, erases them.

Every route is a ``POST`` whose JSON body names the subject, ``{"site",
"vid"}``: a visitor id never appears in a request path or query string,
where a proxy's or browser's logs would keep it. ``POST /api/visitors/view``
(admin): the page's view for that visitor (record, consent history,
sessions, the erasure proof if erased); ``POST /api/visitors/lookup``: the
same facts as JSON; ``POST /api/visitors/access``: the visitor's access
document (serve/rights/access.py), as a download; ``POST
/api/visitors/erase``: erases them (serve/rights/erasure.py) and answers the
counts with the page's refreshed view. Every one is in the audit log under
the visitor's digest (:func:`cluster.keys.subject_digest`), never the vid:
the audit log is shared by all visitors and kept longer than their data.

Limits: the page's session links (``/sessions/{site}/{sid}``) carry session
ids, as the Sessions page does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from actors.core.retention import Retention
from cluster.keys import subject_digest
from cluster.sealing import master_keys
from cluster.site_rules import SITE_KEY_RE
from serve.console.audit import record_action
from serve.console.auth import error, json_body
from serve.console.routing import Route
from serve.console.shapes import View, col, table, when
from serve.edge.protocol import is_visitor_id
from serve.rights.access import AccessReader
from serve.rights.erasure import Eraser

NO_STORE = {"Cache-Control": "no-store"}


async def _subject(request: web.Request) -> tuple[str, str] | web.Response:
    """The ``{"site", "vid"}`` a request's body names, or the 400 refusing it."""
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    site, vid = body.get("site"), body.get("vid")
    if not isinstance(site, str) or not SITE_KEY_RE.fullmatch(site):
        return error(400, "bad_request", "a site key and a visitor id ([A-Za-z0-9_-]{8,64})")
    if not isinstance(vid, str) or not is_visitor_id(vid.strip()):
        return error(400, "bad_request", "a site key and a visitor id ([A-Za-z0-9_-]{8,64})")
    return site, vid.strip()


def _retention(request: web.Request, site: str) -> Retention:
    ctx = request.app["ctx"]
    sites = ctx.gateway.sites if ctx.gateway is not None else ctx.sites
    known = sites.get(site)
    return known.retention if known is not None else Retention()


async def lookup(request: web.Request, site: str, vid: str) -> dict[str, Any]:
    """The visitor at a glance (the JSON route and the page's view)."""
    ctx = request.app["ctx"]
    r, keys = ctx.redis, ctx.keys
    digest = subject_digest(site, vid)
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.visitor(site, vid))
    pipe.xrange(keys.visitor_consent(site, vid))
    pipe.zrange(keys.visitor_sessions(site, vid), 0, -1, withscores=True)
    pipe.exists(keys.visitor_profile(site, vid))
    pipe.hgetall(keys.erased(site, digest))
    record, consent, sessions, profile, proof = await pipe.execute()
    text = {k.decode(): v.decode() for k, v in record.items()}
    return {
        "site": site,
        "digest": digest,
        "found": bool(record or consent or sessions or profile),
        "record": text,
        "consent": [
            {"id": eid.decode(), **{k.decode(): v.decode() for k, v in f.items()}}
            for eid, f in consent
        ],
        "sessions": [{"sid": m.decode(), "created": int(s)} for m, s in sessions],
        "profile": bool(profile),
        "erased": {k.decode(): v.decode() for k, v in proof.items()} or None,
    }


async def post_lookup(request: web.Request) -> web.Response:
    """``POST /api/visitors/lookup``: the visitor at a glance (audited)."""
    subject = await _subject(request)
    if isinstance(subject, web.Response):
        return subject
    site, vid = subject
    found = await lookup(request, site, vid)
    await record_action(request, "visitor looked up", site=site, visitor=found["digest"])
    return web.json_response(found, headers=NO_STORE)


async def post_access(request: web.Request) -> web.Response:
    """``POST /api/visitors/access``: the access document, as a file (audited)."""
    subject = await _subject(request)
    if isinstance(subject, web.Response):
        return subject
    site, vid = subject
    ctx = request.app["ctx"]
    doc = await AccessReader(ctx.redis, ctx.keys, master_keys(ctx.settings)).visitor(site, vid)
    digest = subject_digest(site, vid)
    await record_action(
        request, "visitor access document", site=site, visitor=digest, sessions=len(doc["sessions"])
    )
    headers = {
        **NO_STORE,
        "Content-Disposition": f'attachment; filename="visitor-{digest[:12]}.json"',
    }
    return web.json_response(doc, headers=headers)


async def post_erase(request: web.Request) -> web.Response:
    """``POST /api/visitors/erase``: erase the visitor (audited with the counts); the answer
    carries the page's refreshed view (``view``)."""
    subject = await _subject(request)
    if isinstance(subject, web.Response):
        return subject
    site, vid = subject
    ctx = request.app["ctx"]
    forget = ctx.gateway.drop_sessions if ctx.gateway is not None else None
    proof = await Eraser(ctx.redis, ctx.keys, forget).erase_visitor(
        site, vid, _retention(request, site), "operator"
    )
    counts = {k: proof.get(k, 0) for k in ("sessions", "keys", "entries")}
    await record_action(request, "visitor erased", site=site, visitor=proof["digest"], **counts)
    view = await _visitor_view(request, site, vid)
    return web.json_response(
        {"erased": True, "digest": proof["digest"], **counts, "view": view}, headers=NO_STORE
    )


def _form(request: web.Request, site: str = "", vid: str = "") -> dict[str, Any]:
    """The look-up form: it POSTs its fields, so the vid stays out of every URL."""
    ctx = request.app["ctx"]
    sites = sorted((ctx.gateway.sites if ctx.gateway is not None else ctx.sites).keys())
    return {
        "id": "lookup",
        "title": "Look a visitor up",
        "method": "POST",
        "url": "/api/visitors/view",
        "view": True,  # the answer is this page's view for the visitor (console.js renders it)
        "submit": "Look up",
        "fields": [
            {"name": "site", "label": "Site", "type": "select", "options": sites, "value": site},
            {"name": "vid", "label": "Visitor id", "value": vid},
        ],
    }


NOTE = (
    "Look a visitor up by the id their browser holds (localStorage ll:v). Every "
    "look-up, download and erasure is audited under the visitor's digest, never the id."
)


async def visitors_view(request: web.Request) -> View:
    """The Visitors page before a look-up: the form."""
    return {"forms": [_form(request)], "notes": [NOTE]}


async def post_view(request: web.Request) -> web.Response:
    """``POST /api/visitors/view``: the page's view for the visitor the body names (audited)."""
    subject = await _subject(request)
    if isinstance(subject, web.Response):
        return subject
    view = await _visitor_view(request, *subject)
    return web.json_response(view, headers=NO_STORE)


async def _visitor_view(request: web.Request, site: str, vid: str) -> View:
    """The form (filled in), and the visitor's record, consent history and sessions."""
    view: View = {"forms": [_form(request, site, vid)], "notes": [NOTE]}
    found = await lookup(request, site, vid)
    await record_action(request, "visitor looked up", site=site, visitor=found["digest"])
    who = {"site": site, "vid": vid}  # in POST bodies only
    subject = {
        "digest": found["digest"],
        "sessions": len(found["sessions"]),
        "consent_now": found["record"].get("consent", ""),
        "profile": "yes" if found["profile"] else "no",
        "erased": when(int(found["erased"]["ts"])) if found["erased"] else "",
        "_actions": [
            {
                "label": "Download (JSON)",
                "method": "POST",
                "url": "/api/visitors/access",
                "body": who,
                "download": f"visitor-{found['digest'][:12]}.json",
                "done": "Access document downloaded.",
            },
            {
                "label": "Erase",
                "method": "POST",
                "url": "/api/visitors/erase",
                "body": who,
                "confirm": "Erase everything stored about this visitor? This cannot be undone.",
                "done": "Erased: every session, the profile and the consent records.",
            },
        ],
    }
    view["kpis"] = [
        {"label": "Sessions", "value": len(found["sessions"])},
        {"label": "Consent records", "value": len(found["consent"])},
    ]
    view["tables"] = [
        table(
            "visitor",
            "Visitor",
            [
                col("digest", "Digest"),
                col("sessions", "Sessions", num=True),
                col("consent_now", "Consent now"),
                col("profile", "Profile"),
                col("erased", "Erased"),
            ],
            [subject],
            csv=False,
        ),
        table(
            "consent",
            "Consent history",
            [
                col("when", "When"),
                col("consent", "Categories"),
                col("via", "Source"),
                col("policy", "Policy version"),
                col("sid", "Session"),
            ],
            [{**c, "when": when(int(c["ts"]))} for c in found["consent"]],
            csv=False,
        ),
        table(
            "sessions",
            "Sessions",
            [col("sid", "Session", link="href"), col("created", "Started")],
            [
                {
                    "sid": s["sid"],
                    "created": when(s["created"]),
                    "href": f"/sessions/{site}/{s['sid']}",
                }
                for s in found["sessions"]
            ],
            csv=False,
        ),
    ]
    return view


ROUTES = (
    Route("POST", "/api/visitors/view", post_view, "admin"),
    Route("POST", "/api/visitors/lookup", post_lookup, "admin"),
    Route("POST", "/api/visitors/access", post_access, "admin"),
    Route("POST", "/api/visitors/erase", post_erase, "admin"),
)
