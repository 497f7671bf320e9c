"""Access (GDPR art. 15): everything stored about a visitor, as one JSON document.

:func:`access_document` reads, for a visitor (``site``, ``vid``) or a
session without one, every key of every family in
``cluster.keys.SUBJECT_FAMILIES`` (so a family a later feature declares, chat
memory say, is in the document without a change here), plus each session's
decisions (``iv:{iid}``, with outcomes and conversions). Schema:
docs/RIGHTS.md (``ACCESS_SCHEMA``; the version changes when a field's meaning does).

Values read as they are stored: hashes as objects, streams as lists of
entries (``id`` plus fields), event logs as the decoded events, msgpack
strings decoded; JSON-valued fields (consent, reasons, drivers) stay the
strings they are. Bytes that are not UTF-8 are given as ``{"base64": ...}``.
A ``secret`` family (a data key) is never exported: only whether it exists.
Event-log entries sealed at rest (cluster/sealing.py) are opened with the
subjects' data keys Redis holds now and the given master keys; an entry
that cannot be opened is left out and counted in the session's
``unreadable_entries``. A ``list`` family (chat memory) is its elements,
JSON-decoded with codec ``json``.

Limits: the document is built in memory; a visitor's sessions are read a
page at a time (no SCAN), and each stream in pages of ``READ_PAGE`` entries.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis

from cluster.keys import SUBJECT_FAMILIES, KeyFamily, Keys
from cluster.sealing import MasterKeys, Opener

ACCESS_SCHEMA = "lifeline.access/1"
READ_PAGE = 1000
SESSIONS_PAGE = 100


def jsonable(value: Any) -> Any:
    """``value`` with bytes made text (or base64 when not UTF-8) and tuples made lists."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class AccessReader:
    """Builds access documents from one Redis; one per process that answers access requests."""

    def __init__(self, r: aioredis.Redis, keys: Keys, master: MasterKeys | None = None) -> None:
        self.r = r
        self.keys = keys
        self.master = master  # opens event-log entries sealed at rest

    async def visitor(self, site: str, vid: str) -> dict[str, Any]:
        """The document of visitor ``vid`` of ``site``: their keys and every session's."""
        doc = self._head(site, vid=vid, sid=None)
        for fam in SUBJECT_FAMILIES:
            if fam.scope == "visitor":
                doc[fam.name] = await self._read(fam, site, vid, None)
        vs = self.keys.visitor_sessions(site, vid)
        start = 0
        while True:
            page = await self.r.zrange(vs, start, start + SESSIONS_PAGE - 1, withscores=True)
            for sid, created in page:
                doc["sessions"].append(await self._session(site, sid.decode(), int(created)))
            if len(page) < SESSIONS_PAGE:
                break
            start += SESSIONS_PAGE
        return doc

    async def session(self, site: str, sid: str) -> dict[str, Any]:
        """The document of a session without a visitor (the same schema, ``vid`` null)."""
        doc = self._head(site, vid=None, sid=sid)
        session = await self._session(site, sid, None)
        if session["session"]:
            doc["sessions"].append(session)
        return doc

    def _head(self, site: str, vid: str | None, sid: str | None) -> dict[str, Any]:
        return {
            "schema": ACCESS_SCHEMA,
            "generated": int(time.time() * 1000),
            "site": site,
            "vid": vid,
            "sid": sid,
            "sessions": [],
        }

    async def _session(self, site: str, sid: str, created: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {"sid": sid}
        if created is not None:
            out["created"] = created
        opener = Opener(self.keys, self.master)  # per session: an erasure meanwhile is seen
        for fam in SUBJECT_FAMILIES:
            if fam.scope == "session":
                out[fam.name] = await self._read(fam, site, sid, opener)
        out["unreadable_entries"] = opener.unreadable
        iids = sorted(out.get("decision_ids") or [])
        pipe = self.r.pipeline(transaction=False)
        for iid in iids:
            pipe.hgetall(self.keys.intervention(iid))
        out["decisions"] = [
            {"iid": iid, **jsonable(rec)}
            for iid, rec in zip(iids, await pipe.execute(), strict=True)
            if rec
        ]
        return out

    async def _read(self, fam: KeyFamily, site: str, subject: str, opener: Opener | None) -> Any:
        """One family's key of ``subject``, read by its Redis type and codec."""
        key = self.keys.family(fam, site, subject)
        r = self.r
        if fam.codec == "secret":
            return {"present": bool(await r.exists(key))}
        if fam.kind == "hash":
            return jsonable(await r.hgetall(key))
        if fam.kind == "string":
            raw = await r.get(key)
            if raw is None:
                return None
            return jsonable(msgpack.unpackb(raw) if fam.codec == "msgpack" else raw)
        if fam.kind == "set":
            return sorted(jsonable(list(await r.smembers(key))))
        if fam.kind == "zset":
            return [[jsonable(m), s] for m, s in await r.zrange(key, 0, -1, withscores=True)]
        if fam.kind == "list":
            items = await r.lrange(key, 0, -1)
            return [json.loads(x) if fam.codec == "json" else jsonable(x) for x in items]
        if fam.kind == "stream":
            return await self._stream(key, fam, opener)
        raise ValueError(f"key family {fam.name}: unknown kind {fam.kind!r}")

    async def _stream(self, key: str, fam: KeyFamily, opener: Opener | None) -> list[Any]:
        out: list[Any] = []
        start = "-"
        while True:
            page = await self.r.xrange(key, min=start, count=READ_PAGE)
            if fam.codec == "events":
                opener = opener or Opener(self.keys, self.master)
                for payload in await opener.aopen_entries(self.r, page):
                    if payload is not None:
                        out.extend(jsonable(msgpack.unpackb(payload)))
            else:
                for eid, fields in page:
                    out.append({"id": eid.decode(), **jsonable(fields)})
            if len(page) < READ_PAGE:
                return out
            start = "(" + page[-1][0].decode()
