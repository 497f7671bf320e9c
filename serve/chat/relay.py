"""The gateway's part of the help chat: frames in, the stored chat changed, answers streamed out.

One :class:`ChatRelay` per gateway. A chat frame that passed the protocol
core (:meth:`serve.edge.protocol.Connection.chat`) is applied to the
session's stored chat (serve/chat/store.py) in a task of its own, so a
streaming answer never holds up the socket's events; a session's frames
are applied in the order they came (one lock per session, held for the
Redis change only, not for a stream).

A visitor message in the assistant's hands goes to the ChatAssistant Serve
deployment (``handle.options(stream=True).answer.remote(req)``): each
``delta`` becomes a ``chat_delta`` frame, the ``final`` one ``chat_turn``
with ``replace: true``; its ``handoff`` moves the chat to
waiting_for_person. Without a deployment, or when the call fails, the
visitor gets the fallback turn (a person will answer) and the chat is
queued: never a spinner.

Frames caused elsewhere (an operator's reply, a wait that expired on
another gateway) arrive on the ``chatev`` channel and go to this gateway's
socket of the session, if it has one.

Limits: the wait timer lives in the gateway that queued the chat; if that
gateway stops, the expiry is applied by the next frame, hello or console
read of the chat (every change first applies an overdue expiry). Chat text
is never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from actors.core.chat import (
    ASSISTANT,
    END_VISITOR,
    WAITING,
    Chat,
    ChatLimits,
    ChatRefused,
)
from serve.apps.chat_answer import fallback, redact
from serve.chat.outcomes import record_outcome
from serve.chat.store import TO_OPS, TO_VISITOR, Change, ChatStore
from serve.edge.protocol import ChatRequest, error

log = logging.getLogger("lifeline.chat")

ANSWER_TIMEOUT_S = 40.0  # the assistant's own budgets end sooner; this guards a lost replica
CONTEXT_TIMEOUT_S = 0.5  # the shard's session context; without it the answer has no context
DEFAULT_WAIT_S = 120.0


class ChatRelay:
    """Help-chat frames of one gateway (see the module docstring)."""

    def __init__(self, gateway: Any, assistant: Any = None) -> None:
        self.gw = gateway
        self.store = ChatStore(gateway.redis, gateway.keys)
        self.assistant = assistant  # a DeploymentHandle of ChatAssistant, or None
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # -- plumbing ---------------------------------------------------------------------

    def limits(self, site: str) -> ChatLimits:
        s = self.gw.sites.get(site)
        return ChatLimits(person_wait_s=getattr(s, "chat_wait_s", DEFAULT_WAIT_S))

    def ttl_s(self, site: str) -> int | None:
        """The chat is the visitor's own text: kept the site's `chats` retention, no longer."""
        s = self.gw.sites.get(site)
        return s.retention.chats if s is not None else None

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.warning("a chat task failed: %s", type(exc).__name__)  # no text: never the message

    def _send(self, sid: str, frame: dict[str, Any]) -> bool:
        """To this gateway's socket of ``sid``, if it still carries the session (then True)."""
        peer = self.gw.peers_by_sid.get(sid)
        if peer is not None and peer.conn is not None and sid in peer.conn.sessions:
            peer.send(frame)
            return True
        return False

    async def _deliver(self, site: str, sid: str, frame: dict[str, Any]) -> None:
        """To the visitor wherever their socket is now: this gateway's, else through the
        channel to the gateway that has it (a page navigation mid-answer may land there)."""
        if not self._send(sid, frame):
            await self.store.publish(site, sid, TO_VISITOR, frame)

    async def _change(self, site: str, sid: str, step: Callable[[Chat], Any], **kw: Any) -> Change:
        """One stored change; an overdue wait for a person is applied first."""
        lock = self._locks.setdefault(sid, asyncio.Lock())
        now = time.time()

        def with_expiry(c: Chat) -> Any:
            c.wait_expired(now)
            return step(c)

        async with lock:
            ch = await self.store.change(
                site, sid, with_expiry, self.limits(site), now=now, ttl_s=self.ttl_s(site), **kw
            )
        if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
            self._locks.pop(sid, None)
        return ch

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- frames from the visitor --------------------------------------------------------

    def on_frame(self, peer: Any, frame: dict[str, Any]) -> None:
        """A chat frame: checked now, applied in a task (replies go to ``peer``)."""
        req = peer.conn.chat(frame)
        if isinstance(req, dict):
            peer.send(req)
            return
        self.spawn(self._apply(peer, req))

    async def _apply(self, peer: Any, req: ChatRequest) -> None:
        site, sid, now = req.site, req.sid, time.time()

        def close(c: Chat) -> bool:
            resolved = c.resolved_by_assistant
            c.end(now, END_VISITOR)
            return c.resolved_by_assistant > resolved  # resolved by the assistant

        try:
            if req.kind == "chat_open":
                ch = await self._change(site, sid, lambda c: c.open(now, req.iid))
                await record_outcome(self.gw.redis, self.gw.keys, site, sid, ch.chat.iid, "opened")
            elif req.kind in ("chat_send", "chat_leave"):
                await self._message(peer, req, now)
                return
            elif req.kind == "chat_person":
                ch = await self._change(site, sid, lambda c: c.request_person(now))
            else:  # chat_close
                ch = await self._change(site, sid, close)
                self._unschedule(sid)
                if ch.result:
                    await record_outcome(
                        self.gw.redis, self.gw.keys, site, sid, ch.chat.iid, "resolved"
                    )
        except ChatRefused as e:
            peer.send(error(e.code, e.detail or e.code, sid=sid, mid=req.mid))
            return
        except Exception as exc:  # the store failed: said, machine-readable
            log.warning("chat change failed: %s", type(exc).__name__)
            peer.send(error("chat_unavailable", "the chat cannot be reached now", sid=sid))
            return
        await self._after(site, sid, ch)

    async def _after(self, site: str, sid: str, ch: Change) -> None:
        """The visitor gets the new state (wherever their socket is); the console hears of
        the change; the wait timer follows the state."""
        if ch.chat.state == WAITING and ch.before != WAITING:
            self._schedule(site, sid, ch.chat.limits.person_wait_s)
            await record_outcome(self.gw.redis, self.gw.keys, site, sid, ch.chat.iid, "handoff")
            if not ch.chat.iid:
                await self._note_where(site, sid)
        elif ch.chat.state != WAITING:
            self._unschedule(sid)
        await self._deliver(site, sid, await self.store.state_frame(site, sid, ch.chat))
        await self.store.publish(site, sid, TO_OPS, {"state": ch.chat.state})

    async def _message(self, peer: Any, req: ChatRequest, now: float) -> None:
        """A visitor message (or a left message): stored, echoed, answered when the assistant has it."""
        site, sid = req.site, req.sid
        text = redact(req.text or "")  # e-mails and digit runs never stored (nor echoed)
        left = req.kind == "chat_leave"
        extra: dict[str, Any] = {"mid": req.mid, "left": True if left else None}
        try:
            ch = await self._change(
                site, sid, lambda c: c.visitor_says(text, now), extra=extra, mid=req.mid
            )
        except ChatRefused as e:
            peer.send(error(e.code, e.detail or e.code, sid=sid, mid=req.mid))
            return
        except Exception as exc:
            log.warning("chat change failed: %s", type(exc).__name__)
            peer.send(error("chat_unavailable", "the chat cannot be reached now", sid=sid))
            return
        if ch.duplicate:  # a resend after a reconnect: stored once; the state says what is there
            self._send(sid, await self.store.state_frame(site, sid, ch.chat))
            return
        for turn in ch.turns:
            self._send(sid, {"t": "chat_turn", "sid": sid, "turn": turn, "replace": False})
        await record_outcome(self.gw.redis, self.gw.keys, site, sid, ch.chat.iid, "message")
        if left:
            await self.store.leave_message(site, sid, int(now * 1000))
        await self.store.publish(site, sid, TO_OPS, {"state": ch.chat.state})
        if ch.chat.state == ASSISTANT and not left:
            mine = {t["id"] for t in ch.turns}
            await self._answer(req, text, mine)

    # -- the assistant's answer ---------------------------------------------------------

    async def _shard_context(self, sid: str) -> dict[str, Any]:
        """The session's context from its shard (the nudges' builder), or {} if not in time."""
        try:
            shard = self.gw.shards[self.gw.ring.owner(sid)]
            got = await asyncio.wait_for(shard.chat_context.remote(sid), CONTEXT_TIMEOUT_S)
            return dict(got or {})
        except Exception as exc:  # no context beats no answer
            log.info("no session context for a chat: %s", type(exc).__name__)
            return {}

    async def _context(self, req: ChatRequest) -> dict[str, Any]:
        """The session's context for the assistant, with this socket's consent.

        The assistant puts it in the prompt only with personalization consent,
        so without it the shard is not even asked.
        """
        ctx = await self._shard_context(req.sid) if "personalization" in req.consent else {}
        ctx["consent"] = list(req.consent)  # this socket's, the latest the visitor gave
        return ctx

    async def _note_where(self, site: str, sid: str) -> None:
        """For the support queue: the page type and signals of a chat no offer led to.

        (An offer's chat shows its decision's own; the operator, not a prompt, reads
        these, so they need no personalization consent.)
        """
        ctx = await self._shard_context(sid)
        signals = sorted((ctx.get("signals") or {}).items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{name} {value:.2f}" for name, value in signals[:6])
        await self.store.set_where(site, sid, str(ctx.get("page_type") or ""), text)

    async def _stream(self, body: dict[str, Any], tid: str, site: str, sid: str) -> dict[str, Any]:
        final: dict[str, Any] | None = None
        gen = self.assistant.options(stream=True).answer.remote(body)
        async for item in gen:
            if item.get("t") == "delta":
                delta = {"t": "chat_delta", "sid": sid, "id": tid, "text": item["text"]}
                await self._deliver(site, sid, delta)
            else:
                final = item
        if final is None or final.get("source") == "error" or not final.get("text"):
            raise RuntimeError("no final answer")
        return final

    async def _answer(self, req: ChatRequest, text: str, exclude: set[str]) -> None:
        site, sid = req.site, req.sid
        tid = "a" + uuid.uuid4().hex[:12]  # the deltas' id, and the final turn's
        history = [t for t in await self.store.transcript(site, sid) if t.get("id") not in exclude]
        body = {
            "site": site,
            "sid": sid,
            "text": text,
            "ctx": await self._context(req),
            "person_available": True,  # the support queue: a person may take the chat
            "history": history,
            "remember": False,  # this relay keeps the transcript
        }
        try:
            if self.assistant is None:
                raise RuntimeError("no assistant deployed")
            final = await asyncio.wait_for(self._stream(body, tid, site, sid), ANSWER_TIMEOUT_S)
        except Exception as exc:
            log.warning("chat answer fell back: %s", type(exc).__name__)
            final = {**fallback(None, True), "replace": True, "source": "fallback"}
        now = time.time()
        handoff = bool(final.get("handoff"))

        def says(c: Chat) -> None:
            c.assistant_says(final["text"], now)
            if handoff:
                c.request_person(now)

        extra = {
            "id": tid,
            "citations": final.get("citations") or [],
            "offer_person": bool(final.get("offer_person")) or None,
        }
        try:
            ch = await self._change(site, sid, says, extra=extra)
        except ChatRefused:
            # The chat moved on meanwhile (a person was asked for, or it ended): the
            # answer is shown, not kept, and the state stays as the visitor made it.
            turn = {"id": tid, "role": "assistant", "text": final["text"], "ts": int(now * 1000)}
            await self._deliver(
                site, sid, {"t": "chat_turn", "sid": sid, "turn": turn, "replace": True}
            )
            return
        for turn in ch.turns:
            replace = turn["role"] == "assistant"
            frame = {"t": "chat_turn", "sid": sid, "turn": turn, "replace": replace}
            await self._deliver(site, sid, frame)
        if handoff:
            await self._after(site, sid, ch)
        else:
            await self.store.publish(site, sid, TO_OPS, {"state": ch.chat.state})

    # -- waiting for a person -----------------------------------------------------------

    def _schedule(self, site: str, sid: str, wait_s: float) -> None:
        self._unschedule(sid)
        loop = asyncio.get_running_loop()
        self._timers[sid] = loop.call_later(
            wait_s + 0.05, lambda: self.spawn(self._expire(site, sid))
        )

    def _unschedule(self, sid: str) -> None:
        timer = self._timers.pop(sid, None)
        if timer is not None:
            timer.cancel()

    async def _expire(self, site: str, sid: str) -> None:
        """No one took the chat in time: the visitor is told (wherever their socket is)."""
        self._timers.pop(sid, None)
        ch = await self._change(site, sid, lambda c: None)
        if ch.before == WAITING and ch.chat.state != WAITING:
            for turn in ch.turns:
                frame = {"t": "chat_turn", "sid": sid, "turn": turn, "replace": False}
                await self._deliver(site, sid, frame)
            await self._after(site, sid, ch)

    # -- hello and the channel ----------------------------------------------------------

    async def restore(self, site: str, sid: str) -> None:
        """After a welcome: an open chat's full state goes to the socket (page navigations)."""
        raw = await self.gw.redis.hget(self.store.keys.chat_state(site, sid), "state")
        if raw is None or raw.decode() not in ("assistant", "waiting_for_person", "person"):
            return
        ch = await self._change(site, sid, lambda c: None)
        if ch.chat.state == WAITING and sid not in self._timers:
            left = ch.chat.limits.person_wait_s - (time.time() - (ch.chat.waiting_since or 0))
            self._schedule(site, sid, max(0.0, left))
        self._send(sid, await self.store.state_frame(site, sid, ch.chat))

    def on_channel(self, data: bytes | str) -> None:
        """A message of the ``chatev`` channel: a frame for this gateway's socket, if any."""
        try:
            msg = json.loads(data)
        except ValueError:
            return
        if (
            isinstance(msg, dict)
            and msg.get("to") == TO_VISITOR
            and isinstance(msg.get("frame"), dict)
        ):
            self._send(str(msg.get("sid")), msg["frame"])
