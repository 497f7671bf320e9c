"""A session's help-chat memory in Redis: bounded, expiring with the site's ``chats`` retention.

One list per session (``Keys.chat``, JSON turns ``{"role", "text", "ts"[, "name"]}``),
appended atomically by a Lua script that also trims it to the last
``CHAT_TURNS_MAX`` turns and ``CHAT_BYTES_MAX`` bytes (oldest first) and
renews its expiry to the site's ``chats`` retention (actors/core/retention.py;
the session's week by default), so an abandoned chat disappears on the
site's schedule, counted from its last turn.

The turns are the visitor's own free text: the data-rights work must erase
(:meth:`ChatMemory.erase`) and export (:meth:`ChatMemory.history`) them with
the session. Nothing here logs a turn's text.

Limits: a single turn larger than the byte bound is still kept (alone); the
caller bounds a turn's length (actors/core/chat.py ``ChatLimits.max_chars``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from actors.core.retention import Retention
from cluster.keys import CHAT_BYTES_MAX, CHAT_TURNS_MAX, Keys

# KEYS[1] the list; ARGV: ttl, max turns, max bytes, turn JSON...
APPEND_TURNS_LUA = """
for i = 4, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local total = 0
for _, v in ipairs(items) do total = total + #v end
local i = 1
while total > tonumber(ARGV[3]) and i < #items do
  redis.call('LPOP', KEYS[1])
  total = total - #items[i]
  i = i + 1
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return redis.call('LLEN', KEYS[1])
"""


class ChatMemory:
    """Append, read and erase a session's chat turns (``redis.asyncio`` client)."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        ttl_s: int | None = None,
        max_turns: int = CHAT_TURNS_MAX,
        max_bytes: int = CHAT_BYTES_MAX,
        retention: Callable[[str], Retention] = lambda site: Retention(),
    ) -> None:
        """``retention``: a site's retention (its ``chats`` is the memory's TTL); ``ttl_s``,
        when set, overrides it for every site (tests, a deployment's setting)."""
        self.redis = redis
        self.keys = Keys(prefix)
        self.ttl_s, self.max_turns, self.max_bytes = ttl_s, max_turns, max_bytes
        self.retention = retention
        self._append = redis.register_script(APPEND_TURNS_LUA)

    def ttl(self, site: str) -> int:
        """Seconds ``site``'s chat memory is kept after its last turn."""
        return self.ttl_s if self.ttl_s else self.retention(site).chats

    async def append(self, site: str, sid: str, turns: Iterable[Mapping[str, Any]]) -> int:
        """Add turns (oldest first) atomically; returns how many turns the memory holds."""
        raw = [json.dumps(dict(t), ensure_ascii=False, separators=(",", ":")) for t in turns]
        if not raw:
            return 0
        return int(
            await self._append(
                keys=[self.keys.chat(site, sid)],
                args=[self.ttl(site), self.max_turns, self.max_bytes, *raw],
            )
        )

    async def history(self, site: str, sid: str) -> list[dict[str, Any]]:
        """The turns held, oldest first (also the export of a data-access request)."""
        out = []
        for v in await self.redis.lrange(self.keys.chat(site, sid), 0, -1):
            try:
                out.append(json.loads(v))
            except ValueError:
                continue  # not ours; never fail a chat over it
        return out

    async def erase(self, site: str, sid: str) -> int:
        """Delete the session's chat memory (an erasure request); 1 if there was one."""
        return int(await self.redis.delete(self.keys.chat(site, sid)))
