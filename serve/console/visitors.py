"""The Visitors page's back end: an admin looks a visitor up, downloads their data, erases them.

``GET /api/visitors/{site}/{vid}`` (admin): what is stored about the visitor
at a glance: their record, consent history, sessions, and the erasure
proof if they were erased. ``GET /api/visitors/{site}/{vid}/access``
(admin): the visitor's access document (serve/rights/access.py), as a
download. ``POST /api/visitors/{site}/{vid}/erase`` (admin): erases them
(serve/rights/erasure.py). Every one is in the audit log under the
visitor's digest (:func:`cluster.keys.subject_digest`), never the vid: the
audit log is shared by all visitors and kept longer than their data.

Limits: the vid is in the request path, so a proxy or access log in front
of the console sees it (the console itself logs no request lines).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from actors.core.retention import Retention
from cluster.keys import subject_digest
from cluster.sealing import master_keys
from cluster.site_rules import SITE_KEY_RE
from serve.console.audit import record_action
from serve.console.auth import error
from serve.console.routing import Route
from serve.console.shapes import View, col, table, when
from serve.edge.protocol import is_visitor_id
from serve.rights.access import AccessReader
from serve.rights.erasure import Eraser

NO_STORE = {"Cache-Control": "no-store"}


def _subject(request: web.Request) -> tuple[str, str] | web.Response:
    site, vid = request.match_info["site"], request.match_info["vid"]
    if not SITE_KEY_RE.fullmatch(site) or not is_visitor_id(vid):
        return error(400, "bad_request", "a site key and a visitor id ([A-Za-z0-9_-]{8,64})")
    return site, vid


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


async def get_visitor(request: web.Request) -> web.Response:
    """``GET /api/visitors/{site}/{vid}``: the visitor at a glance (audited)."""
    subject = _subject(request)
    if isinstance(subject, web.Response):
        return subject
    site, vid = subject
    found = await lookup(request, site, vid)
    await record_action(request, "visitor looked up", site=site, visitor=found["digest"])
    return web.json_response(found, headers=NO_STORE)


async def get_access(request: web.Request) -> web.Response:
    """``GET /api/visitors/{site}/{vid}/access``: the access document, as a file (audited)."""
    subject = _subject(request)
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
    """``POST /api/visitors/{site}/{vid}/erase``: erase the visitor (audited with the counts)."""
    subject = _subject(request)
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
    return web.json_response({"erased": True, "digest": proof["digest"], **counts})


async def visitors_view(request: web.Request) -> View:
    """The Visitors page: a lookup form; for a visitor, their consent history and sessions."""
    ctx = request.app["ctx"]
    sites = sorted((ctx.gateway.sites if ctx.gateway is not None else ctx.sites).keys())
    site, vid = request.query.get("site", ""), request.query.get("vid", "").strip()
    view: View = {
        "filters": [
            {"name": "site", "label": "Site", "options": [[s, s] for s in sites]},
            {"name": "vid", "label": "Visitor id", "placeholder": "v-…"},
        ],
        "notes": [
            "Look a visitor up by the id their browser holds (localStorage ll:v). Every "
            "look-up, download and erasure is audited under the visitor's digest, never the id."
        ],
    }
    if not vid:
        return view
    if not SITE_KEY_RE.fullmatch(site) or not is_visitor_id(vid):
        raise ValueError("a site and a visitor id of 8 to 64 characters of [A-Za-z0-9_-]")
    found = await lookup(request, site, vid)
    await record_action(request, "visitor looked up", site=site, visitor=found["digest"])
    base = f"/api/visitors/{site}/{vid}"
    subject = {
        "digest": found["digest"],
        "sessions": len(found["sessions"]),
        "consent_now": found["record"].get("consent", ""),
        "profile": "yes" if found["profile"] else "no",
        "erased": when(int(found["erased"]["ts"])) if found["erased"] else "",
        "download": "Download (JSON)",
        "href": f"{base}/access",
        "_actions": [
            {
                "label": "Erase",
                "method": "POST",
                "url": f"{base}/erase",
                "confirm": "Erase everything stored about this visitor? This cannot be undone.",
                "done": "Erased: every session, the profile and the consent records.",
            }
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
                col("download", "Access document", link="href"),
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
    Route("GET", "/api/visitors/{site}/{vid}", get_visitor, "admin"),
    Route("GET", "/api/visitors/{site}/{vid}/access", get_access, "admin"),
    Route("POST", "/api/visitors/{site}/{vid}/erase", post_erase, "admin"),
)
