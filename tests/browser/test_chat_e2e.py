"""The help chat end to end in a real Chromium: the visitor's panel, the assistant, a person.

Everything is real but the model: the demo shop and its tracker from the stack's HTTP
server, the visitor's socket to the stack's gateway, the ChatAssistant on Serve (its
model the local Messages API stand-in, the ``chat`` fixture of tests/conftest.py), and
a support operator signed in to the console in a second browser context.
``LIFELINE_SCREENSHOTS=1`` saves the visitor's chat on a desktop and a phone screen and
the operator's queue to docs/screenshots/.
"""

from __future__ import annotations

import json
import os

import msgpack
import pytest
from lifeline_browser import SCREENSHOTS
from test_console import signed_in
from test_e2e import consent, new_visitor, shown_sid, struggle

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.browser]

PANEL = "#lifeline-chat .p"


@pytest.fixture(scope="module")
def any_stack(lifeline_stack):
    """The standalone stack only: the browser adds nothing Redis-specific to the chat
    (tests/test_chat_gateway.py runs it on Redis Cluster too)."""
    return lifeline_stack


QUESTION = "The form says invalid value for my amount, what should I type?"
GUIDE_URL = "/help/calculator-errors"  # the demo KB's article on that error


def decoded(payload: str | bytes) -> dict:
    """A frame the page received, JSON or msgpack (the client speaks msgpack when it can)."""
    frame = json.loads(payload) if isinstance(payload, str) else msgpack.unpackb(payload)
    return frame if isinstance(frame, dict) else {}


async def shot(page, name: str) -> None:
    if os.environ.get("LIFELINE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), animations="disabled")


async def test_a_struggling_visitor_asks_the_assistant_then_a_person_answers(browser, chat):
    stack = chat
    context, page, errors = await new_visitor(browser, shown_sid())
    received: list[dict] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda p: received.append(decoded(p))))
    operator = None
    try:
        await page.goto(stack.http_url + "/calculator.html")
        await consent(page)
        await struggle(page)
        card = page.locator("#lifeline-ui [data-kind]").first
        await card.wait_for(timeout=10_000)
        # Help arrives as a card; an offer of help opens the chat when accepted, and a
        # form hint leaves the site's own Help button (data-lifeline-chat) for it.
        if await card.get_attribute("data-kind") == "help_offer":
            await page.get_by_role("button", name="Chat with us").click()
        else:
            await page.click("[data-lifeline-chat]")
        await page.get_by_role("dialog", name="Help chat").wait_for()
        await page.locator(PANEL + " .w").filter(has_text="is answering").wait_for()

        # A question from the demo's knowledge base: the answer streams in and cites it.
        await page.get_by_label("Your message").fill(QUESTION)
        await page.get_by_label("Your message").press("Enter")
        answer = page.locator(PANEL + " ol > li.assistant").last
        link = answer.locator(f"a[href='{GUIDE_URL}']")
        await link.wait_for(timeout=15_000)
        final = next(
            f for f in received if f.get("t") == "chat_turn" and f["turn"]["role"] == "assistant"
        )
        deltas = [f for f in received if f.get("t") == "chat_delta"]
        assert len([d for d in deltas if d["id"] == final["turn"]["id"]]) >= 2  # streamed
        assert received.index(deltas[0]) < received.index(final)
        assert await link.get_attribute("target") == "_blank"
        await shot(page, "chat-e2e-answer")
        await page.set_viewport_size({"width": 390, "height": 844})
        await shot(page, "chat-e2e-answer-mobile")
        await page.set_viewport_size({"width": 1100, "height": 760})

        # The visitor asks for a person; a support operator takes the chat and replies.
        await page.get_by_role("button", name="Talk to a person").click()
        await page.locator(PANEL + " .w").filter(has_text="Waiting for a person").wait_for()
        operator, console, console_errors = await signed_in(browser, stack, "support")
        await console.goto(f"{stack.console_url}/support")
        sid = await page.evaluate("lifeline.stats().sid")
        queued = console.locator(f"#sec-table-queue a:text('{sid}')")
        await queued.wait_for()
        await shot(console, "console-support-queue")
        await queued.click()
        await console.wait_for_selector("main[data-page=chat][data-loaded]")
        assert QUESTION in await console.locator("#sec-table-conversation").inner_text()
        await console.click("#sec-table-chat button:text('Take')")
        await page.locator(PANEL + " .w").filter(has_text="is answering").wait_for()
        await console.wait_for_selector("#reply-text")
        await console.fill("#reply-text", "Hi, I can help: type 10000 for the amount.")
        await console.click("#sec-form-reply button[type=submit]")
        reply = page.locator(PANEL + " ol > li.operator")
        await reply.wait_for(timeout=10_000)
        assert "type 10000 for the amount" in await reply.inner_text()
        name = await reply.locator("b").inner_text()
        assert name and name != "Assistant"  # the visitor sees who answers
        assert name in await page.locator(PANEL + " .w").inner_text()
        await shot(page, "chat-e2e-person")
        assert errors == [] and console_errors == []
    finally:
        if operator is not None:
            await operator.close()
        await context.close()
