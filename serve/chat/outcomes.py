"""Help-chat outcomes, kept on the record of the intervention that led to the chat.

The outcome report (training/outcomes.py) reads an intervention's record
(``iv:{iid}``, actors/shard/records.py); a chat opened from a help offer
adds counts to it: ``chat_opened``, ``chat_messages``, ``chat_handoff``,
``chat_resolved`` (ended by the visitor after an answer, no person asked
for). Whether the session then converted is the record's own
``converted``, so the report compares sessions that chatted with the
holdout of the same kind of intervention.

Limits: a chat opened from the site's Help button (no iid) has no record to
count on; an iid that is unknown, or another session's, is ignored (the
client names it, so it is checked in the script against the record's sid
and site).
"""

from __future__ import annotations

import logging
from typing import Any

from cluster.keys import Keys

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
    """Count ``what`` (a key of :data:`FIELDS`) on intervention ``iid``'s record, if it is the session's."""
    if not iid:
        return
    try:
        await redis.eval(_COUNT, 1, keys.intervention(iid), sid, site, FIELDS[what])
    except Exception as exc:  # an outcome count is never worth failing a chat over
        log.warning("chat outcome not recorded: %s", type(exc).__name__)
