"""The help chat end to end: real sockets, the real gateway, the ChatAssistant on Serve, the console.

The stack's gateway streams answers from a ChatAssistant deployed here on the
shared Ray cluster, its model the local Messages API stand-in
(serve/dev/llm_stub.py); the operator is a support account signed in to the
stack's console over HTTP, with its session cookie, as a browser would be.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid

import aiohttp
import pytest

from actors.core.retention import Retention
from serve.apps.chat_answer import PERSON_WILL_ANSWER
from serve.console import audit
from serve.console.accounts import Accounts
from serve.dev.pyclient import LifelineClient

pytestmark = pytest.mark.asyncio(loop_scope="session")
ORIGIN = "http://127.0.0.1:8080"
PASSWORD = "correct horse battery"
QUESTION = "how long until my parcel arrives"


async def visitor(stack, consent=("necessary", "analytics", "personalization")) -> LifelineClient:
    c = LifelineClient(
        stack.ws_url, "demo", "s-chat-" + uuid.uuid4().hex[:10], ORIGIN, consent, binary=False
    )
    assert (await c.connect())["t"] == "welcome"
    return c


async def frame(c: LifelineClient, pred, start: int = 0, timeout: float = 10.0) -> dict:
    return await c.wait_for(pred, timeout, start)


def of(t: str, **want):
    return lambda f: f.get("t") == t and all(f.get(k) == v for k, v in want.items())


async def opened(c: LifelineClient, iid: str | None = None) -> dict:
    n = len(c.frames)
    await c.send_frame({"t": "chat_open", "sid": c.sid, **({"iid": iid} if iid else {})})
    return await frame(c, of("chat_state"), n)


async def operator(stack, role: str) -> aiohttp.ClientSession:
    """A console client signed in through the form with a new account of ``role``."""
    name = f"{role}-{uuid.uuid4().hex[:6]}"
    await Accounts(stack.gateway.redis, stack.gateway.keys).add(name, role, PASSWORD)
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=stack.console_url)
    http = aiohttp.ClientSession(base_url=stack.console_url, cookie_jar=jar)
    page = await (await http.get("/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)[1]
    r = await http.post(
        "/login", data={"name": name, "password": PASSWORD, "csrf": csrf, "next": "/"},
        allow_redirects=False,
    )  # fmt: skip
    assert r.status == 302
    me = await (await http.get("/api/me")).json()
    http.headers["X-CSRF-Token"] = me["csrf"]
    http.name = name  # type: ignore[attr-defined]
    return http


async def test_a_question_streams_deltas_then_the_final_turn_with_its_citation(chat):
    c = await visitor(chat)
    try:
        state = await opened(c)
        assert state["state"] == "assistant" and state["agent"]["kind"] == "assistant"
        assert state["turns"] == []
        n = len(c.frames)
        await c.send_frame({"t": "chat_send", "sid": c.sid, "text": QUESTION, "mid": "m-1"})
        echo = await frame(c, of("chat_turn"), n)
        assert echo["turn"]["role"] == "visitor" and echo["turn"]["mid"] == "m-1"
        assert echo["turn"]["text"] == QUESTION and echo["replace"] is False
        final = await frame(
            c, lambda f: f["t"] == "chat_turn" and f["turn"]["role"] == "assistant", n
        )
        deltas = [f for f in c.of_type("chat_delta") if f["id"] == final["turn"]["id"]]
        assert len(deltas) >= 2  # streamed, sentence by sentence
        first = next(i for i, (_, f) in enumerate(c.frames) if f.get("t") == "chat_delta")
        last = max(i for i, (_, f) in enumerate(c.frames) if f.get("t") == "chat_turn")
        assert first < last  # the deltas came before the final turn
        assert final["replace"] is True
        assert "".join(d["text"] for d in deltas).strip() == final["turn"]["text"]
        assert final["turn"]["citations"] == [
            {"title": "Delivery options and times", "url": "/help/shipping"}
        ]
        # A resend of the same message (a reconnect) is not stored twice.
        n = len(c.frames)
        await c.send_frame({"t": "chat_send", "sid": c.sid, "text": QUESTION, "mid": "m-1"})
        again = await frame(c, of("chat_state"), n)
        assert [t["role"] for t in again["turns"]] == ["visitor", "assistant"]
    finally:
        await c.close()


async def test_hand_off_to_an_operator_who_replies_live_and_ends_it_audited(chat):
    stack = chat
    c = await visitor(stack)
    http = await operator(stack, "support")
    try:
        await opened(c)
        n = len(c.frames)
        await c.send_frame({"t": "chat_person", "sid": c.sid})
        waiting = await frame(c, of("chat_state"), n)
        assert waiting["state"] == "waiting_for_person" and 0 < waiting["wait_s"] <= 120
        queue = await (await http.get("/api/view/support")).json()
        (row,) = [r for r in queue["tables"][0]["rows"] if r["sid"] == c.sid]
        assert row["offer"] == "Help button" and row["waited_s"] >= 0

        # The operator's chat page, live over SSE while the chat goes on.
        stream = await http.get(f"/api/support/stream?site=demo&sid={c.sid}")
        assert stream.status == 200

        async def next_view() -> dict:
            while True:
                line = await asyncio.wait_for(stream.content.readline(), 10)
                if line.startswith(b"data: "):
                    return json.loads(line[6:])

        assert (await next_view())["tables"][0]["rows"][0]["state"] == "waiting_for_person"
        n = len(c.frames)
        r = await http.post(f"/api/support/demo/{c.sid}/take")
        assert r.status == 200, await r.text()
        taken = await frame(c, of("chat_state", state="person"), n)
        assert taken["agent"] == {"kind": "person", "name": http.name}
        r = await http.post(f"/api/support/demo/{c.sid}/reply", json={"text": "Hello, I can help."})
        assert r.status == 200, await r.text()
        said = await frame(
            c, lambda f: f["t"] == "chat_turn" and f["turn"]["role"] == "operator", n
        )
        assert said["turn"]["text"] == "Hello, I can help." and said["turn"]["by"] == http.name

        # The visitor's message reaches the operator's open page.
        await c.send_frame(
            {"t": "chat_send", "sid": c.sid, "text": "my order is late", "mid": "x1"}
        )
        for _ in range(10):
            view = await next_view()
            texts = [row["text"] for row in view["tables"][1]["rows"]]
            if "my order is late" in texts:
                break
        else:
            raise AssertionError("the visitor's message never reached the console stream")
        assert not c.of_type("chat_delta")  # a person has the chat: the assistant stays out
        stream.close()

        r = await http.post(f"/api/support/demo/{c.sid}/end")
        assert r.status == 200
        await frame(c, of("chat_state", state="ended"), n)
        r = await http.post(f"/api/support/demo/{c.sid}/reply", json={"text": "late"})
        assert r.status == 409 and (await r.json())["code"] == "not_open"
        entries = await audit.read(stack.gateway.redis, stack.gateway.keys.audit, 50)
        mine = [e for e in entries if e["detail"].get("sid") == c.sid]
        assert sorted(e["action"] for e in mine) == ["chat_end", "chat_take"]
        assert all(e["who"] == http.name for e in mine)
        assert "help" not in json.dumps(mine).lower()  # no chat text in the audit log
    finally:
        await http.close()
        await c.close()


async def test_no_operator_in_time_tells_the_visitor_who_may_leave_a_message(chat):
    stack = chat
    gw = stack.gateway
    demo = gw.sites["demo"]
    gw.sites = {**gw.sites, "demo": dataclasses.replace(demo, chat_wait_s=0.3)}
    c = await visitor(stack)
    http = await operator(stack, "support")
    try:
        await opened(c)
        n = len(c.frames)
        await c.send_frame({"t": "chat_person", "sid": c.sid})
        told = await frame(
            c, lambda f: f["t"] == "chat_turn" and f["turn"].get("note") == "wait_expired", n
        )
        assert told["turn"]["role"] == "system"
        back = await frame(c, of("chat_state", state="assistant"), n)
        assert back["turns"][-1]["note"] == "wait_expired"
        await c.send_frame({"t": "chat_leave", "sid": c.sid, "text": "call me back", "mid": "l1"})
        left = await frame(c, lambda f: f["t"] == "chat_turn" and f["turn"].get("mid") == "l1", n)
        assert left["turn"]["left"] is True
        view = await (await http.get("/api/view/support")).json()
        assert c.sid in [r["sid"] for r in view["tables"][1]["rows"]]
        assert c.sid not in [r["sid"] for r in view["tables"][0]["rows"]]
        await c.roundtrip()
        assert not [f for f in c.of_type("chat_delta")]  # a left message is not answered
    finally:
        gw.sites = {**gw.sites, "demo": demo}
        await http.close()
        await c.close()


async def test_the_chat_state_follows_the_session_to_a_new_socket(chat):
    c = await visitor(chat)
    await opened(c)
    n = len(c.frames)
    await c.send_frame({"t": "chat_send", "sid": c.sid, "text": QUESTION, "mid": "r1"})
    await frame(c, lambda f: f["t"] == "chat_turn" and f["turn"]["role"] == "assistant", n)
    await c.close()
    # The next page: the same session resumed on a new socket.
    c2 = LifelineClient(chat.ws_url, "demo", c.sid, ORIGIN, binary=False)
    c2.token = c.token
    try:
        assert (await c2.connect())["t"] == "welcome"
        state = await frame(c2, of("chat_state"))
        assert state["state"] == "assistant"
        assert [t["role"] for t in state["turns"]] == ["visitor", "assistant"]
        assert state["turns"][0]["mid"] == "r1"
    finally:
        await c2.close()


async def test_bad_chat_frames_get_codes_and_change_nothing(chat):
    c = await visitor(chat)
    try:
        checks = [
            ({"t": "chat_send", "text": "hi", "mid": "a"}, "not_open"),
            (
                {"t": "chat_send", "sid": "s-someone-else", "text": "hi", "mid": "a"},
                "unknown_session",
            ),
            ({"t": "chat_open", "iid": "no spaces allowed"}, "bad_frame"),
            ({"t": "chat_send", "text": "hi"}, "bad_frame"),
            ({"t": "chat_send", "text": "hi", "mid": "m" * 33}, "bad_frame"),
            ({"t": "chat_send", "text": 5, "mid": "a"}, "bad_frame"),
            ({"t": "chat_send", "text": "   ", "mid": "a"}, "empty_message"),
            ({"t": "chat_send", "text": "x" * 1001, "mid": "a"}, "message_too_long"),
            ({"t": "chat_person"}, "not_open"),
            ({"t": "chat_close"}, "not_open"),
        ]
        for f, code in checks:
            n = len(c.frames)
            await c.send_frame({"sid": c.sid, **f})
            err = await frame(c, of("error"), n)
            assert err["code"] == code, (f, err)
        assert (await opened(c))["state"] == "assistant"
        n = len(c.frames)
        await c.send_frame({"t": "chat_open", "sid": c.sid})
        assert (await frame(c, of("error"), n))["code"] == "already_open"
        r = chat.gateway.redis
        assert await r.llen(chat.gateway.keys.chat("demo", c.sid)) == 0  # nothing stored
    finally:
        await c.close()


async def test_without_an_assistant_the_visitor_gets_a_person_never_a_spinner(chat):
    handle = chat.gateway.chat.assistant
    chat.gateway.chat.assistant = None
    c = await visitor(chat)
    try:
        await opened(c)
        n = len(c.frames)
        await c.send_frame({"t": "chat_send", "sid": c.sid, "text": QUESTION, "mid": "f1"})
        turn = await frame(
            c, lambda f: f["t"] == "chat_turn" and f["turn"]["role"] == "assistant", n
        )
        assert turn["turn"]["text"] == PERSON_WILL_ANSWER
        assert (await frame(c, of("chat_state"), n))["state"] == "waiting_for_person"
    finally:
        chat.gateway.chat.assistant = handle
        await c.close()


async def test_outcomes_are_counted_on_the_offer_and_erasure_takes_the_chat(chat):
    gw = chat.gateway
    c = await visitor(chat)
    iid = f"i-{c.sid[-12:]}-3"
    await gw.redis.hset(gw.keys.intervention(iid), mapping={"sid": c.sid, "site": "demo"})
    other = "i-not-this-sessions-1"
    await gw.redis.hset(gw.keys.intervention(other), mapping={"sid": "s-another", "site": "demo"})
    try:
        await opened(c, iid)
        n = len(c.frames)
        await c.send_frame({"t": "chat_send", "sid": c.sid, "text": QUESTION, "mid": "o1"})
        await frame(c, lambda f: f["t"] == "chat_turn" and f["turn"]["role"] == "assistant", n)
        await c.send_frame({"t": "chat_close", "sid": c.sid})
        await frame(c, of("chat_state", state="ended"), n)
        rec = await gw.redis.hgetall(gw.keys.intervention(iid))
        assert rec[b"chat_opened"] == b"1" and rec[b"chat_messages"] == b"1"
        assert rec[b"chat_resolved"] == b"1" and b"chat_handoff" not in rec
        # Another session's offer gets nothing, however the client names it.
        await c.send_frame({"t": "chat_open", "sid": c.sid, "iid": other})
        await frame(c, of("chat_state", state="assistant"), n + 3)
        assert b"chat_opened" not in await gw.redis.hgetall(gw.keys.intervention(other))

        keys = [gw.keys.chat("demo", c.sid), gw.keys.chat_state("demo", c.sid)]
        assert await gw.redis.exists(*keys) == 2
        await gw.eraser.erase_session("demo", c.sid, Retention())
        assert await gw.redis.exists(*keys) == 0
        await gw.chat._expire("demo", c.sid)  # a wait timer that fires after the erasure
        assert await gw.redis.exists(*keys) == 0  # brings nothing back
    finally:
        await c.close()


async def test_the_support_pages_are_for_support_and_admin_only(chat):
    for role, status in (("viewer", 403), ("analyst", 403), ("support", 200), ("admin", 200)):
        http = await operator(chat, role)
        try:
            for path in ("/support", "/api/view/support", "/support/demo/s-12345678"):
                r = await http.get(path, allow_redirects=False)
                assert r.status == status, (role, path, r.status)
            r = await http.post("/api/support/demo/s-12345678/take")
            assert r.status == (403 if status == 403 else 409), (role, r.status)
        finally:
            await http.close()


async def test_the_session_context_reaches_the_prompt_only_with_personalization_consent(chat):
    import time

    prompts = {}
    for consent in (("necessary", "analytics", "personalization"), ("necessary", "analytics")):
        c = await visitor(chat, consent)
        try:
            ev = {"type": "page_view", "seq": 1, "ts": int(time.time() * 1000), "path": "/cart"}
            await c.send_events([ev])
            await c.wait_acked(1)
            await chat.gateway.wait_scored(c.sid, 1)  # the shard holds the session's context
            await opened(c)
            n, asked = len(c.frames), len(chat.stub.requests)
            await c.send_frame({"t": "chat_send", "sid": c.sid, "text": QUESTION, "mid": "p1"})
            await frame(c, lambda f: f["t"] == "chat_turn" and f["turn"]["role"] == "assistant", n)
            assert len(chat.stub.requests) == asked + 1
            prompts[len(consent)] = json.dumps(chat.stub.requests[-1])
        finally:
            await c.close()
    assert "Page type: cart" in prompts[3]
    assert "About the visitor" not in prompts[2] and "Page type" not in prompts[2]


async def test_a_help_button_chat_shows_where_the_visitor_was_and_is_tallied(chat):
    """No offer led to it: the queue shows the page and signals when it was queued, and the
    Live page's tallies count it as a Help-button chat (without personalization consent)."""
    import time

    from actors.core.tally import MINUTE_MS, chat_field

    gw = chat.gateway
    c = await visitor(chat, ("necessary", "analytics"))
    http = await operator(chat, "admin")
    m0 = int(time.time() * 1000) // MINUTE_MS  # the test ends within the next minute
    minutes = [gw.keys.tally_minute("demo", m) for m in (m0, m0 + 1)]

    async def counted(what: str) -> int:
        hashes = [await gw.redis.hgetall(k) for k in minutes]
        return sum(int(h.get(chat_field(what, "button").encode(), 0)) for h in hashes)

    before = {w: await counted(w) for w in ("opened", "handoff")}
    try:
        now = int(time.time() * 1000) - 1000
        events = [{"type": "page_view", "seq": 1, "ts": now, "path": "/cart"}] + [
            {"type": "click", "seq": s, "ts": now + 100 * s, "selector": "#pay", "x": 40, "y": 50}
            | {"reacted": True}
            for s in range(2, 8)
        ]
        await c.send_events(events)
        await c.wait_acked(7)
        await gw.wait_scored(c.sid, 7)
        await opened(c)
        n = len(c.frames)
        await c.send_frame({"t": "chat_person", "sid": c.sid})
        await frame(c, of("chat_state", state="waiting_for_person"), n)
        queue = await (await http.get("/api/view/support")).json()
        (row,) = [r for r in queue["tables"][0]["rows"] if r["sid"] == c.sid]
        assert row["offer"] == "Help button" and row["page"] == "cart"
        assert "rage_click" in row["signals"]
        assert await counted("opened") == before["opened"] + 1
        assert await counted("handoff") == before["handoff"] + 1
        live = await (await http.get("/api/view/live")).json()
        (chats,) = [t for t in live["tables"] if t["id"] == "chats"]
        opened_row = next(r for r in chats["rows"] if r["what"] == "Chats opened")
        assert opened_row["button"] >= 1
    finally:
        await http.close()
        await c.close()


async def test_an_answer_follows_the_visitor_to_another_gateway_mid_stream(chat):
    """The question was asked on one gateway; the page navigated and its socket is on
    another gateway when the answer streams: the deltas and the final turn reach it there."""
    from serve.dev.llm_stub import ok

    side = chat.side_gateway()
    port = await side.start("127.0.0.1", 0)
    c = await visitor(chat)
    c2 = None
    try:
        await opened(c)
        chat.stub.push(ok(first_token_s=1.5))  # time for the navigation before the answer
        asked = len(chat.stub.requests)
        await c.send_frame({"t": "chat_send", "sid": c.sid, "text": QUESTION, "mid": "g1"})
        await chat.stub.wait_requests(asked + 1)
        await c.close()
        c2 = LifelineClient(f"ws://127.0.0.1:{port}/ws", "demo", c.sid, ORIGIN, binary=False)
        c2.token = c.token
        assert (await c2.connect())["t"] == "welcome"
        final = await frame(
            c2, lambda f: f["t"] == "chat_turn" and f["turn"]["role"] == "assistant"
        )
        assert final["replace"] is True and final["turn"]["citations"]
        assert [f for f in c2.of_type("chat_delta") if f["id"] == final["turn"]["id"]]
        # the path the model named is shown as the article's title
        assert "/help/" not in final["turn"]["text"]
        assert final["turn"]["citations"][0]["title"] in final["turn"]["text"]
    finally:
        if c2 is not None:
            await c2.close()
        await side.stop()
