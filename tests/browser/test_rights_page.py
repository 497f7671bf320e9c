"""The demo shop's "Your data" page in a real Chromium against the whole service.

A visitor browses with consent, opens the page, downloads their data (the
access document, through ``lifeline.privacy.access()``), then erases it
(``lifeline.privacy.erase()``); Redis then holds nothing with their visitor
id or session id.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lifeline_browser import VIEWPORT
from test_e2e import all_acked, consent

from tests.test_rights import scan_for

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.browser]


async def test_your_data_page_downloads_then_erases(browser, lifeline_stack) -> None:
    stack = lifeline_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    context = await browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(stack.http_url + "/")
    await consent(page, "all")
    await page.click(".card")  # a product page: more events
    await page.wait_for_function(
        "() => window.lifeline && lifeline.stats().connected", timeout=15_000
    )
    await all_acked(page)
    vid = json.loads(await page.evaluate("localStorage.getItem('ll:v')"))
    sid = await page.evaluate("lifeline.stats().sid")
    assert vid.startswith("v-")

    await page.click("footer a[href='/privacy.html']")
    await page.wait_for_function(
        "() => window.lifeline && lifeline.stats().connected", timeout=15_000
    )
    await all_acked(page)
    async with page.expect_download() as got:
        await page.click("#download")
    download = await got.value
    doc = json.loads(Path(await download.path()).read_text())
    assert doc["vid"] == vid and sid in [s["sid"] for s in doc["sessions"]]
    types = {e["type"] for s in doc["sessions"] for e in s["events"]}
    assert "page_view" in types
    assert doc["consent"] and "analytics" in doc["consent"][0]["consent"]
    await page.wait_for_function(
        "() => document.getElementById('rights-status').textContent.startsWith('Your data')"
    )
    assert await scan_for(r, keys.prefix, [vid, sid]), "the data is there before the erasure"

    await page.click("#erase")
    await page.wait_for_function(
        "() => document.getElementById('rights-status').textContent.startsWith('Erased')",
        timeout=15_000,
    )
    status = await page.text_content("#rights-status")
    assert "1 visit" in status or "visits" in status
    # The page goes on as a new visitor: a new visitor id, never the erased one again.
    await page.wait_for_function(
        "(old) => { const v = JSON.parse(localStorage.getItem('ll:v')); return v && v !== old; }",
        arg=vid,
    )
    for shard in stack.shards:
        await shard.flush.remote()
    assert await scan_for(r, keys.prefix, [vid, sid]) == []
    assert errors == []
    await context.close()


async def test_an_admin_erases_a_visitor_from_the_console_visitors_page(
    browser, lifeline_stack
) -> None:
    from test_console import shot, signed_in

    from tests.test_rights import Visitor, flush_shards, new_vid, visit

    stack = lifeline_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    v = Visitor(new_vid())
    await visit(stack, v, accept=True)
    await visit(stack, v, accept=False)
    await flush_shards(stack)
    context, page, errors = await signed_in(browser, stack, "admin")
    page.on("dialog", lambda d: d.accept())  # the Erase button asks first
    urls: list[str] = []  # every URL the page asks for: none may carry the vid
    page.on("request", lambda req: urls.append(req.url))
    await page.goto(f"{stack.console_url}/visitors")
    await page.wait_for_selector("main[data-loaded]")
    await page.select_option("#lookup-site", "demo")
    await page.fill("#lookup-vid", v.vid)
    await page.click("#sec-form-lookup button[type=submit]")
    await page.wait_for_selector("#sec-table-consent tbody tr")
    assert await page.locator("#sec-table-sessions tbody tr").count() == 2
    assert "hello" in await page.text_content("#sec-table-consent tbody")
    async with page.expect_download() as download:
        await page.click("#sec-table-visitor button:has-text('Download')")
    doc = json.loads(Path(await (await download.value).path()).read_text())
    assert doc["vid"] == v.vid and len(doc["sessions"]) == 2
    await shot(page, "visitors")
    await page.click("#sec-table-visitor button:has-text('Erase')")
    await page.wait_for_function(
        "() => document.querySelector('main .status').textContent.startsWith('Erased')"
    )
    await page.wait_for_function(
        "() => document.querySelectorAll('#sec-table-sessions tbody tr').length === 0"
    )
    await flush_shards(stack)
    assert await scan_for(r, keys.prefix, [v.vid, *v.sids]) == []
    assert urls and not [u for u in urls if v.vid in u], urls
    assert errors == []
    await context.close()
