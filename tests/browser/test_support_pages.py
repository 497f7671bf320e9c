"""The console's Support pages in a real Chromium: an operator takes a waiting chat and replies live.

A visitor (the Python protocol client, a real socket to the stack's gateway)
asks for a person; a support operator signed in through the form sees the
chat in the queue, opens it, takes it, types a reply that reaches the
visitor's socket, and sees the visitor's answer appear without a reload
(server-sent events). ``LIFELINE_SCREENSHOTS=1`` saves the queue and the
chat to docs/screenshots/console-support*.png.
"""

from __future__ import annotations

import uuid

import pytest
from test_console import shot, signed_in

from serve.dev.pyclient import LifelineClient

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.browser]


async def test_an_operator_takes_a_waiting_chat_and_replies_live(browser, lifeline_stack):
    stack = lifeline_stack
    c = LifelineClient(stack.ws_url, "demo", "s-support-" + uuid.uuid4().hex[:8],
                       "http://127.0.0.1:8080", binary=False)  # fmt: skip
    assert (await c.connect())["t"] == "welcome"
    context, page, errors = await signed_in(browser, stack, "support")
    try:
        await c.send_frame({"t": "chat_open", "sid": c.sid})
        await c.send_frame({"t": "chat_person", "sid": c.sid})
        await c.wait_for(lambda f: f.get("state") == "waiting_for_person")
        nav = await page.locator("header nav a").all_inner_texts()
        assert "Support" in nav and "Sessions" not in nav
        await page.goto(f"{stack.console_url}/support")
        link = page.locator(f"#sec-table-queue a:text('{c.sid}')")
        await link.wait_for()
        await shot(page, "support")
        await link.click()
        await page.wait_for_selector("main[data-page=chat][data-loaded]")
        await page.click("#sec-table-chat button:text('Take')")
        await c.wait_for(lambda f: f.get("t") == "chat_state" and f.get("state") == "person")
        await page.wait_for_selector("#reply-text")
        await page.fill("#reply-text", "Hello from the console")
        await page.click("#sec-form-reply button[type=submit]")
        said = await c.wait_for(
            lambda f: f.get("t") == "chat_turn" and f["turn"]["role"] == "operator"
        )
        assert said["turn"]["text"] == "Hello from the console"
        await c.send_frame(
            {"t": "chat_send", "sid": c.sid, "text": "thanks, it works", "mid": "b1"}
        )
        await page.wait_for_selector("#sec-table-conversation td:text('thanks, it works')")
        await shot(page, "support-chat")
        assert errors == []
    finally:
        await context.close()
        await c.close()
