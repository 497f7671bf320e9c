"""The console's sign-in, roles, CSRF, tokens, rate limit and audit log, over real HTTP.

The stack's console (its own port) and Redis; requests from aiohttp's
client with its own cookie jar, as a browser would send them.
"""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest

from serve.console import audit
from serve.console.accounts import MAX_FAILS_PER_NAME, Accounts, check_password, hash_password

pytestmark = pytest.mark.asyncio(loop_scope="session")
PASSWORD = "correct horse battery"


def jar(stack) -> aiohttp.CookieJar:
    """A cookie jar that, as browsers do, keeps Secure cookies of a loopback http origin."""
    return aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=stack.console_url)


def accounts(stack) -> Accounts:
    from cluster.keys import Keys

    return Accounts(stack.gateway.redis, Keys(stack.prefix))


async def new_operator(stack, role: str) -> str:
    name = f"{role}-{uuid.uuid4().hex[:6]}"
    await accounts(stack).add(name, role, PASSWORD)
    return name


async def sign_in(stack, name: str, password: str = PASSWORD) -> aiohttp.ClientSession:
    """A client signed in through the form, as a browser does (cookie jar kept)."""
    http = aiohttp.ClientSession(base_url=stack.console_url, cookie_jar=jar(stack))
    form = await (await http.get("/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)[1]
    r = await http.post(
        "/login",
        data={"name": name, "password": password, "csrf": csrf, "next": "/"},
        allow_redirects=False,
    )
    assert r.status == 302, await r.text()
    return http


async def csrf_of(http: aiohttp.ClientSession) -> str:
    return (await (await http.get("/api/me")).json())["csrf"]


def test_passwords_are_stored_with_scrypt_and_checked():
    stored = hash_password(PASSWORD)
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    assert check_password(PASSWORD, stored) and not check_password(PASSWORD + "x", stored)


async def test_anonymous_gets_401_for_api_and_a_sign_in_redirect_for_pages(any_stack):
    async with aiohttp.ClientSession(base_url=any_stack.console_url) as http:
        r = await http.get("/api/view/audit")
        assert r.status == 401 and (await r.json())["code"] == "unauthenticated"
        r = await http.get("/sessions", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"].startswith("/login?next=")
        r = await http.get("/healthz")  # a load balancer needs no account
        assert r.status == 200 and set(await r.json()) == {"ok", "checks"}


async def test_sign_in_sets_a_secure_httponly_strict_cookie_and_headers(any_stack):
    name = await new_operator(any_stack, "viewer")
    http = aiohttp.ClientSession(base_url=any_stack.console_url, cookie_jar=jar(any_stack))
    form = await http.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', await form.text())[1]
    r = await http.post(
        "/login", data={"name": name, "password": PASSWORD, "csrf": csrf}, allow_redirects=False
    )
    cookie = r.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith("ll_console="))
    for attr in ("Secure", "HttpOnly", "SameSite=Strict"):
        assert attr in session_cookie, session_cookie
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"
    await http.close()


async def test_sign_in_without_the_form_token_is_refused(any_stack):
    name = await new_operator(any_stack, "admin")
    async with aiohttp.ClientSession(base_url=any_stack.console_url) as http:
        r = await http.post("/login", data={"name": name, "password": PASSWORD})
        assert r.status == 403 and (await r.json())["code"] == "csrf"


async def test_a_viewer_cannot_reach_analyst_or_admin_pages_or_their_api(any_stack):
    http = await sign_in(any_stack, await new_operator(any_stack, "viewer"))
    for path in ("/api/view/audit", "/api/operators", "/api/export/audit/audit.csv"):
        r = await http.get(path)
        assert r.status == 403 and (await r.json())["code"] == "forbidden", path
    r = await http.get("/operators")
    assert r.status == 403
    r = await http.post(
        "/api/operators",
        json={"name": "mallory", "role": "admin", "password": PASSWORD},
        headers={"X-CSRF-Token": await csrf_of(http)},
    )
    assert r.status == 403
    assert await accounts(any_stack).get("mallory") is None
    assert (await http.get("/api/me")).status == 200  # signed in, just not allowed
    await http.close()


async def test_a_state_change_without_its_csrf_token_is_refused(any_stack):
    http = await sign_in(any_stack, await new_operator(any_stack, "admin"))
    new = f"n-{uuid.uuid4().hex[:6]}"
    body = {"name": new, "role": "viewer", "password": PASSWORD}
    r = await http.post("/api/operators", json=body)
    assert r.status == 403 and (await r.json())["code"] == "csrf"
    r = await http.post("/api/operators", json=body, headers={"X-CSRF-Token": "guess"})
    assert r.status == 403
    assert await accounts(any_stack).get(new) is None
    r = await http.post("/api/operators", json=body, headers={"X-CSRF-Token": await csrf_of(http)})
    assert r.status == 201, await r.text()
    assert (await accounts(any_stack).get(new))["role"] == "viewer"
    await http.close()


async def test_tokens_act_with_their_role_and_scope(any_stack):
    acc = accounts(any_stack)
    admin = await new_operator(any_stack, "admin")
    read = await acc.issue_token(admin, scope="read")
    viewer_token = await acc.issue_token(admin, role="viewer", scope="write")
    async with aiohttp.ClientSession(base_url=any_stack.console_url) as http:
        auth = {"Authorization": f"Bearer {read}"}
        assert (await http.get("/api/operators", headers=auth)).status == 200
        r = await http.post("/api/tokens", json={}, headers=auth)
        assert r.status == 403 and "read-only" in (await r.json())["detail"]
        r = await http.get("/api/operators", headers={"Authorization": f"Bearer {viewer_token}"})
        assert r.status == 403
        r = await http.get("/api/me", headers={"Authorization": "Bearer llt_forged"})
        assert r.status == 401
    with pytest.raises(Exception, match="cannot have role"):
        await acc.issue_token(await new_operator(any_stack, "viewer"), role="admin")


async def test_failed_sign_ins_are_limited_and_audited(any_stack):
    name = await new_operator(any_stack, "viewer")
    async with aiohttp.ClientSession(
        base_url=any_stack.console_url, cookie_jar=jar(any_stack)
    ) as http:
        statuses = []
        for _ in range(MAX_FAILS_PER_NAME + 1):
            form = await (await http.get("/login")).text()
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)[1]
            r = await http.post(
                "/login",
                data={"name": name, "password": "wrong password!", "csrf": csrf},
                allow_redirects=False,
            )
            statuses.append(r.status)
        assert statuses == [302] * MAX_FAILS_PER_NAME + [429]
        # Even the right password waits out the window: the limit is checked first.
        form = await (await http.get("/login")).text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)[1]
        r = await http.post("/login", data={"name": name, "password": PASSWORD, "csrf": csrf})
        assert r.status == 429
    ctx_redis = accounts(any_stack).redis
    from cluster.keys import Keys

    entries = await audit.read(ctx_redis, Keys(any_stack.prefix).audit, 50)
    mine = [e["action"] for e in entries if e["who"] == name]
    assert mine.count("sign-in failed") == MAX_FAILS_PER_NAME
    assert "sign-in refused (rate limit)" in mine


async def test_sign_out_ends_the_session_on_the_server(any_stack):
    http = await sign_in(any_stack, await new_operator(any_stack, "viewer"))
    cookie = next(c for c in http.cookie_jar if c.key == "ll_console").value
    r = await http.post("/logout", data={"csrf": await csrf_of(http)}, allow_redirects=False)
    assert r.status == 302
    assert await accounts(any_stack).session(cookie) is None
    await http.close()


async def test_the_last_admin_cannot_be_removed_or_demoted(any_stack):
    acc = accounts(any_stack)
    for o in await acc.list():  # other tests' admins: this test needs exactly one
        if o["role"] == "admin":
            await acc.remove(o["name"])
    admin = await new_operator(any_stack, "admin")
    other = await new_operator(any_stack, "viewer")
    http = await sign_in(any_stack, admin)
    h = {"X-CSRF-Token": await csrf_of(http)}
    r = await http.post(f"/api/operators/{admin}", json={"role": "viewer"}, headers=h)
    assert r.status == 409 and (await r.json())["code"] == "last_admin"
    r = await http.post(f"/api/operators/{other}", json={"role": "analyst"}, headers=h)
    assert r.status == 200 and (await acc.get(other))["role"] == "analyst"
    r = await http.get("/api/audit")
    actions = [(e["who"], e["action"], e["detail"].get("operator")) for e in await r.json()]
    assert (admin, "operator role changed", other) in actions
    assert (admin, "sign-in", None) in actions
    await http.close()
