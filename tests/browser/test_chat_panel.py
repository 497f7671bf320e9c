"""The help chat panel (serve/static/lifeline-chat.js) in a real headless Chromium.

No Lifeline server: the demo pages come from the repository and the WebSocket is the
ScriptedGateway of conftest.py, which records the chat_* frames the panel sends; the
test plays the server's side (chat_state, chat_delta, chat_turn, errors) as the frames of
docs/PROTOCOL.md, "Help chat", say it would.
"""

from __future__ import annotations

import pytest
from lifeline_browser import SCREENSHOTS, SHOP, STATIC, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.browser]

CHAT_JS = SHOP + "/lifeline-chat.js"
GUIDE = {"title": '"Invalid value" on the financing form', "url": "/help/calculator-errors"}
# What the panel shows, read through its shadow root (Playwright's locators pierce it).
PANEL = "#lifeline-chat .p"
# The element focused inside the chat's shadow root ("" when focus is outside the chat).
FOCUSED = """() => { const h = document.getElementById('lifeline-chat');
  if (document.activeElement !== h) return '';
  const a = h.shadowRoot.activeElement; return a ? (a.id || a.dataset.k || a.textContent) : ''; }"""


async def ready(page) -> None:
    await page.wait_for_function("() => window.lifeline && window.lifeline.v === 1")


async def shop_page(shop, path: str = "/calculator.html", consent: bool = True):
    """A demo page with the tracker connected; every request for the chat's script recorded."""
    page = await shop.new_page()
    page.loads = []  # type: ignore[attr-defined]
    page.on("request", lambda r: "lifeline-chat" in r.url and page.loads.append(r.url))
    await page.goto(SHOP + path)
    await ready(page)
    if consent:
        await page.evaluate("() => lifeline.consent.set(['analytics'])")
        await page.wait_for_function("() => lifeline.stats().connected")
    return page


def chat_frames(shop, t: str | None = None) -> list[dict]:
    return [
        f
        for f in shop.gw.frames
        if f.get("t", "").startswith("chat_") and (t is None or f["t"] == t)
    ]


def state(shop, st: str = "assistant", turns: list | None = None, **extra) -> dict:
    agent = {"kind": "assistant", "name": "Ridgeline assistant"}
    frame = {"t": "chat_state", "sid": shop.gw.sid, "state": st, "agent": agent}
    return {**frame, "turns": turns or [], **extra}


def turn(shop, tid: str, role: str, text: str, replace: bool = False, **extra) -> dict:
    t = {"id": tid, "role": role, "text": text, "ts": 1_700_000_000_000, **extra}
    return {"t": "chat_turn", "sid": shop.gw.sid, "turn": t, "replace": replace}


async def open_by_help_button(shop, page) -> None:
    await page.click("[data-lifeline-chat]")
    await page.get_by_role("dialog", name="Help chat").wait_for()
    await wait_until(lambda: chat_frames(shop, "chat_open"))
    shop.gw.push(state(shop))
    await page.locator(PANEL + " .w").filter(has_text="is answering").wait_for()


async def ask(shop, page, text: str) -> str:
    """Type a question into the chat and send it with Enter; the mid it went with."""
    n = len(chat_frames(shop, "chat_send"))
    await page.get_by_label("Your message").fill(text)
    await page.get_by_label("Your message").press("Enter")
    await wait_until(lambda: len(chat_frames(shop, "chat_send")) > n)
    return chat_frames(shop, "chat_send")[-1]["mid"]


async def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), animations="disabled")


# --------------------------------------------------------------------------- opening


async def test_accepting_a_help_offer_loads_the_chat_and_opens_it_with_the_offer(shop):
    page = await shop_page(shop)
    shop.gw.intervene("help_offer", "i-help", "Stuck on the form? We can help.")
    await page.get_by_role("button", name="Chat with us").click()
    dialog = page.get_by_role("dialog", name="Help chat")
    await dialog.wait_for()
    await wait_until(lambda: chat_frames(shop, "chat_open"))
    assert chat_frames(shop) == [{"t": "chat_open", "sid": shop.gw.sid, "iid": "i-help"}]
    assert page.loads == [CHAT_JS]  # type: ignore[attr-defined]
    # a labelled dialog, focus moved into its message box
    assert await dialog.get_attribute("aria-modal") == "true"
    assert await page.evaluate(FOCUSED) == "i"
    assert await page.locator(PANEL + " .w").inner_text() == "Connecting…"
    shop.gw.push(state(shop))
    await page.locator(PANEL + " .w").filter(has_text="Ridgeline assistant").wait_for()
    assert [e["iid"] for e in shop.gw.events("intervention_accepted")] == ["i-help"]
    assert shop.page_errors == []


async def test_the_page_can_open_the_chat_and_a_hook_can_keep_its_own(shop):
    page = await shop_page(shop, "/cart.html")
    # A site with its own chat returns false from its accept hook: Lifeline's stays closed.
    await page.evaluate("() => lifeline.on('accept', () => false)")
    shop.gw.intervene("help_offer", "i-own", "Need a hand?")
    await page.get_by_role("button", name="Chat with us").click()
    await wait_until(lambda: shop.gw.events("intervention_accepted"))
    await page.evaluate("() => lifeline.track('after_accept')")
    await wait_until(lambda: shop.gw.events("custom"))
    assert page.loads == [] and chat_frames(shop) == []  # type: ignore[attr-defined]
    # lifeline.chat.open(): no offer behind it, so no iid
    await page.evaluate("() => lifeline.chat.open()")
    await page.get_by_role("dialog", name="Help chat").wait_for()
    await wait_until(lambda: chat_frames(shop, "chat_open"))
    assert chat_frames(shop) == [{"t": "chat_open", "sid": shop.gw.sid}]


# ------------------------------------------------------------------- conversation


async def test_a_question_streams_its_answer_and_the_final_turn_replaces_it(shop):
    page = await shop_page(shop)
    await open_by_help_button(shop, page)
    assert chat_frames(shop, "chat_open") == [{"t": "chat_open", "sid": shop.gw.sid}]
    # every announcement of the live region, counted (it must speak once per answer)
    await page.evaluate("""() => { const live = document.getElementById('lifeline-chat').shadowRoot
        .querySelector('[aria-live]'); window.__said = [];
      new MutationObserver(() => window.__said.push(live.textContent))
        .observe(live, {childList: true, characterData: true, subtree: true}); }""")
    question = "How do I enter my yearly income?"
    mid = await ask(shop, page, question)
    send = chat_frames(shop, "chat_send")[-1]
    assert send == {"t": "chat_send", "sid": shop.gw.sid, "text": question, "mid": mid}
    assert 1 <= len(mid) <= 32
    mine = page.locator(PANEL + " ol > li.visitor")
    assert question in await mine.inner_text()
    assert "pending" in await mine.get_attribute("class")  # not yet echoed by the server
    assert await page.get_by_label("Your message").input_value() == ""
    shop.gw.push(turn(shop, "t1", "visitor", question, mid=mid))
    await page.wait_for_function(
        "() => !document.getElementById('lifeline-chat').shadowRoot.querySelector('.pending')"
    )
    assert await mine.count() == 1  # the echo replaced the pending bubble
    # the answer streams: each piece shows as it arrives
    answer = page.locator(PANEL + " ol > li.assistant")
    pieces = ["Enter your yearly income ", "in whole dollars, ", "without commas."]
    for i, piece in enumerate(pieces):
        shop.gw.push({"t": "chat_delta", "sid": shop.gw.sid, "id": "t2", "text": piece})
        await answer.locator("span").filter(has_text="".join(pieces[: i + 1])).wait_for()
        assert await answer.get_attribute("aria-busy") == "true"
    assert await page.evaluate("window.__said") == []  # no piece was announced
    final = "Enter your yearly income in whole dollars, without commas (for example 52000)."
    shop.gw.push(turn(shop, "t2", "assistant", final, True, citations=[GUIDE]))
    await answer.locator("span").filter(has_text="for example 52000").wait_for()
    assert await answer.count() == 1 and await answer.get_attribute("aria-busy") is None
    assert await answer.locator("span").inner_text() == final
    link = answer.get_by_role("link", name=GUIDE["title"])
    assert await link.get_attribute("href") == GUIDE["url"]
    assert await link.get_attribute("target") == "_blank"
    await page.wait_for_function("() => window.__said.length > 0")
    assert await page.evaluate("window.__said") == ["Assistant: " + final]  # announced once
    await shot(page, "chat_panel")
    # a piece arriving after the final text changes nothing
    shop.gw.push({"t": "chat_delta", "sid": shop.gw.sid, "id": "t2", "text": " late"})
    # a citation's link follows the cards' rule: no javascript: (or data:) links
    bad = {"title": "Not a link", "url": "javascript:alert(1)"}
    shop.gw.push(turn(shop, "t3", "assistant", "More?", citations=[bad]))
    assert await page.get_by_role("link", name="Not a link").get_attribute("href") == "#"
    assert await answer.nth(0).locator("span").inner_text() == final
    # only the chat's own box is read: what is typed on the page never leaves, and typing
    # in the chat does not show up as page activity (no form events from the chat)
    await page.fill("#income", "secret-income-typed-on-the-page")
    await page.get_by_label("Your message").fill("typed, never sent")
    await page.focus("#zip")
    await page.evaluate("() => lifeline.track('flush_now')")
    await wait_until(lambda: shop.gw.events("custom"))
    sent = [str(f) for f in shop.gw.frames]
    assert not any("secret-income" in f or "never sent" in f for f in sent)
    assert sum(question in f for f in sent) == 1  # in its chat_send only
    fields = {e.get("field") for e in shop.gw.events() if e["type"].startswith("form_")}
    assert fields == {"income", "zip"}  # the page's fields; the chat's box is none of them
    assert shop.page_errors == []


async def test_a_person_is_asked_for_joins_by_name_and_a_message_can_be_left(shop):
    page = await shop_page(shop)
    await open_by_help_button(shop, page)
    person = page.get_by_role("button", name="Talk to a person")
    assert await person.is_visible() and "o" not in (await person.get_attribute("class")).split()
    # the assistant cannot answer and offers a person: the button is shown prominently
    shop.gw.push(turn(shop, "t1", "assistant", "I'm not sure about that.", offer_person=True))
    await page.locator(PANEL + " .ps.o").wait_for()
    await person.click()
    await wait_until(lambda: chat_frames(shop, "chat_person"))
    assert chat_frames(shop, "chat_person") == [{"t": "chat_person", "sid": shop.gw.sid}]
    shop.gw.push(state(shop, "waiting_for_person", wait_s=120))
    who, note = page.locator(PANEL + " .w"), page.locator(PANEL + " .note")
    await who.filter(has_text="Waiting for a person").wait_for()
    assert "within 2 minutes" in await note.inner_text()
    assert not await person.is_visible()
    # an operator takes over: the visitor sees who answers, and the reply, announced
    shop.gw.push(
        state(shop, "person", agent={"kind": "person", "name": "Sam"}, turns=[], wait_s=None)
    )
    await who.filter(has_text="Sam is answering").wait_for()
    shop.gw.push(turn(shop, "t3", "operator", "Hi, I'm Sam. Let me look.", by="Sam"))
    reply = page.locator(PANEL + " ol > li.operator")
    await reply.wait_for()
    assert await reply.locator("b").inner_text() == "Sam"
    assert "Let me look." in await reply.inner_text()
    live = page.locator("#lifeline-chat .live")
    assert await live.inner_text() == "Sam: Hi, I'm Sam. Let me look."
    # no one came in time (another chat): told, and offered to leave a message
    shop.gw.push(
        state(
            shop,
            "assistant",
            turns=[{"id": "t4", "role": "system", "text": "No one is free.", "ts": 1}],
            leave_message=True,
        )
    )
    box = page.get_by_label("Leave a message for our team")
    await box.wait_for()
    await box.fill("Please call me back about financing.")
    await page.get_by_role("button", name="Leave message").click()
    await wait_until(lambda: chat_frames(shop, "chat_leave"))
    leave = chat_frames(shop, "chat_leave")[0]
    assert leave["text"] == "Please call me back about financing." and 1 <= len(leave["mid"]) <= 32
    await box.wait_for(state="hidden")
    assert shop.page_errors == []


async def test_refusals_show_friendly_text_and_give_the_message_back(shop):
    page = await shop_page(shop)
    await open_by_help_button(shop, page)
    err = page.locator(PANEL + " .err")
    # an empty message never leaves
    await page.get_by_role("button", name="Send").click()
    assert await err.inner_text() == "Type a message first."
    assert chat_frames(shop, "chat_send") == []
    mid = await ask(shop, page, "Is there a fee for paying early?")
    shop.gw.push({"t": "error", "sid": shop.gw.sid, "code": "rate_limited", "mid": mid})
    await err.filter(has_text="sending messages quickly").wait_for()
    assert await err.get_attribute("role") == "alert"
    # the refused message is back in the box (nothing typed is lost), its bubble gone
    box = page.get_by_label("Your message")
    assert await box.input_value() == "Is there a fee for paying early?"
    assert await page.locator(PANEL + " ol > li.visitor").count() == 0
    shop.gw.push({"t": "error", "sid": shop.gw.sid, "code": "chat_unavailable"})
    await err.filter(has_text="isn't available right now").wait_for()
    # the chat ended on the server: the next message reopens it, then goes
    await box.fill("")
    mid = await ask(shop, page, "Still there?")
    shop.gw.push({"t": "error", "sid": shop.gw.sid, "code": "not_open", "mid": mid})
    await wait_until(lambda: len(chat_frames(shop, "chat_open")) == 2)
    shop.gw.push(state(shop))
    await wait_until(lambda: len(chat_frames(shop, "chat_send")) == 3)
    assert chat_frames(shop, "chat_send")[-1]["mid"] == mid
    assert shop.page_errors == []


# ------------------------------------------------------------------ keyboard, focus


async def test_keyboard_only_focus_is_trapped_escape_minimises_and_end_closes(shop):
    page = await shop_page(shop)
    # a hint on the page: Esc in the chat must not dismiss it
    shop.gw.intervene("form_hint", "i-hint", "Whole dollars.", target="loan-amount")
    await page.locator("#lifeline-ui [data-kind=form_hint]").wait_for()
    await page.focus("[data-lifeline-chat]")
    await page.keyboard.press("Enter")  # the site's Help button, by keyboard
    await page.get_by_role("dialog", name="Help chat").wait_for()
    await wait_until(lambda: chat_frames(shop, "chat_open"))
    shop.gw.push(state(shop))
    await page.get_by_role("button", name="Talk to a person").wait_for()
    assert await page.evaluate(FOCUSED) == "i"
    seen = set()
    for _ in range(7):  # more Tabs than the panel has controls: focus never leaves it
        await page.keyboard.press("Tab")
        f = await page.evaluate(FOCUSED)
        assert f, "focus left the chat"
        seen.add(f)
    assert {"min", "end", "person", "i", "Send"} <= seen
    await page.keyboard.press("Shift+Tab")
    assert await page.evaluate(FOCUSED)
    # Esc minimises: the chat is kept, focus goes back to the Help button
    await page.get_by_label("Your message").focus()
    await page.keyboard.press("Escape")
    await page.locator(PANEL).wait_for(state="hidden")
    assert await page.evaluate("() => document.activeElement.hasAttribute('data-lifeline-chat')")
    assert await page.evaluate("() => sessionStorage.getItem('ll:chat')") == "m"
    assert shop.gw.events("intervention_dismissed") == []
    assert chat_frames(shop, "chat_close") == []
    launcher = page.get_by_role("button", name="Open help chat")
    shop.gw.push(turn(shop, "t1", "assistant", "Anything else?"))
    await page.get_by_role("button", name="Open help chat, 1 new").wait_for()
    # announced while minimised too
    assert await page.locator("#lifeline-chat .live").inner_text() == "Assistant: Anything else?"
    await launcher.focus()
    await page.keyboard.press("Enter")
    await page.locator(PANEL).wait_for()
    assert await page.evaluate("() => sessionStorage.getItem('ll:chat')") == "o"
    # End asks once, then closes the chat on the server and forgets it here
    await page.get_by_role("button", name="End", exact=True).click()
    await page.get_by_role("button", name="Keep chatting").wait_for()
    await page.keyboard.press("Escape")  # Esc in the question: keep chatting
    assert await page.evaluate(FOCUSED) == "i" and chat_frames(shop, "chat_close") == []
    await page.get_by_role("button", name="End", exact=True).click()
    await page.get_by_role("button", name="End chat").click()
    await wait_until(lambda: chat_frames(shop, "chat_close"))
    await page.locator(PANEL).wait_for(state="hidden")
    assert not await launcher.is_visible()
    assert await page.evaluate("() => sessionStorage.getItem('ll:chat')") is None
    assert shop.page_errors == []


# ------------------------------------------------------------ navigation, reconnect


async def test_the_chat_is_restored_after_a_navigation_and_resent_after_a_cut(shop):
    page = await shop_page(shop)
    await open_by_help_button(shop, page)
    mid = await ask(shop, page, "Do you ship to Canada?")
    turns = [
        {"id": "t1", "role": "visitor", "text": "Do you ship to Canada?", "ts": 1, "mid": mid},
        {"id": "t2", "role": "assistant", "text": "Yes, in 5 to 8 days.", "ts": 2},
    ]
    shop.gw.push(turn(shop, "t1", "visitor", turns[0]["text"], mid=mid))
    shop.gw.push(turn(shop, "t2", "assistant", turns[1]["text"]))
    await page.locator(PANEL + " ol > li.assistant").wait_for()
    await page.get_by_role("button", name="Minimise chat").click()
    # the server holds the chat: it sends its state after every welcome of this session
    shop.gw.after_welcome = [state(shop, turns=turns)]
    await page.goto(SHOP + "/cart.html")  # a navigation: a new page, the same session
    await ready(page)
    launcher = page.get_by_role("button", name="Open help chat")
    await launcher.wait_for()  # restored minimised, as it was left
    assert page.loads == [CHAT_JS, CHAT_JS]  # type: ignore[attr-defined]
    assert len(chat_frames(shop, "chat_open")) == 1  # restored, not reopened
    await launcher.click()
    log = page.locator(PANEL + " ol")
    assert "Yes, in 5 to 8 days." in await log.inner_text()
    # a message the server never echoed is sent again, with the same mid, after a reconnect
    n = len(chat_frames(shop, "chat_send"))
    lost = await ask(shop, page, "And to Mexico?")
    await shop.gw.cut()
    await wait_until(lambda: len(chat_frames(shop, "chat_send")) == n + 2, timeout=10)
    again = chat_frames(shop, "chat_send")[-1]
    assert again["mid"] == lost and again["text"] == "And to Mexico?"
    # once stored (the state after the welcome names its mid), it is not sent again
    stored = {"id": "t3", "role": "visitor", "text": "And to Mexico?", "ts": 3, "mid": lost}
    shop.gw.after_welcome = [state(shop, turns=[*turns, stored])]
    await shop.gw.cut()
    await wait_until(lambda: len([f for f in shop.gw.frames if f["t"] == "hello"]) == 4, timeout=10)
    await page.wait_for_function(
        "() => !document.getElementById('lifeline-chat').shadowRoot.querySelector('.pending')"
    )
    assert await page.locator(PANEL + " ol > li.visitor").count() == 2
    assert len(chat_frames(shop, "chat_send")) == n + 2
    assert shop.page_errors == []


# -------------------------------------------------------------------------- mobile


async def test_on_a_phone_the_chat_is_a_full_width_bottom_sheet(shop):
    # the minified build, as the server serves it
    build = (STATIC / "lifeline-chat.min.js").read_bytes()

    async def serve_min(route):
        await route.fulfill(status=200, body=build, content_type="application/javascript")

    await shop.context.route(CHAT_JS, serve_min)
    page = await shop_page(shop)
    await page.set_viewport_size({"width": 390, "height": 844})
    await open_by_help_button(shop, page)
    mid = await ask(shop, page, "Can I pay off the loan early?")
    shop.gw.push(turn(shop, "t1", "visitor", "Can I pay off the loan early?", mid=mid))
    answer = (
        "Yes: paying early costs nothing extra, and you save the interest of the remaining months."
    )
    shop.gw.push(turn(shop, "t2", "assistant", answer, citations=[GUIDE], offer_person=True))
    await page.locator(PANEL + " ol > li.assistant").wait_for()
    # measured once its opening animation (8 px of slide) has finished
    await page.locator(PANEL).evaluate(
        "(e) => Promise.all(e.getAnimations().map((a) => a.finished))"
    )
    box = await page.locator(PANEL).bounding_box()
    assert box["x"] == 0 and box["width"] == 390
    assert abs(box["y"] + box["height"] - 844) < 1 and box["height"] > 600
    # 16 px inputs: iOS does not zoom into them
    size = await page.get_by_label("Your message").evaluate("(e) => getComputedStyle(e).fontSize")
    assert size == "16px"
    for name in ("Send", "Talk to a person", "End"):
        b = await page.get_by_role("button", name=name, exact=True).bounding_box()
        assert b["height"] >= 40, name  # big enough for a finger
    await shot(page, "chat_panel_mobile")
    # A form hint that comes while the sheet is open never covers it: it is placed clear of
    # the sheet where there is room, and where the two meet the chat is on top.
    shop.gw.intervene("form_hint", "i-h2", "Whole dollars.", target="loan-amount")
    card = page.locator("#lifeline-ui [data-kind=form_hint]")
    await card.wait_for()
    c, p = await card.bounding_box(), await page.locator(PANEL).bounding_box()
    left, right = max(c["x"], p["x"]), min(c["x"] + c["width"], p["x"] + p["width"])
    top, bottom = max(c["y"], p["y"]), min(c["y"] + c["height"], p["y"] + p["height"])
    if left < right and top < bottom:
        on_top = await page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y).id",
            [(left + right) / 2, (top + bottom) / 2],
        )
        assert on_top == "lifeline-chat"
    assert shop.page_errors == []


# ----------------------------------------------------------------- never loaded, consent


async def test_the_tracker_alone_never_loads_the_chat(shop):
    page = await shop_page(shop)
    shop.gw.intervene("form_hint", "i-h", "Whole dollars.", target="loan-amount")
    await page.locator("#lifeline-ui [data-kind=form_hint]").wait_for()
    # a chat that is not open, and pieces of nothing, load nothing
    shop.gw.push(state(shop, "ended"))
    shop.gw.push({"t": "chat_delta", "sid": shop.gw.sid, "id": "x", "text": "stray"})
    shop.gw.push({"t": "error", "sid": shop.gw.sid, "code": "not_open"})
    await page.click("#calc-submit")
    await page.goto(SHOP + "/cart.html")
    await ready(page)
    await page.wait_for_function("() => lifeline.stats().connected")
    await page.evaluate("() => lifeline.track('done')")
    await wait_until(lambda: shop.gw.events("custom"))
    assert page.loads == []  # type: ignore[attr-defined]
    assert not any("lifeline-chat" in u for u in shop.requests)
    assert await page.locator("#lifeline-chat").count() == 0
    assert shop.page_errors == []


async def test_without_consent_the_chat_sends_nothing_and_withdrawal_removes_it(shop):
    page = await shop_page(shop, consent=False)
    await page.click("[data-lifeline-chat]")
    await page.get_by_role("dialog", name="Help chat").wait_for()
    note = page.locator(PANEL + " .note")
    assert "needs your permission" in await note.inner_text()
    await page.get_by_label("Your message").fill("hello?")
    await page.get_by_label("Your message").press("Enter")
    assert shop.gw.frames == [] and shop.sockets == []
    assert await page.evaluate("() => sessionStorage.length") == 0
    # consent given: the waiting open and message go
    await page.evaluate("() => lifeline.consent.set(['analytics'])")
    await wait_until(lambda: chat_frames(shop, "chat_open"))
    shop.gw.push(state(shop))
    await wait_until(lambda: chat_frames(shop, "chat_send"))
    assert chat_frames(shop, "chat_send")[0]["text"] == "hello?"
    assert await page.evaluate("() => sessionStorage.getItem('ll:chat')") == "o"
    # withdrawn: the panel goes, and what it remembered
    await page.evaluate("() => lifeline.consent.withdraw()")
    await page.locator("#lifeline-chat").wait_for(state="detached")
    assert await page.evaluate("() => sessionStorage.getItem('ll:chat')") is None
    assert shop.page_errors == []
