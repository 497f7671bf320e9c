"""Reading the live event log, and exporting it so that an erasure still reaches the copy.

What it is for: the event log's entries are sealed under their subject's
data key (cluster/sealing.py). Training reads them through
:func:`iter_logs` and opens them with the keys Redis holds at training time;
``lifeline export`` copies them out *still sealed* (:func:`write_sealed_jsonl`),
one JSON line per session::

    {"sid": "s-…", "site": "demo", "source": "redis",
     "sealed": [["demo:v-…", "<base64 of nonce+ciphertext>"], [null, "<base64 of plaintext>"], …]}

each pair an entry's subject reference (null: an entry logged in plaintext,
with ``LIFELINE_ENCRYPT_AT_REST=0``) and its ``ev`` bytes. A loader
(:func:`training.dataset.read_jsonl`) opens the rows with the data keys Redis
holds when it reads them: once a subject's key is deleted (erasure) or has
expired (retention), its rows are unreadable in every copy, and the loader
drops them with a count (``Opener.dropped_sessions``).

Limits: reading an export needs the deployment's Redis and master key
(``LIFELINE_DATA_KEY``), so an export is not a standalone data set; plaintext
entries stay plaintext in the copy. A session with any unreadable entry is
dropped whole (its features would be wrong without its start).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from cluster.keys import Keys
from cluster.sealing import Opener
from training.loaders import DataError

Entry = tuple[str | None, bytes]  # (subject reference or None for plaintext, ev bytes)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def iter_logs(r: Any, prefix: str, *, count: int = 500) -> Iterator[tuple[str, str, list[Entry]]]:
    """(site, sid, entries) of every session's event log, entries in stream order, as stored.

    ``r`` is a synchronous redis client. Entries with an empty payload are
    skipped; an entry without ``ev`` raises :class:`DataError`.
    """
    keys = Keys(prefix)
    for key in r.scan_iter(match=keys.events_pattern, count=count, _type="stream"):
        k = _text(key)
        site, sid = keys.session_of_events_key(k)
        entries: list[Entry] = []
        start = "-"
        while True:
            page = r.xrange(key, min=start, max="+", count=1000)
            if not page:
                break
            for entry_id, fields in page:
                blob = fields.get(b"ev", fields.get("ev"))
                if blob is None:
                    raise DataError(k, f"stream entry {_text(entry_id)} has no 'ev' field")
                if blob:
                    ref = fields.get(b"k", fields.get("k"))
                    entries.append((_text(ref) if ref else None, blob))
            start = "(" + _text(page[-1][0])  # exclusive: continue after the last entry
        if entries:
            yield site, sid, entries


def open_events(
    opener: Opener, r: Any, entries: list[Entry], where: str
) -> list[dict[str, Any]] | None:
    """The events of a session's entries, deduplicated by ``seq``; None if any entry is unreadable.

    Keys are fetched from ``r`` (synchronous) as needed. A session left out
    is counted in ``opener.dropped_sessions``.
    """
    opener.load(r, (ref for ref, _ in entries))
    events: list[dict[str, Any]] = []
    last_seq = 0
    for ref, blob in entries:
        payload = opener.open(ref, blob)
        if payload is None:
            opener.dropped_sessions += 1
            return None
        try:
            logged = msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise DataError(where, f"an entry's 'ev' is not msgpack: {exc}") from None
        for ev in logged:
            if ev.get("seq", 0) > last_seq:
                events.append(ev)
                last_seq = ev["seq"]
    return events


def write_sealed_jsonl(r: Any, prefix: str, path: Path) -> tuple[int, int]:
    """Copy every session's log to ``path`` as sealed rows (module doc); (sessions, entries)."""
    sessions = entries_n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for site, sid, entries in iter_logs(r, prefix):
            row = {
                "sid": sid,
                "site": site,
                "source": "redis",
                "sealed": [[ref, base64.b64encode(blob).decode()] for ref, blob in entries],
            }
            fh.write(json.dumps(row, separators=(",", ":")))
            fh.write("\n")
            sessions += 1
            entries_n += len(entries)
    return sessions, entries_n


def sealed_entries(rec: dict[str, Any], where: str) -> list[Entry]:
    """The entries of an exported row's ``sealed`` list; :class:`DataError` when malformed."""
    out: list[Entry] = []
    for pair in rec["sealed"]:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not (pair[0] is None or isinstance(pair[0], str))
            or not isinstance(pair[1], str)
        ):
            raise DataError(where, 'expected "sealed": [[subject or null, base64], ...]')
        try:
            out.append((pair[0], base64.b64decode(pair[1], validate=True)))
        except ValueError:
            raise DataError(where, "a sealed entry is not base64") from None
    return out
