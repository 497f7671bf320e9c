"""The Sessions and Session pages in a real headless Chromium against a running stack.

An analyst finds a session that got help by its id prefix, opens it from
the results, and sees its exit-risk and signal charts, its decision with
the reasons, and its events; no script error on either page.
"""

from __future__ import annotations

import time
import uuid

import pytest
from test_console import shot, signed_in

from actors.core.policy import in_holdout
from serve.dev.pyclient import LifelineClient
from training.simulator import scripted

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.browser]


async def test_an_analyst_finds_a_helped_session_and_reads_its_timeline(browser, lifeline_stack):
    stack = lifeline_stack
    tag = uuid.uuid4().hex[:8]
    while True:
        sid = f"b-{tag}-{uuid.uuid4().hex[:8]}"
        if not in_holdout(sid, 0.10):
            break
    client = LifelineClient(stack.ws_url, "demo", sid, "http://127.0.0.1:8080")
    assert (await client.connect())["t"] == "welcome"
    events = scripted("struggling", sid, int(time.time() * 1000) - 120_000)
    for i in range(0, len(events), 5):
        await client.send_events(events[i : i + 5])
    iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
    await client.wait_acked(len(events))
    await stack.shard_for(sid).flush.remote()  # index entries and records written now

    context, page, errors = await signed_in(browser, stack, "analyst")
    await page.goto(f"{stack.console_url}/sessions?sid=b-{tag}")
    await page.wait_for_selector("main[data-loaded]")
    link = page.locator("#sec-table-sessions tbody a")
    assert await link.count() == 1 and await link.inner_text() == sid
    await shot(page, "sessions")
    await link.click()
    await page.wait_for_url(f"{stack.console_url}/sessions/demo/{sid}")
    await page.wait_for_selector("main[data-loaded] #chart-risk canvas")
    assert await page.locator("#chart-signals canvas").count() == 1
    rows = await page.locator("#sec-table-decisions tbody tr").all_inner_texts()
    assert len(rows) == 1 and iv["kind"] in rows[0] and "exit_risk" in rows[0]
    assert await page.locator("#sec-table-events tbody tr").count() == len(events)
    await shot(page, "session")
    assert errors == []
    await context.close()
    await client.close()
