"""Help-chat outcomes, kept on the record of the intervention that led to the chat.

The outcome report (training/outcomes.py) reads an intervention's record
(``iv:{iid}``, actors/shard/records.py); a chat opened from a help offer
adds counts to it: ``chat_opened``, ``chat_messages``, ``chat_handoff``,
``chat_resolved`` (ended by the visitor after an answer, no person asked
for). Whether the session then converted is the record's own
``converted``, so the report compares sessions that chatted with the
holdout of the same kind of intervention.

Every chat, whether an offer or the site's Help button opened it, is also
counted on the console's tallies of its site, UTC day and minute
(actors/core/tally.py: ``chat:{what}:{origin}``, origin ``offer`` or
``button``), which the Live page shows: a Help-button chat has no
intervention, so no record and no holdout to compare with; its counts say
how much the button is used and how the chats end, not what they caused.

Limits: an iid that is unknown, or another session's, is not counted on a
record (the client names it, so it is checked in the script against the
record's sid and site); the tallies count it as an offer's chat.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from actors.core.tally import DAY_MS, MINUTE_MS, chat_field, day_text
from cluster.keys import TALLY_DAY_TTL_S, TALLY_MINUTE_TTL_S, Keys

log = logging.getLogger("lifeline.chat")

FIELDS = {
    "opened": "chat_opened",
    "message": "chat_messages",
    "handoff": "chat_handoff",
    "resolved": "chat_resolved",
}

# KEYS[1] the record; ARGV: sid, site, field. Never creates a record.
_COUNT = """
local owner = redis.call('HMGET', KEYS[1], 'sid', 'site')
if owner[1] ~= ARGV[1] or owner[2] ~= ARGV[2] then return 0 end
return redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
"""


async def record_outcome(
    redis: Any, keys: Keys, site: str, sid: str, iid: str | None, what: str
) -> None:
    """Count ``what`` (a key of :data:`FIELDS`) on intervention ``iid``'s record, if it is
    the session's, and on the site's tallies of this day and minute."""
    now_ms = int(time.time() * 1000)
    field = chat_field(what, "offer" if iid else "button")
    day = keys.tally_day(site, day_text(now_ms // DAY_MS))
    minute = keys.tally_minute(site, now_ms // MINUTE_MS)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            if iid:
                pipe.eval(_COUNT, 1, keys.intervention(iid), sid, site, FIELDS[what])
            for key, ttl in ((day, TALLY_DAY_TTL_S), (minute, TALLY_MINUTE_TTL_S)):
                pipe.hincrby(key, field, 1)
                pipe.expire(key, ttl)
            await pipe.execute()
    except Exception as exc:  # an outcome count is never worth failing a chat over
        log.warning("chat outcome not recorded: %s", type(exc).__name__)
