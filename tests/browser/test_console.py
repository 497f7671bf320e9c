"""The operator console in a real headless Chromium against a running stack.

Sign-in through the form, each page rendering the stack's real data, the
Live page updating itself, roles enforced on pages and their API calls.
Screenshots of each page go to docs/screenshots/console-*.png (made by
``LIFELINE_SCREENSHOTS=1``; the README shows two of them).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

import pytest
import pytest_asyncio

from cluster.keys import Keys
from serve.console.accounts import Accounts

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.browser]
PASSWORD = "console test password"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SCREEN = {"width": 1366, "height": 860}  # a laptop screen


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def traffic(lifeline_stack):
    """Simulated visitors who answer help (loadtests/outcome_traffic.py) through the real stack."""
    from outcome_traffic import drive

    args = argparse.Namespace(
        ws=lifeline_stack.ws_url,
        site="demo",
        origin="http://127.0.0.1:8080",
        visitors=120,
        concurrency=30,
        seed=7,
        accept=0.3,
        dismiss=0.3,
        spread_hours=0.0,
        tag=uuid.uuid4().hex[:6],
    )
    counts = await drive(args)
    assert counts["intervention"] > 0 and counts["error"] == 0, counts
    yield counts
    # The stack is shared: later tests that train on its whole event log get their own rows.
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(lifeline_stack.redis_url)
    async for key in r.scan_iter(match=f"{lifeline_stack.prefix}*oc-*-{args.tag}*", count=1000):
        await r.delete(key)
    await r.aclose()


async def operator(stack, role: str) -> str:
    import redis.asyncio as aioredis

    name = f"{role}-{uuid.uuid4().hex[:6]}"
    await Accounts(aioredis.Redis.from_url(stack.redis_url), Keys(stack.prefix)).add(
        name, role, PASSWORD
    )
    return name


async def signed_in(browser, stack, role: str, viewport=None):
    """A browser context signed in through the sign-in form as a new operator of ``role``."""
    context = await browser.new_context(viewport=viewport or SCREEN)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{stack.console_url}/")
    assert "/login" in page.url  # not signed in: sent to the sign-in form
    await page.fill("#name", await operator(stack, role))
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{stack.console_url}/")
    return context, page, errors


async def shot(page, name: str) -> None:
    if os.environ.get("LIFELINE_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"console-{name}.png"), full_page=True)


async def test_sign_in_and_the_live_page_updates_itself(browser, lifeline_stack, traffic):
    context, page, errors = await signed_in(browser, lifeline_stack, "viewer")
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies["ll_console"]["httpOnly"] and cookies["ll_console"]["secure"]
    assert cookies["ll_console"]["sameSite"] == "Strict"
    await page.wait_for_selector("main[data-loaded] .kpi")
    labels = await page.locator(".kpi .label").all_text_contents()
    assert "Sessions active now" in labels and "Live model" in labels
    # Pushed over server-sent events, without a reload.
    await page.wait_for_function(
        "() => Number(document.querySelector('main').dataset.updates) >= 2"
    )
    assert await page.locator("#sec-table-shards tbody tr").count() == len(lifeline_stack.shards)
    await shot(page, "live")
    assert errors == []
    await context.close()


async def test_a_viewer_is_refused_analyst_and_admin_pages_and_calls(browser, lifeline_stack):
    context, page, _errors = await signed_in(browser, lifeline_stack, "viewer")
    nav = await page.locator("header nav a").all_inner_texts()
    assert "Sessions" not in nav and "Audit log" not in nav
    for path in ("/sessions", "/operators", "/audit"):
        r = await page.goto(f"{lifeline_stack.console_url}{path}")
        assert r.status == 403, path
    # The page's own script cannot do it either: the server refuses the call.
    await page.goto(f"{lifeline_stack.console_url}/")
    status = await page.evaluate(
        """async () => {
          const csrf = document.querySelector('meta[name=csrf-token]').content;
          const r = await fetch('/api/operators', {method: 'POST', headers: {
            'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
            body: JSON.stringify({name: 'x-viewer-made', role: 'admin',
                                  password: 'aaaaaaaaaaaaaaaa'})});
          return r.status;
        }"""
    )
    assert status == 403
    await context.close()


async def test_an_admin_adds_an_operator_and_the_audit_log_shows_it(browser, lifeline_stack):
    context, page, errors = await signed_in(browser, lifeline_stack, "admin")
    await page.goto(f"{lifeline_stack.console_url}/operators")
    await page.wait_for_selector("main[data-loaded]")
    name = f"new-{uuid.uuid4().hex[:6]}"
    await page.fill("#add-name", name)
    await page.select_option("#add-role", "analyst")
    await page.fill("#add-password", "a long enough password")
    await page.click("#sec-form-add button[type=submit]")
    await page.wait_for_selector(f"#sec-table-operators td:text-is('{name}')")
    await shot(page, "operators")
    await page.goto(f"{lifeline_stack.console_url}/audit")
    await page.wait_for_selector("main[data-loaded]")
    rows = await page.locator("#sec-table-audit tbody tr").all_inner_texts()
    assert any("operator added" in r and name in r for r in rows), rows[:5]
    assert any("sign-in" in r for r in rows)
    await shot(page, "audit")
    assert errors == []
    await context.close()


async def test_a_forged_cross_site_form_is_refused(browser, lifeline_stack):
    """A page elsewhere posting to the console with the operator's cookie: no CSRF token."""
    context, page, _errors = await signed_in(browser, lifeline_stack, "admin")
    status = await page.evaluate(
        """async () => (await fetch('/api/operators', {method: 'POST',
             headers: {'Content-Type': 'application/json'},
             body: JSON.stringify({name: 'forged', role: 'admin', password: 'aaaaaaaaaaaaaaaa'})
           })).status"""
    )
    assert status == 403
    await context.close()


@pytest.mark.parametrize(
    ("path", "page_name", "expect"),
    [
        ("/outcomes", "outcomes", "main section[id^='sec-table-'] tbody tr"),
        ("/funnel?site=demo", "funnel", "main figure[id^='chart-']"),
        ("/segments?site=demo", "segments", "main section[id^='sec-table-'] tbody tr"),
        ("/sessions?site=demo&intervened=1", "sessions", "main section[id^='sec-table-'] tbody tr"),
        ("/models", "models", ".kpi"),
        ("/sites", "sites", "#sec-table-rules tbody tr"),
    ],
)
async def test_each_page_renders_the_runs_data(
    browser, lifeline_stack, traffic, path, page_name, expect
):
    context, page, errors = await signed_in(browser, lifeline_stack, "admin")
    await page.goto(f"{lifeline_stack.console_url}{path}")
    await page.wait_for_selector("main[data-loaded]")
    assert await page.locator(".status.bad").count() == 0, await page.inner_text(".status")
    assert await page.locator(expect).count() > 0, (path, expect)
    await shot(page, page_name)
    assert errors == []
    await context.close()


async def test_the_funnel_counts_the_traffic_and_exports_as_csv(browser, lifeline_stack, traffic):
    context, page, _errors = await signed_in(browser, lifeline_stack, "analyst")
    r = await page.request.get(f"{lifeline_stack.console_url}/api/view/funnel?site=demo")
    view = await r.json()
    landing = next(t for t in view["tables"] if t["rows"])
    assert landing["rows"], view
    csv = await page.request.get(
        f"{lifeline_stack.console_url}/api/export/funnel/{landing['id']}.csv?site=demo"
    )
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = (await csv.text()).strip().splitlines()
    assert lines[0].split(",")[0] == landing["columns"][0]["label"]
    assert len(lines) == len(landing["rows"]) + 1
    await context.close()


async def test_a_promotion_in_the_console_is_audited_and_reaches_the_shards(
    browser, lifeline_stack
):
    import asyncio
    import json

    import redis

    from training.registry import ModelRegistry

    bundled = Path(__file__).resolve().parents[2] / "actors" / "model" / "bundled"
    reg = ModelRegistry(redis.Redis.from_url(lifeline_stack.redis_url), lifeline_stack.prefix)
    before = reg.live()
    reg.r.delete(reg.k_live)  # no live model: the guard has nothing to compare with
    version = reg.save(
        (bundled / "bundled.ubj").read_bytes(), json.loads((bundled / "bundled.json").read_text())
    )
    context, page, errors = await signed_in(browser, lifeline_stack, "admin")
    try:
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.goto(f"{lifeline_stack.console_url}/models")
        await page.wait_for_selector("main[data-loaded]")
        row = page.locator("#sec-table-versions tbody tr", has_text=version)
        await row.get_by_role("button", name="Promote", exact=True).click()
        await page.wait_for_function(
            "() => document.querySelector('.status').textContent.length > 0"
        )
        assert await page.inner_text(".status") == "Done: Promote"
        infos = await asyncio.gather(
            *(sh.wait_model_decision.remote(version) for sh in lifeline_stack.shards)
        )
        assert [i["model"] for i in infos] == [version] * len(lifeline_stack.shards)
        await page.reload()
        await page.wait_for_selector("main[data-loaded]")
        await shot(page, "models")
        await page.goto(f"{lifeline_stack.console_url}/audit")
        await page.wait_for_selector("main[data-loaded]")
        rows = await page.locator("#sec-table-audit tbody tr").all_inner_texts()
        assert any("model promoted" in r and version in r for r in rows), rows[:5]
        assert errors == []
    finally:
        await context.close()
        if before is not None:
            reg.promote(before)
