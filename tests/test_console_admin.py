"""The console's Models and Sites back ends: registry, guarded promotion, live site rules.

Handlers run in an aiohttp test server built from their ``ROUTES`` and a
real :class:`ConsoleContext` over Redis; a tiny middleware stands in for
the sign-in (the route's role is checked by the console's own middleware,
tested in test_console_auth.py). The stack tests use the running gateway
and shards: an edit or a promotion must reach them without a restart.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis
import websockets
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from actors.core.sites import load_sites
from cluster.config import PACKAGE_ROOT, Settings
from cluster.keys import Keys, subject_digest
from cluster.redis_client import redis_client
from serve.console import audit, models, sites, views
from serve.console.accounts import Operator
from serve.console.context import ConsoleContext
from serve.dev.pyclient import LifelineClient
from training.evaluate import report_plots
from training.registry import ModelRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")
BUNDLED = PACKAGE_ROOT / "actors" / "model" / "bundled"


def bundled() -> tuple[bytes, dict]:
    """The shipped model: a real model of this code's feature schema."""
    return (BUNDLED / "bundled.ubj").read_bytes(), json.loads(
        (BUNDLED / "bundled.json").read_text()
    )


@asynccontextmanager
async def console(
    redis_url: str, prefix: str, routes: list | None = None
) -> AsyncIterator[tuple[TestClient, ConsoleContext]]:
    """A test client over the Models and Sites routes (or ``routes``), signed in as an admin."""
    ctx = ConsoleContext(Settings(redis_url=redis_url, prefix=prefix), redis_url, Keys(prefix))

    @web.middleware
    async def as_admin(request: web.Request, handler):
        request["operator"] = Operator("test-admin", "admin")
        return await handler(request)

    app = web.Application(middlewares=[as_admin])
    app["ctx"] = ctx
    for route in routes if routes is not None else models.ROUTES + sites.ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    async with TestClient(TestServer(app)) as client:
        yield client, ctx
    await ctx.redis.aclose()


async def actions(ctx: ConsoleContext) -> list[dict]:
    return await audit.read(ctx.redis, ctx.keys.audit, 100)


async def test_an_exports_audit_entry_keeps_no_session_id(redis_url: str, prefix: str) -> None:
    """The Sessions page's sid filter (a prefix, or a whole id) is audited by digest only."""
    sid = "s-" + uuid.uuid4().hex
    async with console(redis_url, prefix, views.routes()) as (client, ctx):
        resp = await client.get("/api/export/sessions/sessions.csv?site=nowhere")
        assert resp.status == 400  # a bad filter is said, not a 500
        ctx.sites = load_sites(ctx.settings.sites_file)
        resp = await client.get(f"/api/export/sessions/sessions.csv?site=demo&sid={sid}")
        assert resp.status == 200, await resp.text()
        (entry,) = await actions(ctx)
    assert entry["action"] == "export" and entry["detail"]["table"] == "sessions"
    assert entry["detail"]["query"] == {
        "site": "demo",
        "sid": f"{len(sid)} chars, digest {subject_digest('demo', sid)}",
    }
    assert sid not in json.dumps(entry)


# -- models --------------------------------------------------------------------------------------


async def test_promotion_guard_force_rollback_and_refusals(redis_url, prefix):
    raw, meta = bundled()
    reg = ModelRegistry(redis.Redis.from_url(redis_url), prefix)
    a, b = reg.save(raw, meta), reg.save(raw, meta)
    other = reg.save(raw, {**meta, "feature_schema": "another-layout"})
    async with console(redis_url, prefix) as (http, ctx):
        # Nothing live: nothing to compare with, the guard passes.
        r = await http.post(f"/api/models/{a}/promote")
        body = await r.json()
        assert r.status == 200, body
        assert (body["decision"], body["verdict"], reg.live()) == ("promoted", "no_live_model", a)

        # A live model and no live event log to measure on: refused, recorded, nothing moves.
        r = await http.post(f"/api/models/{b}/promote", json={})
        body = await r.json()
        assert r.status == 409 and body["code"] == "refused" and body["verdict"] == "not_comparable"
        assert "no held-back rows" in body["detail"]
        assert reg.live() == a and reg.history(1)[0]["refused"] is True

        r = await http.post(f"/api/models/{b}/promote", json={"force": True})
        assert r.status == 200 and (await r.json())["decision"] == "forced"
        assert reg.live() == b

        # Roll back: the version live before b, through the same guard.
        r = await http.post("/api/models/rollback", json={})
        assert r.status == 409 and (await r.json())["version"] == a and reg.live() == b
        r = await http.post("/api/models/rollback", json={"force": True})
        body = await r.json()
        assert r.status == 200 and body["version"] == a and body["previous"] == b
        assert reg.live() == a

        # Another feature schema: refused before anything is measured.
        r = await http.post(f"/api/models/{other}/promote")
        assert r.status == 409 and (await r.json())["code"] == "schema_mismatch"

        # Bad input: 400 with a code, nothing changes.
        for payload in ({"force": "yes"}, {"forse": True}, {"test_frac": 2}, [1]):
            r = await http.post(f"/api/models/{b}/promote", json=payload)
            assert r.status == 400 and {"code", "detail"} <= set(await r.json())
        r = await http.post("/api/models/v9999/promote")
        assert r.status == 404 and (await r.json())["code"] == "unknown_version"
        assert reg.live() == a

        listing = await (await http.get("/api/models")).json()
        assert listing["live"] == a and listing["rollback_to"] == b
        assert [v["version"] for v in listing["versions"]] == [a, b, other]
        assert [v["schema_ok"] for v in listing["versions"]] == [True, True, False]
        assert listing["versions"][0]["metrics"]["xgboost"]["roc_auc"] > 0.5
        newest, refused = listing["history"][:2]  # the roll-back, and the refused one before it
        assert (newest["version"], newest["previous"], newest["check"]["decision"]) == (
            a,
            b,
            "forced",
        )
        assert refused["refused"] is True and refused["version"] == a

        done = [(e["action"], e["detail"].get("version")) for e in await actions(ctx)][::-1]
        assert done == [
            ("model promoted", a),
            ("model promoted refused", b),
            ("model promoted", b),
            ("model rolled back refused", a),
            ("model rolled back", a),
            ("model promoted refused", other),
        ]
        assert all(e["who"] == "test-admin" for e in await actions(ctx))


async def test_a_versions_training_plots_are_served(redis_url, prefix):
    raw, meta = bundled()
    reg = ModelRegistry(redis.Redis.from_url(redis_url), prefix)
    version = reg.save(raw, meta)
    plots = report_plots(PACKAGE_ROOT / "reports" / "sim" / "report.md")
    assert "roc.png" in plots
    reg.save_plots(version, plots)
    async with console(redis_url, prefix) as (http, _ctx):
        listing = await (await http.get("/api/models")).json()
        assert listing["versions"][0]["plots"] == sorted(plots)
        r = await http.get(f"/api/models/{version}/plots/roc.png")
        assert r.status == 200 and r.content_type == "image/png"
        assert await r.read() == plots["roc.png"]
        assert (await http.get(f"/api/models/{version}/plots/nope.png")).status == 404
        assert (await http.get(f"/api/models/{version}/plots/report.md")).status == 400
    reg.delete(version)
    assert reg.plot(version, "roc.png") is None


async def test_a_promotion_through_the_route_reaches_the_shards_and_the_audit_log(any_stack):
    stack = any_stack
    raw, meta = bundled()
    reg = ModelRegistry(redis_client(stack.redis_url), stack.prefix)
    before = reg.live()
    reg.r.delete(reg.k_live)  # no live model: the guard has nothing to compare with
    version = reg.save(raw, meta)
    try:
        async with console(stack.redis_url, stack.prefix) as (http, ctx):
            r = await http.post(f"/api/models/{version}/promote", json={"force": False})
            assert r.status == 200 and (await r.json())["decision"] == "promoted"
            infos = await asyncio.gather(
                *(sh.wait_model_decision.remote(version) for sh in stack.shards)
            )
            assert [i["model"] for i in infos] == [version] * len(stack.shards)
            entry = next(e for e in await actions(ctx) if e["detail"].get("version") == version)
            assert entry["action"] == "model promoted" and entry["who"] == "test-admin"
            assert entry["detail"]["decision"] == "promoted" and entry["detail"]["force"] is False
    finally:
        if before is not None:
            reg.promote(before)


# -- sites ---------------------------------------------------------------------------------------


async def test_invalid_site_tables_are_400_and_change_nothing(redis_url, prefix):
    bad = {
        "shop": {"origins": ["https://*shop.com"]},  # a '*' inside a label
        "shop2": {"policy": {"min_signals": "three"}},  # a string where a count belongs
        "shop3": {"policy": {"holdout": 1.5}},
        "shop4": {"detectors": {"rage_clicks": 2.5}},
        "shop5": {"colour": "blue"},  # unknown key
        "shop6": {"goals": ["purchase"]},  # an event type is no custom goal
        "a:b": {},  # a key that would split session ids
    }
    async with console(redis_url, prefix) as (http, ctx):
        for key, table in bad.items():
            r = await http.put(f"/api/sites/{key}", json=table)
            body = await r.json()
            assert r.status == 400 and body["code"] == "invalid_site", (key, body)
            assert key in body["detail"] or "site key" in body["detail"]
        r = await http.put("/api/sites/shop", data=b"not json")
        assert r.status == 400 and (await r.json())["code"] == "bad_json"
        r = await http.put("/api/sites/shop", json=["a list"])
        assert r.status == 400 and (await r.json())["code"] == "bad_json"
        assert await ctx.redis.exists(ctx.keys.sites("overrides"), ctx.keys.sites("version")) == 0
        assert await actions(ctx) == []
        assert (await http.delete("/api/sites/shop")).status == 404


async def test_sites_list_where_each_value_comes_from_and_edits_are_audited(redis_url, prefix):
    async with console(redis_url, prefix) as (http, ctx):
        listing = await (await http.get("/api/sites")).json()
        demo = next(s for s in listing["sites"] if s["key"] == "demo")
        assert listing["version"] == 0 and demo["source"] == "file"
        assert demo["policy"]["min_signals"] == {"value": 1, "from": "file"}
        assert demo["policy"]["min_events"] == {"value": 3, "from": "default"}

        table = {"origins": ["https://*.shop.example"], "policy": {"min_signals": 2}}
        r = await http.put("/api/sites/demo", json=table)
        assert r.status == 200 and (await r.json())["version"] == 1
        listing = await (await http.get("/api/sites")).json()
        demo = next(s for s in listing["sites"] if s["key"] == "demo")
        assert demo["source"] == "override" and demo["origins"]["value"] == table["origins"]
        assert demo["policy"]["min_signals"] == {"value": 2, "from": "override"}
        assert demo["goals"] == {"value": [], "from": "default"}  # the whole table is replaced

        r = await http.delete("/api/sites/demo")
        assert r.status == 200 and (await r.json())["version"] == 2
        listing = await (await http.get("/api/sites")).json()
        assert next(s for s in listing["sites"] if s["key"] == "demo")["source"] == "file"

        edit, revert = (await actions(ctx))[::-1]
        assert edit["action"] == "site edited" and edit["detail"]["after"] == table
        assert edit["detail"]["before"]["policy"]["min_signals"] == 1  # the file's table
        assert revert["action"] == "site override removed"
        assert revert["detail"]["before"] == table and revert["detail"]["version"] == 2


async def hello(stack, site: str, origin: str) -> str:
    """``welcome`` or ``refused``: a real socket's handshake and hello from ``origin``."""
    client = LifelineClient(stack.ws_url, site, uuid.uuid4().hex[:16], origin)
    try:
        welcome = await client.connect()
    except websockets.exceptions.InvalidStatus as exc:
        assert exc.response.status_code == 403
        return "refused"
    await client.close()
    return welcome["t"]


async def test_an_origin_edit_is_honoured_by_the_running_gateway(any_stack):
    stack = any_stack
    key = f"adm-{uuid.uuid4().hex[:8]}"  # a site of its own: the stack is shared
    a, b = "https://a.admin-test.example", "https://b.admin-test.example"
    async with console(stack.redis_url, stack.prefix) as (http, ctx):
        try:
            assert await hello(stack, key, a) == "refused"  # no such site yet
            r = await http.put(f"/api/sites/{key}", json={"origins": [a]})
            await stack.gateway.site_rules.wait_version((await r.json())["version"])
            assert await hello(stack, key, a) == "welcome"
            assert await hello(stack, key, b) == "refused"

            r = await http.put(f"/api/sites/{key}", json={"origins": [b]})
            await stack.gateway.site_rules.wait_version((await r.json())["version"])
            assert await hello(stack, key, b) == "welcome"
            assert await hello(stack, key, a) == "refused"
        finally:
            r = await http.delete(f"/api/sites/{key}")
        await stack.gateway.site_rules.wait_version((await r.json())["version"])
        assert await hello(stack, key, b) == "refused"


async def test_a_policy_edit_reaches_the_shards(any_stack):
    stack = any_stack
    key = f"adm-{uuid.uuid4().hex[:8]}"
    async with console(stack.redis_url, stack.prefix) as (http, _ctx):
        try:
            for min_signals, holdout in ((2, 0.2), (5, 0.5)):
                table = {"policy": {"min_signals": min_signals, "holdout": holdout}}
                r = await http.put(f"/api/sites/{key}", json=table)
                version = (await r.json())["version"]
                infos = await asyncio.gather(
                    *(sh.wait_sites.remote(version) for sh in stack.shards)
                )
                assert all(i["sites_version"] >= version for i in infos)
                rules = await asyncio.gather(*(sh.site_rules_of.remote(key) for sh in stack.shards))
                assert {(x["policy"]["min_signals"], x["policy"]["holdout"]) for x in rules} == {
                    (min_signals, holdout)
                }
        finally:
            await http.delete(f"/api/sites/{key}")


async def test_report_plots_are_the_reports_own(tmp_path: Path):
    (tmp_path / "roc.png").write_bytes(b"\x89PNG roc")
    (tmp_path / "stale.png").write_bytes(b"\x89PNG from an earlier run")
    (tmp_path / "report.md").write_text("# r\n\n## Plots\n\n![roc](roc.png)\n![gone](gone.png)\n")
    assert report_plots(tmp_path / "report.md") == {"roc.png": b"\x89PNG roc"}
