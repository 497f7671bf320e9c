"""Reading the decision records out of Redis for the outcome report; the thin shell of training/outcomes.py.

What it is for: :func:`read_outcomes` is the one call behind ``lifeline
report outcomes`` and the operator console's Outcomes page: it walks the
intervention log (``{p}ivlog``) in chunks, fetches each decision's record
(``{p}iv:{iid}``: outcome and conversion, written by the shards), and hands
them to :func:`training.outcomes.join` and :func:`training.outcomes.aggregate`.

Limits: a synchronous redis-py client (an asyncio caller runs it in a
thread); one HGETALL per decision, pipelined per chunk, so a full log
(100,000 decisions) is 100,000 small replies, a few seconds. ``since_ms``
is applied to each session's first decision; the log is read from a day
before it, since a decision is logged when its event is processed, and an
event may arrive up to a day late (``actors.core.events.MAX_PAST_MS``).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from actors.core.events import MAX_PAST_MS
from cluster.keys import Keys
from training.outcomes import DecisionRecord, aggregate, join, select

CHUNK = 2000  # log entries (and record reads) per round trip


def _text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


def _after(entry_id: bytes) -> str:
    """The smallest stream id after ``entry_id`` (an inclusive XRANGE start)."""
    ms, _, seq = entry_id.decode().partition("-")
    return f"{ms}-{int(seq) + 1}"


def read_records(
    r: redis.Redis, keys: Keys, since_ms: int | None = None, site: str | None = None
) -> tuple[list[DecisionRecord], int]:
    """Every decision logged since a day before ``since_ms`` (of ``site``), and how many were read.

    A decision whose record has expired comes back with ``expired`` set.
    """
    start = "-" if since_ms is None else str(max(0, since_ms - MAX_PAST_MS))
    records: list[DecisionRecord] = []
    read = 0
    while True:
        entries = r.xrange(keys.intervention_log, min=start, max="+", count=CHUNK)
        if not entries:
            break
        read += len(entries)
        start = _after(entries[-1][0])
        logged = [_text(fields) for _id, fields in entries]
        logged = [f for f in logged if site is None or f.get("site") == site]
        pipe = r.pipeline(transaction=False)
        for f in logged:
            pipe.hgetall(keys.intervention(f["iid"]))
        for f, stored in zip(logged, pipe.execute(), strict=True):
            # The hash holds everything the log entry does, and the outcome and conversion.
            rec = f | _text(stored) | {"iid": f["iid"]}
            records.append(DecisionRecord.from_fields(rec, expired=not stored))
        if len(entries) < CHUNK:
            break
    return records, read


def read_outcomes(
    r: redis.Redis,
    prefix: str,
    since_ms: int | None = None,
    site: str | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """The outcome report of a deployment as JSON-able dicts (training/outcomes.py's schema).

    ``source`` says what was read: ``prefix``, ``since_ms``, ``site``,
    ``generated_ms``, ``log_entries`` (intervention-log entries read),
    ``decisions`` (those of ``site``), ``sessions_expired`` (sessions read,
    of any time, left out because a record of theirs had expired).
    """
    records, read = read_records(r, Keys(prefix), since_ms, site)
    rows, expired = join(records)
    rows = select(rows, since_ms, site)
    source = {
        "prefix": prefix,
        "since_ms": since_ms,
        "site": site,
        "generated_ms": int(time.time() * 1000),
        "log_entries": read,
        "decisions": len(records),
        "sessions_expired": expired,
    }
    return aggregate(rows, level, source)
