"""The visitor id: named by the hello, bound to its sessions in Redis, known to their shard.

A visitor id (``vid``) is the client's pseudonymous, first-party id of a
visitor across visits (made with analytics consent). These tests hold the
plumbing everything visitor-level stands on: the protocol core's checks, the
store's binding of a session to one visitor, the visitor's sessions set, and
the ``Visit`` batch item that tells the session's shard.
"""

from __future__ import annotations

import uuid

from actors.core.host import FORGET, VISIT, Forget, SessionHost, Visit, pack_batch, unpack_batch
from serve.dev.pyclient import LifelineClient
from serve.edge.protocol import Connection, HelloRequest
from tests.test_spine import ORIGIN, journey, new_sid, send_all

SECRET = b"k" * 32


def hello(**kw):
    return {"t": "hello", "v": 1, "sid": "s-0123456789", "consent": ["analytics"], **kw}


def test_hello_carries_a_valid_vid_to_the_cursor() -> None:
    conn = Connection("demo", SECRET)
    req = conn.hello(hello(vid="v-abcdefgh12"))
    assert isinstance(req, HelloRequest) and req.vid == "v-abcdefgh12"
    welcome = conn.accept_hello(req, known=False, stored_seq=0)
    assert welcome["t"] == "welcome"
    assert conn.sessions["s-0123456789"].vid == "v-abcdefgh12"
    anonymous = conn.hello(hello(sid="s-9999999999"))
    assert isinstance(anonymous, HelloRequest) and anonymous.vid is None


def test_a_malformed_vid_is_refused_with_its_own_code() -> None:
    conn = Connection("demo", SECRET)
    for bad in ("short", "v-" + "x" * 70, "v-abc def gh", 12345678, ["v-abcdefgh"], "v-abcdefgh\n"):
        err = conn.hello(hello(vid=bad))
        assert isinstance(err, dict) and err["code"] == "bad_vid", bad
    assert conn.sessions == {}


def test_visit_items_round_trip_and_unpack_like_a_forget() -> None:
    wire = [
        (VISIT, "s-1", "demo", ["analytics", "personalization"], b"v-12345678"),
        (FORGET, "s-2", "demo", (), b""),
    ]
    items, _ = unpack_batch(pack_batch(wire))
    visit, forget = items
    assert type(visit) is Visit and visit.vid == "v-12345678"
    assert (visit.sid, visit.site, visit.consent) == (
        "s-1",
        "demo",
        ("analytics", "personalization"),
    )
    sid, site, consent, events = visit  # walks like every other batch item, with no events
    assert (sid, events) == ("s-1", ())
    assert type(forget) is Forget


def test_a_visit_names_the_session_whenever_it_arrives() -> None:
    host = SessionHost()
    score = lambda rows: [0.0] * len(rows)  # noqa: E731
    ev = {"type": "page_view", "seq": 1, "ts": 1_000, "path": "/"}
    host.visit("s-before", "v-aaaaaaaa")  # before the session's first events
    assert "s-before" not in host, "a visit never makes a session: its past may be in Redis"
    host.process([("s-before", "demo", ["analytics"], [ev])], score)
    assert host.get("s-before").vid == "v-aaaaaaaa"
    host.process([("s-after", "demo", ["analytics"], [ev])], score)
    assert host.get("s-after").vid is None
    host.visit("s-after", "v-bbbbbbbb")  # while it is active
    assert host.get("s-after").vid == "v-bbbbbbbb"
    host.visit("s-gone", "v-cccccccc")
    host.forget("s-gone")
    assert host.visitors == {}
    # The vid survives a compaction to the dormant state and back.
    host.sweep(now_ms=ev["ts"] + host.compact_after_ms)
    assert "s-before" in host.dormant
    assert host.get("s-before").vid == "v-aaaaaaaa"


async def _client(stack, sid: str, vid: str | None, token: str | None = None) -> LifelineClient:
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN, vid=vid)
    client.token = token
    return client


async def test_sessions_of_a_visitor_are_bound_to_it_and_known_to_their_shard(
    any_stack,
) -> None:
    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    vid = f"v-{uuid.uuid4().hex[:16]}"
    sids = [new_sid("visitor"), new_sid("visitor")]
    tokens = {}
    for sid in sids:
        client = await _client(stack, sid, vid)
        welcome = await client.connect()
        assert welcome["t"] == "welcome", welcome
        tokens[sid] = welcome["token"]
        events = journey("calm", sid)[:4]
        await send_all(client, events)
        await client.wait_acked(len(events))
        await stack.gateway.wait_scored(sid, len(events))
        assert await r.hget(keys.session("demo", sid), "vid") == vid.encode()
        assert await stack.shard_for(sid).session_visitor.remote(sid) == vid
        await client.close()
    members = await r.zrange(keys.visitor_sessions("demo", vid), 0, -1)
    assert sorted(m.decode() for m in members) == sorted(sids)
    assert await r.ttl(keys.visitor_sessions("demo", vid)) > 0

    # A session belongs to one visitor: resuming it under another vid is refused,
    # and the session stays with its visitor.
    other = await _client(stack, sids[0], f"v-{uuid.uuid4().hex[:16]}", tokens[sids[0]])
    refused = await other.connect()
    assert refused["t"] == "error" and refused["code"] == "bad_vid", refused
    await other.close()
    assert await r.hget(keys.session("demo", sids[0]), "vid") == vid.encode()

    # An anonymous session (no vid) has no visitor anywhere.
    anon_sid = new_sid("anon")
    anon = await _client(stack, anon_sid, None)
    assert (await anon.connect())["t"] == "welcome"
    events = journey("calm", anon_sid)[:2]
    await send_all(anon, events)
    await anon.wait_acked(len(events))
    await stack.gateway.wait_scored(anon_sid, len(events))
    assert await r.hget(keys.session("demo", anon_sid), "vid") is None
    assert await stack.shard_for(anon_sid).session_visitor.remote(anon_sid) is None
    await anon.close()
