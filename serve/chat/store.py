"""A session's help chat in Redis, the one record every gateway and the console share.

Three keys per chat (cluster/keys.py): the state hash ``chatst:{site}:{sid}``
(the pure machine of actors/core/chat.py without its turns, the turn
counter, the recent client message ids, and where the visitor was when the
chat was queued: page type and signal names; no text), the transcript
``chat:{site}:{sid}`` (the chat memory of serve/apps/chat_memory.py: every
turn the visitor sees, as wire turns) and, per site, the support queue
``chatq:{site}`` (sids waiting for a person) and the left messages
``chatleft:{site}`` (sids only). :meth:`ChatStore.change` loads the machine,
applies one transition and writes the result in one optimistic transaction
(WATCH on the state hash), so two gateways, or a gateway and the console,
never overwrite each other's change.

Changes are announced on the ``chatev`` channel: ``to: "visitor"`` frames
go to whichever gateway holds the session's socket, ``to: "ops"`` tells
the console's Support pages to refresh.

Both of a chat's keys expire the site's chats retention after its last
change (``ttl_s``): the chat is the visitor's own text, kept no longer.

Limits: a queue entry of an erased session stays until the console lists
the queue and finds no state (it is dropped then); the transcript is
bounded like the chat memory (turns and bytes); nothing here logs text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import WatchError

from actors.core.chat import (
    ASSISTANT_ROLE,
    CLOSED,
    OPERATOR,
    SYSTEM,
    VISITOR,
    WAITING,
    Chat,
    ChatLimits,
    Turn,
)
from cluster.keys import SESSION_TTL_S, Keys
from serve.apps.chat_memory import APPEND_TURNS_LUA, ChatMemory

T = TypeVar("T")
MIDS_KEPT = 64  # client message ids remembered per chat, to refuse a resend twice
TO_VISITOR, TO_OPS = "visitor", "ops"


def wire_turn(turn: Turn, tid: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A turn as the protocol's TURN (docs/PROTOCOL.md "Help chat")."""
    out: dict[str, Any] = {"id": tid, "role": turn.role, "text": turn.text}
    out["ts"] = int(turn.ts * 1000)
    if turn.name is not None and turn.role in (OPERATOR, SYSTEM):
        out["by"] = turn.name
    if turn.note is not None:
        out["note"] = turn.note
    if extra and turn.role in (VISITOR, ASSISTANT_ROLE):
        out.update({k: v for k, v in extra.items() if v is not None})
    return out


def agent_of(chat: Chat) -> dict[str, str] | None:
    """Who answers now: the assistant, the operator who took it, or nobody (closed/ended)."""
    if chat.state == "person" and chat.operator:
        return {"kind": "person", "name": chat.operator}
    if chat.is_open:
        return {"kind": "assistant", "name": "Assistant"}
    return None


@dataclass
class Change:
    """What one :meth:`ChatStore.change` did: the machine after it, its result, the new turns."""

    chat: Chat
    result: Any
    turns: list[dict[str, Any]] = field(default_factory=list)
    before: str = ""  # the state before
    duplicate: bool = False  # the mid was seen before: nothing changed


class ChatStore:
    """Load, change and announce help chats (``redis.asyncio`` client)."""

    def __init__(self, redis: Any, keys: Keys, ttl_s: int = SESSION_TTL_S) -> None:
        self.redis, self.keys, self.ttl_s = redis, keys, ttl_s
        self.memory = ChatMemory(redis, keys.prefix, ttl_s=ttl_s)

    def _decode(self, raw: bytes | None, limits: ChatLimits) -> tuple[Chat, dict[str, Any]]:
        if not raw:
            return Chat(limits), {"n": 0, "mids": []}
        doc = json.loads(raw)
        return Chat.from_dict(doc["chat"], limits), {"n": doc["n"], "mids": doc["mids"]}

    async def load(self, site: str, sid: str, limits: ChatLimits | None = None) -> Chat:
        """The chat's machine now (closed if it never opened); its turns are not loaded."""
        raw = await self.redis.hget(self.keys.chat_state(site, sid), "c")
        return self._decode(raw, limits or ChatLimits())[0]

    async def transcript(self, site: str, sid: str) -> list[dict[str, Any]]:
        """The turns the visitor has seen, oldest first (wire turns)."""
        return await self.memory.history(site, sid)

    async def change(
        self,
        site: str,
        sid: str,
        step: Callable[[Chat], T],
        limits: ChatLimits | None = None,
        extra: dict[str, Any] | None = None,
        mid: str | None = None,
        now: float | None = None,
        ttl_s: int | None = None,
    ) -> Change:
        """Apply ``step`` to the stored machine and write the result atomically.

        ``step`` raises :class:`actors.core.chat.ChatRefused` to refuse (nothing
        is written). ``extra`` decorates the visitor or assistant turns it adds
        (mid, citations, offer_person). With ``mid``, a message id seen
        before makes this a no-op (``duplicate``). ``ttl_s``: how long the chat is kept
        after this change (the site's chats retention; default the store's).
        """
        ttl = ttl_s or self.ttl_s
        limits = limits or ChatLimits()
        hkey, lkey = self.keys.chat_state(site, sid), self.keys.chat(site, sid)
        queue = self.keys.chat_queue(site)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(hkey)
                    raw = await pipe.hget(hkey, "c")
                    chat, meta = self._decode(raw, limits)
                    before = chat.state
                    if mid is not None and mid in meta["mids"]:
                        await pipe.unwatch()
                        return Change(chat, None, before=before, duplicate=True)
                    result = step(chat)
                    if raw is None and chat.state == CLOSED and not chat.turns:
                        # Nothing to keep: never create a record for a chat that never opened
                        # (a late timer after an erasure must not bring a key back).
                        await pipe.unwatch()
                        return Change(chat, result, before=before)
                    turns = []
                    for t in chat.turns:
                        meta["n"] += 1
                        turns.append(wire_turn(t, f"t{meta['n']}", extra))
                    chat.turns.clear()
                    if mid is not None:
                        meta["mids"] = (meta["mids"] + [mid])[-MIDS_KEPT:]
                    doc = {"chat": chat.to_dict(), **meta}
                    pipe.multi()
                    pipe.hset(hkey, mapping={"c": json.dumps(doc), "state": chat.state})
                    pipe.expire(hkey, ttl)
                    if turns:
                        raw = [json.dumps(t, ensure_ascii=False) for t in turns]
                        # EVAL, not the registered script's EVALSHA: a transaction on
                        # Redis Cluster does not load scripts first (NOSCRIPT).
                        pipe.eval(
                            APPEND_TURNS_LUA,
                            1,
                            lkey,
                            ttl,
                            self.memory.max_turns,
                            self.memory.max_bytes,
                            *raw,
                        )
                    await pipe.execute()
                    # The site's queue is another slot than the chat's (Redis Cluster):
                    # updated just after, so a gateway that dies between the two leaves
                    # a waiting chat off the queue until its next change.
                    if chat.state == WAITING and before != WAITING:
                        await self.redis.zadd(queue, {sid: int((now or time.time()) * 1000)})
                    elif chat.state != WAITING and before == WAITING:
                        await self.redis.zrem(queue, sid)
                    return Change(chat, result, turns, before)
                except WatchError:
                    continue

    async def leave_message(self, site: str, sid: str, when_ms: int) -> None:
        """Put the session on the site's left-messages list for operators."""
        await self.redis.zadd(self.keys.chat_left(site), {sid: when_ms})

    async def publish(self, site: str, sid: str, to: str, frame: dict[str, Any]) -> None:
        """Announce a frame for the visitor's socket (``to`` visitor) or a change (``to`` ops)."""
        msg = {"site": site, "sid": sid, "to": to, "frame": frame}
        await self.redis.publish(self.keys.chat_events, json.dumps(msg, ensure_ascii=False))

    async def state_frame(self, site: str, sid: str, chat: Chat | None = None) -> dict[str, Any]:
        """The full ``chat_state`` frame of a session (docs/PROTOCOL.md)."""
        if chat is None:
            chat = await self.load(site, sid)
        frame: dict[str, Any] = {"t": "chat_state", "sid": sid, "state": chat.state}
        agent = agent_of(chat)
        if agent is not None:
            frame["agent"] = agent
        frame["turns"] = await self.transcript(site, sid) if chat.state != "closed" else []
        if chat.state == WAITING and chat.waiting_since is not None:
            left = chat.limits.person_wait_s - (time.time() - chat.waiting_since)
            frame["wait_s"] = max(0, round(left))
        return frame

    async def set_where(self, site: str, sid: str, page: str, signals: str) -> None:
        """Where the visitor was when the chat was queued (page type, signal names): what
        the support queue shows for a chat no offer led to. Never text or personal data."""
        hkey = self.keys.chat_state(site, sid)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(hkey, mapping={"page": page[:64], "sig": signals[:256]})
            pipe.ttl(hkey)
            _, ttl = await pipe.execute()
        if ttl == -1:  # the state hash was gone: these fields alone must not outlive it
            await self.redis.delete(hkey)

    async def where(self, site: str, sid: str) -> tuple[str, str]:
        """(page type, signals) stored by :meth:`set_where`, or ("", "")."""
        page, sig = await self.redis.hmget(self.keys.chat_state(site, sid), "page", "sig")
        return (page or b"").decode(), (sig or b"").decode()

    async def waiting(self, site: str) -> list[tuple[str, int]]:
        """The site's queue, longest waiting first: (sid, waiting since ms)."""
        rows = await self.redis.zrange(self.keys.chat_queue(site), 0, -1, withscores=True)
        return [(s.decode() if isinstance(s, bytes) else s, int(t)) for s, t in rows]

    async def left(self, site: str) -> list[tuple[str, int]]:
        """Sessions with a left message, newest first: (sid, when ms)."""
        rows = await self.redis.zrevrange(self.keys.chat_left(site), 0, 199, withscores=True)
        return [(s.decode() if isinstance(s, bytes) else s, int(t)) for s, t in rows]

    async def drop_stale(self, site: str, sids: list[str]) -> None:
        """Forget queue and left-message entries of sessions whose chat is gone (erased, expired)."""
        if sids:
            await self.redis.zrem(self.keys.chat_queue(site), *sids)
            await self.redis.zrem(self.keys.chat_left(site), *sids)
