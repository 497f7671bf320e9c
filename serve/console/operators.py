"""Operator accounts, API tokens and the audit log in the console (admin), audited.

Every change goes through :class:`serve.console.accounts.Accounts`, the
same code as ``lifeline operators``; every change is appended to the audit
log. The last admin cannot be removed or demoted: nobody could manage the
console afterwards.
"""

from __future__ import annotations

from aiohttp import web

from serve.console import audit
from serve.console.accounts import AccountError, Accounts, Operator
from serve.console.auth import account_error, error, json_body
from serve.console.routing import Route


async def list_operators(request: web.Request) -> web.Response:
    return web.json_response(await request.app["accounts"].list())


async def add_operator(request: web.Request) -> web.Response:
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    accounts: Accounts = request.app["accounts"]
    name, role = str(body.get("name", "")), str(body.get("role", ""))
    try:
        await accounts.add(name, role, str(body.get("password", "")))
    except AccountError as exc:
        return account_error(exc)
    await audit.record_action(request, "operator added", operator=name, role=role)
    return web.json_response({"name": name, "role": role}, status=201)


async def change_operator(request: web.Request) -> web.Response:
    """``POST /api/operators/{name}``: a new role and/or password."""
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    accounts: Accounts = request.app["accounts"]
    name = request.match_info["name"]
    try:
        if "role" in body:
            role = str(body["role"])
            if role != "admin" and await _last_admin(accounts, name):
                return error(409, "last_admin", "the last admin cannot be demoted")
            await accounts.set_role(name, role)
            await audit.record_action(request, "operator role changed", operator=name, role=role)
        if "password" in body:
            await accounts.set_password(name, str(body["password"]))
            await audit.record_action(request, "operator password changed", operator=name)
    except AccountError as exc:
        return account_error(exc)
    return web.json_response({"name": name})


async def remove_operator(request: web.Request) -> web.Response:
    accounts: Accounts = request.app["accounts"]
    name = request.match_info["name"]
    if await _last_admin(accounts, name):
        return error(409, "last_admin", "the last admin cannot be removed")
    try:
        await accounts.remove(name)
    except AccountError as exc:
        return account_error(exc)
    await audit.record_action(request, "operator removed", operator=name)
    return web.json_response({"removed": name})


async def _last_admin(accounts: Accounts, name: str) -> bool:
    user = await accounts.get(name)
    return user is not None and user["role"] == "admin" and await accounts.admins() <= 1


async def issue_token(request: web.Request) -> web.Response:
    """``POST /api/tokens``: a token for yourself (any role), or for another operator (admin).

    The token is in the reply once; only its digest is stored.
    """
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    op: Operator = request["operator"]
    name = str(body.get("name") or op.name)
    if name != op.name and not op.may("admin"):
        return error(403, "forbidden", "only an admin issues tokens for others")
    try:
        token = await request.app["accounts"].issue_token(
            name,
            role=body.get("role") or None,
            scope=str(body.get("scope", "read")),
            ttl_days=int(body.get("ttl_days", 90)),
        )
    except (AccountError, ValueError, TypeError) as exc:
        code = exc.code if isinstance(exc, AccountError) else "bad_request"
        return error(400, code, str(exc))
    await audit.record_action(
        request, "token issued", operator=name, scope=body.get("scope", "read")
    )
    return web.json_response({"token": token, "name": name}, status=201)


async def read_audit(request: web.Request) -> web.Response:
    ctx = request.app["ctx"]
    try:
        count = max(1, min(1000, int(request.query.get("count", "200"))))
    except ValueError:
        return error(400, "bad_request", "count must be a number")
    before = request.query.get("before", "+")
    return web.json_response(await audit.read(ctx.redis, ctx.keys.audit, count, before))


ROUTES = (
    Route("GET", "/api/operators", list_operators, "admin"),
    Route("POST", "/api/operators", add_operator, "admin"),
    Route("POST", "/api/operators/{name}", change_operator, "admin"),
    Route("DELETE", "/api/operators/{name}", remove_operator, "admin"),
    Route("POST", "/api/tokens", issue_token, "viewer"),
    Route("GET", "/api/audit", read_audit, "admin"),
)
