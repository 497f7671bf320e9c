"""Sign-in, roles and CSRF for every console request, checked here on the server.

The middleware finds the caller (a bearer API token, or a session cookie),
looks up the role the matched route needs (:class:`serve.console.app.Route`),
and refuses what the caller may not do: 401 (``unauthenticated``) or a
redirect to the sign-in page for a page; 403 (``forbidden``) for a role
that does not grant the route, a read-only token on a state-changing call,
or a state-changing call from a browser session without its CSRF token
(``csrf``). Sign-in itself is protected by a double-submit cookie, since
there is no session yet.

Cookies are HttpOnly, SameSite=Strict and Secure: browsers keep Secure
cookies from ``http://localhost`` and ``http://127.0.0.1`` (secure
contexts), so a console on loopback works without TLS; anywhere else it
needs HTTPS (issue #23's production mode).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from serve.console.accounts import ABSOLUTE_S, AccountError, Accounts, Operator
from serve.console.audit import client_address, record_action
from serve.headers import security_headers as shared_security_headers

COOKIE = "ll_console"
LOGIN_CSRF_COOKIE = "ll_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Pages and their data are the operator's and may hold session ids: never cached.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"code": code, "detail": detail}, status=status)


async def json_body(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, or the 400 to return when the body is not one."""
    try:
        body = await request.json()
    except ValueError:
        return error(400, "bad_json", "the body must be a JSON object")
    if not isinstance(body, dict):
        return error(400, "bad_json", "the body must be a JSON object")
    return body


def _wants_page(request: web.Request) -> bool:
    return request.method == "GET" and not request.path.startswith("/api/")


def _same_origin(request: web.Request) -> bool:
    """A browser's state-changing request must come from the console's own origin."""
    origin = request.headers.get("Origin")
    if origin is None:  # not every browser sends it on same-origin requests; CSRF decides
        return True
    parts = urlsplit(origin)
    return parts.netloc == request.host


# The console's headers on every response (serve/headers.py, shared with the gateway).
security_headers = shared_security_headers(SECURITY_HEADERS)


@web.middleware
async def authorize(request: web.Request, handler):
    """Find the caller, then allow or refuse the matched route (see the module's docstring)."""
    roles = request.app["route_roles"]
    route = request.match_info.route
    method = "GET" if request.method == "HEAD" else request.method  # HEAD runs the GET handler
    # A route not in the table is a 404/405 of aiohttp's own: nothing to protect.
    needed = roles.get((method, route.resource.canonical)) if route.resource else None
    accounts: Accounts = request.app["accounts"]
    op, csrf = await _caller(request, accounts)
    if op is not None:
        request["operator"] = op
        request["csrf"] = csrf
    if needed is None:
        return await handler(request)
    if op is None:
        if _wants_page(request):
            raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")
        return error(401, "unauthenticated", "sign in, or send an API token as a bearer")
    if not op.may(needed):
        return error(403, "forbidden", f"this needs the {needed} role; you are {op.role}")
    if request.method in UNSAFE:
        if op.via == "token":
            if op.scope != "write":
                return error(403, "forbidden", "this token is read-only")
        else:
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent and request.content_type == "application/x-www-form-urlencoded":
                sent = str((await request.post()).get("csrf", ""))
            if not (sent and csrf and hmac.compare_digest(sent, csrf)) or not _same_origin(request):
                return error(403, "csrf", "missing or wrong CSRF token")
    return await handler(request)


async def _caller(request: web.Request, accounts: Accounts) -> tuple[Operator | None, str]:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return await accounts.token(auth[7:].strip()), ""
    cookie = request.cookies.get(COOKIE)
    if cookie:
        found = await accounts.session(cookie)
        if found is not None:
            return found
    return None, ""


def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )


def _safe_next(target: str) -> str:
    """Only a path on this console: never an open redirect to another host."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


async def login_page(request: web.Request) -> web.Response:
    """``GET /login``: the sign-in form, with a fresh double-submit CSRF token."""
    from serve.console.pages import render_login

    token = secrets.token_urlsafe(24)
    response = web.Response(
        text=render_login(token, _safe_next(request.query.get("next", "/")), request.query),
        content_type="text/html",
    )
    _cookie(response, LOGIN_CSRF_COOKIE, token, 600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /login``: name and password; a session cookie on success, audited either way."""
    form = await request.post()
    sent, expected = str(form.get("csrf", "")), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not (sent and expected and hmac.compare_digest(sent, expected)):
        return error(403, "csrf", "missing or wrong CSRF token: reload the sign-in page")
    name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))
    accounts: Accounts = request.app["accounts"]
    address = client_address(request)
    if await accounts.limited(address, name):
        await record_action(request, "sign-in refused (rate limit)", who=name)
        return error(429, "rate_limited", "too many failed sign-ins: try again later")
    op = await accounts.authenticate(name, password, address)
    if op is None:
        await record_action(request, "sign-in failed", who=name)
        raise web.HTTPFound("/login?failed=1&next=" + quote(str(form.get("next", "/")), safe=""))
    cookie, _csrf = await accounts.start_session(op)
    request["operator"] = op
    await record_action(request, "sign-in")
    response = web.HTTPFound(_safe_next(str(form.get("next", "/"))))
    _cookie(response, COOKIE, cookie, ABSOLUTE_S)
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /logout`` (CSRF-checked by the middleware): the session ends on the server."""
    cookie = request.cookies.get(COOKIE)
    if cookie:
        await request.app["accounts"].end_session(cookie)
    await record_action(request, "sign-out")
    response = web.HTTPFound("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def me(request: web.Request) -> web.Response:
    """``GET /api/me``: who is signed in, their role, and the CSRF token pages send back."""
    op: Operator = request["operator"]
    return web.json_response(
        {"name": op.name, "role": op.role, "scope": op.scope, "csrf": request.get("csrf", "")}
    )


def account_error(exc: AccountError) -> web.Response:
    return error(400, exc.code, str(exc))
