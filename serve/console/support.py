"""The Support pages: the help chats waiting for a person, and one chat taken over by an operator.

``/support`` lists each site's queue (how long each chat has waited, the
page type and the signals of the intervention that led to it, or, for a
chat opened with the Help button, where the visitor was when it was queued) and the
messages visitors left when no one came; ``/support/{site}/{sid}`` shows
one chat: its state, the conversation, and the session's journey (the
Session page's timeline, serve/console/explorer_view.py), with "Take",
"End" and a reply box. Both stay current over server-sent events
(``/api/support/stream``), pushed when a gateway or another operator
changes a chat (the ``chatev`` channel, serve/chat/store.py), as the Live
page is.

Roles: ``support`` and ``admin``. Take and End are audited (who, site,
sid; never chat text). The chat is changed through the same store and
state machine the gateways use, so a reply reaches the visitor live
whichever gateway holds their socket.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from actors.core.chat import END_OPERATOR, WAITING, Chat, ChatLimits, ChatRefused
from serve.chat.store import TO_OPS, TO_VISITOR, Change, ChatStore
from serve.console import explorer, explorer_view
from serve.console.audit import record_action
from serve.console.auth import error, json_body
from serve.console.live import event_stream
from serve.console.routing import Route
from serve.console.shapes import View, col, table, when

STREAM_REFRESH_S = 5.0  # waiting times move on even when no chat changes
QUEUE_ROWS = 50


def _store(request: web.Request) -> ChatStore:
    ctx = request.app["ctx"]
    return ChatStore(ctx.redis, ctx.keys)


def _limits(ctx: Any, site: str) -> ChatLimits:
    s = ctx.sites.get(site)
    return ChatLimits(person_wait_s=getattr(s, "chat_wait_s", 120.0))


def _chat_of(request: web.Request) -> tuple[str, str] | web.Response:
    ctx = request.app["ctx"]
    site = request.match_info.get("site") or request.query.get("site", "")
    sid = request.match_info.get("sid") or request.query.get("sid", "")
    if site not in ctx.sites:
        return error(404, "unknown_site", f"no site {site!r}")
    if not explorer.SID_RE.fullmatch(sid):
        return error(400, "bad_sid", "sid must be 1-128 of [A-Za-z0-9_-]")
    return site, sid


async def _queue_rows(ctx: Any, store: ChatStore, site: str) -> list[dict[str, Any]]:
    waiting = (await store.waiting(site))[:QUEUE_ROWS]
    states = await asyncio.gather(*(store.load(site, sid) for sid, _ in waiting))
    stale = [sid for (sid, _), c in zip(waiting, states, strict=True) if c.state != WAITING]
    await store.drop_stale(site, [s for s in stale if not await _exists(ctx, site, s)])
    rows = []
    now = time.time() * 1000
    for (sid, since), chat in zip(waiting, states, strict=True):
        if chat.state != WAITING:
            continue
        offer = next(
            (d for d in await explorer._decisions(ctx, site, sid) if d["iid"] == chat.iid), None
        )
        if offer is not None:
            page = offer.get("page_type") or ""
            signals = ", ".join(f"{r['signal']} {r['strength']}" for r in offer.get("reasons", []))
        else:  # the Help button: where the visitor was when the chat was queued
            page, signals = await store.where(site, sid)
        rows.append(
            {
                "site": site,
                "sid": sid,
                "url": f"/support/{site}/{sid}",
                "waited_s": round((now - since) / 1000),
                "page": page,
                "signals": signals,
                "offer": f"{offer['kind']} ({chat.iid})" if offer else "Help button",
                "_actions": [
                    {"label": "Take", "method": "POST", "url": f"/api/support/{site}/{sid}/take"}
                ],
            }
        )
    return rows


async def _exists(ctx: Any, site: str, sid: str) -> bool:
    return bool(await ctx.redis.exists(ctx.keys.chat_state(site, sid)))


async def queue_view(request: web.Request) -> View:
    """``/api/view/support``: every site's waiting chats and left messages."""
    ctx, store = request.app["ctx"], _store(request)
    rows: list[dict[str, Any]] = []
    left_rows: list[dict[str, Any]] = []
    for site in sorted(ctx.sites):
        rows += await _queue_rows(ctx, store, site)
        for sid, ts in await store.left(site):
            if not await _exists(ctx, site, sid):
                await store.drop_stale(site, [sid])
                continue
            left_rows.append(
                {"site": site, "sid": sid, "url": f"/support/{site}/{sid}", "when": when(ts)}
            )
    return {
        "kpis": [{"label": "Waiting for a person", "value": len(rows)}],
        "tables": [
            table(
                "queue",
                "Waiting chats",
                [
                    col("sid", "Session", link="url"),
                    col("site", "Site"),
                    col("waited_s", "Waited (s)", True),
                    col("page", "Page"),
                    col("signals", "Signals"),
                    col("offer", "Led by"),
                ],
                rows,
                empty="No chat is waiting for a person.",
                csv=False,
            ),
            table(
                "left",
                "Left messages",
                [col("sid", "Session", link="url"), col("site", "Site"), col("when", "Left")],
                left_rows,
                empty="No left messages.",
                csv=False,
            ),
        ],
        "notes": ["Chat text is the visitor's own: it is shown here, never logged or audited."],
    }


async def chat_view(request: web.Request) -> View:
    """``/api/view/chat?site=&sid=``: one chat, its conversation and the session's journey."""
    got = _chat_of(request)
    if isinstance(got, web.Response):
        raise ValueError("bad site or sid")
    site, sid = got
    ctx, store = request.app["ctx"], _store(request)
    chat = await store.load(site, sid, _limits(ctx, site))
    turns = await store.transcript(site, sid)
    actions = []
    if chat.state == WAITING:
        actions.append(
            {"label": "Take", "method": "POST", "url": f"/api/support/{site}/{sid}/take"}
        )
    if chat.is_open:
        actions.append(
            {
                "label": "End",
                "method": "POST",
                "url": f"/api/support/{site}/{sid}/end",
                "secondary": True,
                "confirm": "End this chat?",
            }
        )
    waited = ""
    if chat.state == WAITING and chat.waiting_since:
        waited = round(time.time() - chat.waiting_since)
    state_row = {
        "state": chat.state,
        "operator": chat.operator or "",
        "waited_s": waited,
        "messages": chat.messages,
        "_actions": actions,
    }
    convo = [
        {
            "when": when(t.get("ts")),
            "role": t.get("role", ""),
            "by": t.get("by", ""),
            "text": t.get("text", "") + (" (left message)" if t.get("left") else ""),
        }
        for t in turns
    ]
    view: View = {
        "kpis": [
            {"label": "State", "value": chat.state},
            {"label": "Answering", "value": chat.operator or "assistant"},
        ],
        "tables": [
            table(
                "chat",
                "Chat",
                [
                    col("state", "State"),
                    col("operator", "Operator"),
                    col("waited_s", "Waited (s)", True),
                    col("messages", "Visitor messages", True),
                ],
                [state_row],
                csv=False,
            ),
            table(
                "conversation",
                "Conversation",
                [col("when", "When"), col("role", "Who"), col("by", "Name"), col("text", "Text")],
                convo,
                empty="No messages yet.",
                csv=False,
            ),
        ],
        "forms": [],
    }
    if chat.is_open:  # the server refuses a reply until the chat is taken (409 wrong_state)
        view["forms"].append(
            {
                "id": "reply",
                "title": "Reply",
                "method": "POST",
                "url": f"/api/support/{site}/{sid}/reply",
                "submit": "Send",
                "done": "Sent.",
                "fields": [{"name": "text", "label": "Your reply", "type": "textarea"}],
            }
        )
    try:
        journey = await explorer_view.timeline_view(ctx, site, sid)
    except explorer.ExplorerError:
        journey = {"tables": [], "charts": []}
    for t in journey.get("tables", []):
        view["tables"].append({**t, "id": "journey-" + t["id"], "csv": False})
    view["charts"] = journey.get("charts", [])
    return view


async def _act(request: web.Request, action: str) -> web.Response:
    got = _chat_of(request)
    if isinstance(got, web.Response):
        return got
    site, sid = got
    ctx, store, op = request.app["ctx"], _store(request), request["operator"]
    text = None
    if action == "reply":
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        text = body.get("text")
    now = time.time()

    def step(c: Chat) -> None:
        c.wait_expired(now)
        if action == "take":
            c.operator_joins(op.name, now)
        elif action == "reply":
            c.operator_says(text, now)
        else:
            c.end(now, END_OPERATOR)

    try:
        ch = await store.change(
            site, sid, step, _limits(ctx, site), now=now, ttl_s=ctx.sites[site].retention.chats
        )
    except ChatRefused as e:
        return error(409, e.code, e.detail or f"the chat cannot do {action} now")
    if action != "reply":
        await record_action(request, f"chat_{action}", site=site, sid=sid)
    await _announce(store, site, sid, ch, state=action != "reply")
    return web.json_response({"state": ch.chat.state, "turns": len(ch.turns)})


async def _announce(store: ChatStore, site: str, sid: str, ch: Change, state: bool) -> None:
    """The visitor's socket gets the new turns (and state); the Support pages refresh."""
    for turn in ch.turns:
        frame = {"t": "chat_turn", "sid": sid, "turn": turn, "replace": False}
        await store.publish(site, sid, TO_VISITOR, frame)
    if state:
        await store.publish(site, sid, TO_VISITOR, await store.state_frame(site, sid, ch.chat))
    await store.publish(site, sid, TO_OPS, {"state": ch.chat.state})


async def take(request: web.Request) -> web.Response:
    """``POST /api/support/{site}/{sid}/take``: join a waiting chat (audited)."""
    return await _act(request, "take")


async def reply(request: web.Request) -> web.Response:
    """``POST /api/support/{site}/{sid}/reply`` ``{"text"}``: a reply to the visitor."""
    return await _act(request, "reply")


async def end(request: web.Request) -> web.Response:
    """``POST /api/support/{site}/{sid}/end``: end the chat (audited)."""
    return await _act(request, "end")


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/support/stream[?site=&sid=]``: the queue (or one chat's) view, as SSE.

    Pushed when a chat changes (the ``chatev`` channel) and every few seconds;
    without forms, so a reply being typed is not wiped.
    """
    ctx = request.app["ctx"]
    one = None
    if request.query.get("sid"):
        got = _chat_of(request)
        if isinstance(got, web.Response):
            return got
        one = got
    response = await event_stream(request)
    pubsub = ctx.redis.pubsub()
    await pubsub.subscribe(ctx.keys.chat_events)
    try:
        while True:
            view = await (chat_view(request) if one else queue_view(request))
            view.pop("forms", None)
            await response.write(f"data: {json.dumps(view, default=str)}\n\n".encode())
            deadline = time.monotonic() + STREAM_REFRESH_S
            while (left := deadline - time.monotonic()) > 0:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if msg is None:
                    continue
                try:
                    ev = json.loads(msg["data"])
                except ValueError:
                    continue
                if ev.get("to") == TO_OPS and (one is None or (ev["site"], ev["sid"]) == one):
                    break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        await pubsub.aclose()
    return response


ROUTES = (
    Route("POST", "/api/support/{site}/{sid}/take", take, "support"),
    Route("POST", "/api/support/{site}/{sid}/reply", reply, "support"),
    Route("POST", "/api/support/{site}/{sid}/end", end, "support"),
    Route("GET", "/api/support/stream", stream, "support"),
)
