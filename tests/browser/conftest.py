"""Fixtures for the tracking client's tests in a real headless Chromium (Debian's package).

Two kinds of test use them:

* client-level tests (test_client.py) need no Lifeline server: the demo pages and
  /lifeline.js are served from the repository by Playwright's request routing
  (origin ``http://shop.test``), and the WebSocket ``ws://gw.test/ws`` is answered by
  :class:`ScriptedGateway`, a protocol-speaking stand-in driven by the test
  through Playwright's WebSocket routing. The browser, its WebSocket, storage,
  sendBeacon and DOM are all real;
* end-to-end tests (test_e2e.py) use the lead's ``lifeline_stack`` fixture
  (tests/conftest.py): real gateway, Ray shards and Redis.

The browser cannot be downloaded at run time, so it is /usr/bin/chromium or the
tests are skipped. Background-networking switches keep Chromium from calling home
on a closed network.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import pytest_asyncio
from lifeline_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PROBE,
    VIEWPORT,
    ScriptedGateway,
    Shop,
    serve_file,
)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="session")
async def shop(browser):
    """A fresh context (fresh storage) on the repository's demo shop, with a scripted gateway."""
    context = await browser.new_context(viewport=VIEWPORT)
    gw = ScriptedGateway()
    await gw.install(context)
    s = Shop(context, gw)
    await context.add_init_script(PROBE)

    async def handle(route):
        req = route.request
        s.requests.append(req.url)
        path = (
            req.url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
            if "/" in req.url.split("://", 1)[1]
            else ""
        )
        if path == "beacon" and req.method == "POST":
            s.beacons.append(
                {
                    "url": req.url,
                    "body": json.loads(req.post_data or "{}"),
                    "content_type": req.headers.get("content-type", ""),
                }
            )
            await route.fulfill(
                status=200, content_type="application/json", body='{"acked":0,"errors":[]}'
            )
            return
        found = serve_file(path)
        rng = req.headers.get("range", "")
        if found is None:
            await route.fulfill(status=404, body="not found")
        elif rng.startswith("bytes="):  # media elements seek with range requests
            body = found[0]
            start_s, _, end_s = rng[6:].partition("-")
            start, end = int(start_s or 0), min(int(end_s or len(body) - 1), len(body) - 1)
            await route.fulfill(
                status=206,
                body=body[start : end + 1],
                content_type=found[1],
                headers={
                    "Content-Range": f"bytes {start}-{end}/{len(body)}",
                    "Accept-Ranges": "bytes",
                },
            )
        else:
            await route.fulfill(
                status=200, body=found[0], content_type=found[1], headers={"Accept-Ranges": "bytes"}
            )

    await context.route(re.compile(r"^http://shop\.test/.*"), handle)
    yield s
    await context.close()
