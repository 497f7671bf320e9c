"""The audit log: every state-changing action in the console, append-only.

One Redis stream (``{p}audit``) holds who did what, when and from where.
The console only ever appends to it (``XADD``) and reads it (admins, the
Audit page); no route edits or deletes an entry. Entries carry no visitor
data beyond ids an action names (a session id of a data request, say).

Limits: the stream is capped (``MAX_ENTRIES``, trimmed approximately), so
the oldest actions fall out after that many; a site that must keep more
exports it (Export page, audited itself).
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

MAX_ENTRIES = 1_000_000


def client_address(request: web.Request) -> str:
    """Where a request came from: the peer's address (a proxy's header is not trusted)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else ""


async def record_action(request: web.Request, action: str, **detail: Any) -> None:
    """Append ``action`` by the signed-in operator (or the name tried, for sign-ins)."""
    ctx = request.app["ctx"]
    operator = request.get("operator")
    who = detail.pop("who", None) or (operator.name if operator is not None else "")
    await append(ctx.redis, ctx.keys.audit, who, action, client_address(request), detail)


async def append(
    redis: Any, key: str, who: str, action: str, address: str, detail: dict[str, Any]
) -> str:
    """Append one entry; its stream id (time-ordered) is returned."""
    entry = {
        "ts": int(time.time() * 1000),
        "who": who,
        "action": action,
        "from": address,
        "detail": json.dumps(detail, sort_keys=True, default=str),
    }
    eid = await redis.xadd(key, entry, maxlen=MAX_ENTRIES, approximate=True)
    return eid.decode() if isinstance(eid, bytes) else str(eid)


async def read(redis: Any, key: str, count: int = 200, before: str = "+") -> list[dict[str, Any]]:
    """The newest ``count`` entries at or before stream id ``before``, newest first."""
    out = []
    for eid, fields in await redis.xrevrange(key, max=before, min="-", count=count):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        out.append(
            {
                "id": eid.decode(),
                "ts": int(f["ts"]),
                "who": f["who"],
                "action": f["action"],
                "from": f["from"],
                "detail": json.loads(f["detail"]),
            }
        )
    return out
