"""Visitors' data rights on a real stack: access, erasure that reaches everything, objection.

Several visitors, each with several sessions driven over real WebSockets
(serve/dev/pyclient.py), struggling journeys that get help, help accepted;
then one visitor asks for their data and for its erasure from the page's
HTTP endpoints, while one of their sessions is still connected. The whole
keyspace under the stack's prefix is scanned afterwards (key names, hash
fields and values, stream entries, set and sorted-set members, strings) for
the visitor's id and every one of their session ids: nothing may be left
but the documented proof, which holds none of them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack
import pytest

from cluster.keys import SUBJECT_FAMILIES, subject_digest
from serve.dev.pyclient import LifelineClient
from serve.rights.access import ACCESS_SCHEMA
from tests.test_spine import ORIGIN, journey, send_all, treated_sid

pytestmark = pytest.mark.asyncio(loop_scope="session")

SITE = "demo"


@dataclass
class Visitor:
    vid: str
    sids: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    iids: list[str] = field(default_factory=list)
    live: LifelineClient | None = None  # a session still connected


def new_vid() -> str:
    return "v-" + uuid.uuid4().hex[:16]


async def visit(stack, visitor: Visitor, accept: bool, keep_open: bool = False) -> None:
    """One struggling session of ``visitor`` that gets help (accepted when ``accept``)."""
    sid = treated_sid("rights")
    client = LifelineClient(stack.ws_url, SITE, sid, ORIGIN, vid=visitor.vid)
    welcome = await client.connect()
    assert welcome["t"] == "welcome", welcome
    events = journey("struggling", sid)
    await send_all(client, events)
    iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
    ts = events[-1]["ts"]
    outcome = "intervention_accepted" if accept else "intervention_dismissed"
    more = [
        {"type": "intervention_shown", "iid": iv["iid"], "ts": ts + 300, "seq": len(events) + 1},
        {"type": outcome, "iid": iv["iid"], "ts": ts + 900, "seq": len(events) + 2},
    ]
    await client.send_events(more)
    await client.wait_acked(len(events) + 2)
    await stack.gateway.wait_scored(sid, len(events) + 2)
    visitor.sids.append(sid)
    visitor.tokens[sid] = welcome["token"]
    visitor.iids.append(iv["iid"])
    if keep_open:
        visitor.live = client
    else:
        await client.close()


async def flush_shards(stack) -> None:
    """Every shard writes what it holds (records, snapshots): Redis is then complete."""
    for shard in stack.shards:
        await shard.flush.remote()


async def post(stack, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stack.http_url}{path}?site={SITE}", json=body, headers={"Origin": ORIGIN}
        ) as resp,
    ):
        return resp.status, await resp.json(), resp.headers


@pytest.fixture(scope="module")
async def population(any_stack) -> dict[str, Visitor]:
    """Three visitors: A (three sessions, one left connected), B and C (two each)."""
    stack = any_stack
    people = {name: Visitor(new_vid()) for name in "ABC"}
    for name, visitor in people.items():
        n = 3 if name == "A" else 2
        for i in range(n):
            await visit(stack, visitor, accept=i == 0, keep_open=name == "A" and i == n - 1)
    await flush_shards(stack)
    return people


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "generated"}


async def access(stack, visitor: Visitor) -> dict[str, Any]:
    sid = visitor.sids[0]
    status, doc, headers = await post(
        stack, "/v1/visitor/access", {"sid": sid, "token": visitor.tokens[sid]}
    )
    assert status == 200, doc
    assert headers["Cache-Control"] == "no-store"
    return doc


async def test_access_document_holds_every_kind_of_record_and_only_the_visitors(
    any_stack, population
) -> None:
    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    c, b = population["C"], population["B"]
    # The profile is the visitor-profile feature's to write; one in its format stands in here.
    profile = {"visits": 2, "viewed": ["sku-1"]}
    await r.set(keys.visitor_profile(SITE, c.vid), msgpack.packb(profile), ex=60)
    doc = await access(stack, c)
    assert doc["schema"] == ACCESS_SCHEMA and doc["vid"] == c.vid and doc["site"] == SITE
    assert doc["profile"] == profile
    assert doc["visitor"]["created"] and json.loads(doc["visitor"]["consent"])
    assert doc["consent"] and doc["consent"][0]["via"] == "hello"
    assert doc["consent"][0]["sid"] in c.sids
    # Sealed at rest (cluster/sealing.py): the visitor's data key exists, and is never exported.
    assert doc["data_key"] == {"present": stack.gateway.store.sealing is not None}
    assert sorted(s["sid"] for s in doc["sessions"]) == sorted(c.sids)
    assert sorted(m for m, _score in doc["session_ids"]) == sorted(c.sids)
    for s in doc["sessions"]:
        for fam in SUBJECT_FAMILIES:
            if fam.scope == "session":
                assert fam.name in s, fam.name
        assert s["session"]["vid"] == c.vid
        assert len(s["events"]) == int(s["session"]["seq"]) and s["unreadable_entries"] == 0
        assert [e["seq"] for e in s["events"]] == list(range(1, len(s["events"]) + 1))
        assert s["snapshot"] is not None
        assert s["decisions"] and all(d["sid"] == s["sid"] for d in s["decisions"])
        assert s["decision_ids"] == sorted(d["iid"] for d in s["decisions"])
    outcomes = {d["iid"]: d.get("outcome") for s in doc["sessions"] for d in s["decisions"]}
    assert outcomes[c.iids[0]] == "accepted" and outcomes[c.iids[1]] == "dismissed"
    text = json.dumps(doc)
    assert b.vid not in text and not any(sid in text for sid in b.sids)

    # A wrong token gets nothing; nor does another site's origin.
    status, err, _ = await post(stack, "/v1/visitor/access", {"sid": c.sids[0], "token": "0" * 32})
    assert (status, err["code"]) == (403, "bad_token")
    status, err, _ = await post(stack, "/v1/visitor/access", {"sid": c.sids[0]})
    assert (status, err["code"]) == (403, "bad_token")


async def scan_for(r, prefix: str, needles: list[str]) -> list[str]:
    """Every place under ``prefix`` that holds one of ``needles``: key, field, value, member."""
    found = []
    raw = [n.encode() for n in needles]

    def hit(blob: bytes) -> bool:
        return any(n in blob for n in raw)

    async for key in r.scan_iter(match=f"{prefix}*", count=1000):
        kind = (await r.type(key)).decode()
        parts: list[bytes] = [key]
        if kind == "string":
            parts.append(await r.get(key) or b"")
        elif kind == "hash":
            for f, v in (await r.hgetall(key)).items():
                parts += [f, v]
        elif kind == "stream":
            for eid, fields in await r.xrange(key):
                parts += [eid, *fields.keys(), *fields.values()]
        elif kind == "set":
            parts += list(await r.smembers(key))
        elif kind == "zset":
            parts += [m for m, _ in await r.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            parts += list(await r.lrange(key, 0, -1))
        found += [f"{kind} {key.decode()}" for p in parts if hit(p)]
    return found


async def test_erasure_reaches_every_key_and_entry_and_refuses_the_visitor_after(
    any_stack, population
) -> None:
    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    a = population["A"]
    others = [population["B"], population["C"]]
    needles = [a.vid, *a.sids]
    before_access = await access(stack, a)
    assert len(before_access["sessions"]) == 3
    assert await scan_for(r, keys.prefix, needles), "the visitor's data is there to erase"
    # A flush merges the sessions still held into their visitors' profiles: do it before
    # reading the others' data, so that after the erasure's flush it is the same.
    await flush_shards(stack)
    others_before = [_strip(await access(stack, v)) for v in others]
    others_log = sorted(
        (eid, f[b"sid"])
        for eid, f in await r.xrange(keys.intervention_log)
        if f[b"sid"].decode() in {s for v in others for s in v.sids}
    )

    live_sid = a.sids[-1]
    status, body, headers = await post(
        stack, "/v1/visitor/erase", {"sid": live_sid, "token": a.tokens[live_sid]}
    )
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert body["erased"] is True and body["sessions"] == 3
    assert body["entries"] == len(a.iids), "each decision's intervention-log entry"
    assert body["keys"] > 3 * 4
    # The connected session is told, and carries nothing more.
    assert a.live is not None
    told = await a.live.wait_for(lambda f: f["t"] == "error" and f.get("code") == "erased")
    assert told["sid"] == live_sid
    await flush_shards(stack)  # whatever a shard still held would be written now

    assert await scan_for(r, keys.prefix, needles) == []
    for sid in a.sids:
        assert await stack.shard_for(sid).session_row.remote(sid) is None
    proof = await r.hgetall(keys.erased(SITE, subject_digest(SITE, a.vid)))
    assert proof[b"kind"] == b"visitor" and proof[b"reason"] == b"request"
    assert int(proof[b"sessions"]) == 3 and int(proof[b"entries"]) == len(a.iids)
    assert await r.ttl(keys.erased(SITE, subject_digest(SITE, a.vid))) > 0

    # The other visitors' data is what it was.
    assert [_strip(await access(stack, v)) for v in others] == others_before
    assert (
        sorted(
            (eid, f[b"sid"])
            for eid, f in await r.xrange(keys.intervention_log)
            if f[b"sid"].decode() in {s for v in others for s in v.sids}
        )
        == others_log
    )

    # Refused from now on: a hello naming the vid, a resume of an erased session, its beacon.
    fresh = LifelineClient(stack.ws_url, SITE, treated_sid("after"), ORIGIN, vid=a.vid)
    refused = await fresh.connect()
    assert (refused["t"], refused.get("code")) == ("error", "erased")
    await fresh.close()
    resume = LifelineClient(stack.ws_url, SITE, a.sids[0], ORIGIN)
    resume.token = a.tokens[a.sids[0]]
    refused = await resume.connect()
    assert (refused["t"], refused.get("code")) == ("error", "erased")
    await resume.close()
    beacon = {"sid": a.sids[0], "token": a.tokens[a.sids[0]], "events": []}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stack.http_url}/beacon?site={SITE}", json=beacon, headers={"Origin": ORIGIN}
        ) as resp,
    ):
        assert resp.status == 403 and (await resp.json())["code"] == "erased"
    assert await scan_for(r, keys.prefix, needles) == []

    # Idempotent: a second request finds the session erased; the proof is unchanged.
    status, again, _ = await post(
        stack, "/v1/visitor/erase", {"sid": live_sid, "token": a.tokens[live_sid]}
    )
    assert (status, again["code"]) == (410, "erased")
    again_proof = await stack.gateway.eraser.erase_visitor(
        SITE, a.vid, stack.gateway.store.retention(SITE)
    )
    assert again_proof["sessions"] == 3 and again_proof["entries"] == len(a.iids)
    await a.live.close()


async def test_withdrawing_analytics_erases_the_whole_visitor(any_stack) -> None:
    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    v = Visitor(new_vid())
    await visit(stack, v, accept=True)
    await visit(stack, v, accept=False, keep_open=True)
    await flush_shards(stack)
    assert v.live is not None
    await v.live.send_frame(
        {"t": "consent", "sid": v.sids[-1], "consent": ["necessary"], "via": "banner"}
    )
    reply = await v.live.wait_for(lambda f: f["t"] == "consent")
    assert reply["consent"] == ["necessary"]
    await flush_shards(stack)
    assert await scan_for(r, keys.prefix, [v.vid, *v.sids]) == []
    proof = await r.hgetall(keys.erased(SITE, subject_digest(SITE, v.vid)))
    assert proof[b"reason"] == b"withdrawal" and int(proof[b"sessions"]) == 2
    await v.live.close()


async def test_consent_records_are_the_visitors_with_source_and_policy(any_stack) -> None:
    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    vid = new_vid()
    sid = treated_sid("consent")
    client = LifelineClient(stack.ws_url, SITE, sid, ORIGIN, vid=vid, consent=("analytics",))
    assert (await client.connect())["t"] == "welcome"
    await client.send_frame(
        {"t": "consent", "sid": sid, "consent": ["analytics", "marketing"], "via": "api"}
    )
    await client.wait_for(lambda f: f["t"] == "consent")
    await client.send_frame({"t": "consent", "sid": sid, "consent": ["analytics"], "via": "sms"})
    bad = await client.wait_for(lambda f: f["t"] == "error")
    assert (bad["code"], bad["field"]) == ("bad_frame", "via")
    # A second session of the same visitor with the same consent adds no record.
    other = LifelineClient(
        stack.ws_url,
        SITE,
        treated_sid("consent"),
        ORIGIN,
        vid=vid,
        consent=("analytics", "marketing"),
    )
    assert (await other.connect())["t"] == "welcome"
    records = [f for _, f in await r.xrange(keys.visitor_consent(SITE, vid))]
    assert [(json.loads(f[b"consent"]), f[b"via"]) for f in records] == [
        (["analytics"], b"hello"),
        (["analytics", "marketing"], b"api"),
    ]
    policy = stack.gateway.sites[SITE].consent_policy.encode()
    assert all(f[b"policy"] == policy and f[b"sid"] == sid.encode() for f in records)
    assert not await r.exists(keys.consent_records(SITE, sid)), "a visitor's go to the visitor"
    ttl = await r.ttl(keys.visitor_consent(SITE, vid))
    assert stack.gateway.sites[SITE].retention.consent - 60 < ttl
    await client.close()
    await other.close()


async def test_an_admin_looks_up_downloads_and_erases_a_visitor_audited_by_digest(
    any_stack,
) -> None:
    from tests.test_console_auth import csrf_of, new_operator, sign_in

    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    v = Visitor(new_vid())
    await visit(stack, v, accept=True)
    await flush_shards(stack)
    who = {"site": SITE, "vid": v.vid}  # in POST bodies: never in a path or query
    analyst = await sign_in(stack, await new_operator(stack, "analyst"))
    async with analyst:
        csrf = await csrf_of(analyst)
        resp = await analyst.post("/api/visitors/lookup", json=who, headers={"X-CSRF-Token": csrf})
        assert resp.status == 403
    admin = await sign_in(stack, await new_operator(stack, "admin"))
    async with admin:
        csrf = {"X-CSRF-Token": await csrf_of(admin)}
        bad = await admin.post("/api/visitors/lookup", json={"site": SITE}, headers=csrf)
        assert bad.status == 400 and (await bad.json())["code"] == "bad_request"
        found = await (await admin.post("/api/visitors/lookup", json=who, headers=csrf)).json()
        assert found["found"] and [s["sid"] for s in found["sessions"]] == v.sids
        assert [c["via"] for c in found["consent"]] == ["hello"]
        view = await (await admin.post("/api/visitors/view", json=who, headers=csrf)).json()
        consent_table = next(t for t in view["tables"] if t["id"] == "consent")
        assert len(consent_table["rows"]) == 1
        resp = await admin.post("/api/visitors/access", json=who, headers=csrf)
        assert resp.status == 200 and "attachment" in resp.headers["Content-Disposition"]
        assert resp.headers["Cache-Control"] == "no-store"
        doc = await resp.json()
        assert doc["vid"] == v.vid and [s["sid"] for s in doc["sessions"]] == v.sids
        erased = await (await admin.post("/api/visitors/erase", json=who, headers=csrf)).json()
        assert erased["erased"] and erased["sessions"] == 1
        sessions_table = next(t for t in erased["view"]["tables"] if t["id"] == "sessions")
        assert sessions_table["rows"] == []
        digest = subject_digest(SITE, v.vid)
        assert erased["digest"] == digest
    entries = [f for _, f in await r.xrange(keys.audit)]
    mine = [json.loads(f[b"detail"]) for f in entries if digest.encode() in f[b"detail"]]
    assert {"visitor looked up", "visitor access document", "visitor erased"} <= {
        f[b"action"].decode() for f in entries if digest.encode() in f[b"detail"]
    }
    assert all(d["visitor"] == digest for d in mine)
    # The audit log names the digest only: nothing anywhere holds the vid or its session.
    assert await scan_for(r, keys.prefix, [v.vid, *v.sids]) == []


def test_every_key_family_names_its_keys_as_the_keys_methods_do() -> None:
    from cluster.keys import Keys

    keys = Keys("p:")
    methods = {
        "s": keys.session,
        "ev": keys.events,
        "snap": keys.snapshot,
        "ivs": keys.interventions_of,
        "consent": keys.consent_records,
        "dk": keys.data_key,
        "v": keys.visitor,
        "vp": keys.visitor_profile,
        "vc": keys.visitor_consent,
        "vs": keys.visitor_sessions,
        "chat": keys.chat,
        "chatst": keys.chat_state,
    }
    for fam in SUBJECT_FAMILIES:
        assert keys.family(fam, "demo", "x-12345678") == methods[fam.tag]("demo", "x-12345678")
    assert len({(f.scope, f.name) for f in SUBJECT_FAMILIES}) == len(SUBJECT_FAMILIES)


async def test_a_session_without_a_visitor_is_its_own_subject_and_requests_are_rate_limited(
    any_stack,
) -> None:
    from serve.edge.rights_http import RIGHTS_PER_SESSION

    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    anon = Visitor("")
    for _ in range(2):
        sid = treated_sid("anon")
        client = LifelineClient(stack.ws_url, SITE, sid, ORIGIN)
        welcome = await client.connect()
        events = journey("calm", sid)[:5]
        await send_all(client, events)
        await client.wait_acked(len(events))
        await stack.gateway.wait_scored(sid, len(events))
        anon.sids.append(sid)
        anon.tokens[sid] = welcome["token"]
        await client.close()
    await flush_shards(stack)
    first, second = anon.sids
    body = {"sid": first, "token": anon.tokens[first]}
    status, doc, _ = await post(stack, "/v1/visitor/access", body)
    assert status == 200 and doc["vid"] is None and doc["sid"] == first
    assert [s["sid"] for s in doc["sessions"]] == [first] and len(doc["sessions"][0]["events"]) == 5
    assert doc["sessions"][0]["consent"][0]["via"] == "hello"  # an anonymous session keeps its own
    for _ in range(RIGHTS_PER_SESSION - 1):
        assert (await post(stack, "/v1/visitor/access", body))[0] == 200
    status, err, _ = await post(stack, "/v1/visitor/access", body)
    assert (status, err["code"], err["limit"]) == (429, "rate_limited", "session")

    status, done, _ = await post(
        stack, "/v1/visitor/erase", {"sid": second, "token": anon.tokens[second]}
    )
    assert status == 200 and done["sessions"] == 1
    await flush_shards(stack)
    assert await scan_for(r, keys.prefix, [second]) == []
    assert await scan_for(r, keys.prefix, [first]), "the other session is not the subject"
    proof = await r.hgetall(keys.erased(SITE, subject_digest(SITE, second)))
    assert proof[b"kind"] == b"session" and int(proof[b"sessions"]) == 1
    resume = LifelineClient(stack.ws_url, SITE, second, ORIGIN)
    resume.token = anon.tokens[second]
    assert (await resume.connect()).get("code") == "erased"
    await resume.close()


async def test_a_sessions_own_consent_records_move_to_its_visitor_when_it_names_one(
    redis_url: str, prefix: str
) -> None:
    import redis.asyncio as aioredis

    from cluster.keys import Keys
    from serve.edge.store import EventStore

    keys = Keys(prefix)
    r = aioredis.Redis.from_url(redis_url)
    store = EventStore(r, keys)
    sid, vid = "s-migrate-01", new_vid()
    assert (await store.claim(sid, SITE, ["analytics"], False))[0] == "ok"
    await store.record_consent(sid, SITE, ["analytics", "marketing"], "banner")
    own = [f for _, f in await r.xrange(keys.consent_records(SITE, sid))]
    assert [f[b"via"] for f in own] == [b"hello", b"banner"]
    # The same session, resumed by a client that now has a visitor id.
    assert (await store.claim(sid, SITE, ["analytics", "marketing"], True, vid))[0] == "ok"
    assert not await r.exists(keys.consent_records(SITE, sid))
    moved = [f for _, f in await r.xrange(keys.visitor_consent(SITE, vid))]
    assert [(f[b"via"], f[b"sid"]) for f in moved] == [
        (b"hello", sid.encode()),
        (b"banner", sid.encode()),
    ]
    assert json.loads(await r.hget(keys.visitor(SITE, vid), "consent")) == [
        "analytics",
        "marketing",
    ]
    store.close()
    await r.aclose()


async def test_bad_data_requests_get_a_code_and_touch_nothing(any_stack) -> None:
    stack = any_stack
    bodies = [
        b"nope",
        b"[]",
        b'{"sid": 5, "token": "x"}',
        b'{"sid": "short"}',
        b"{" + b" " * 2000 + b"}",
    ]
    async with aiohttp.ClientSession() as http:
        for raw in bodies:
            for what in ("access", "erase"):
                async with http.post(
                    f"{stack.http_url}/v1/visitor/{what}?site={SITE}",
                    data=raw,
                    headers={"Origin": ORIGIN},
                ) as resp:
                    body = await resp.json()
                    assert resp.status == 400 and body["code"] in ("bad_frame", "bad_sid"), raw
                    assert resp.headers["Cache-Control"] == "no-store"
        async with http.post(
            f"{stack.http_url}/v1/visitor/access?site={SITE}",
            json={"sid": "s-12345678", "token": "x"},
            headers={"Origin": "http://evil.test"},
        ) as resp:
            assert resp.status == 403 and (await resp.json())["code"] == "forbidden"
        async with http.options(
            f"{stack.http_url}/v1/visitor/erase?site={SITE}", headers={"Origin": ORIGIN}
        ) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_two_erasures_of_a_many_session_visitor_at_once_erase_it_once(
    redis_url: str, prefix: str
) -> None:
    import asyncio

    import redis.asyncio as aioredis

    from actors.core.retention import Retention
    from cluster.keys import Keys
    from loadtests.bench_erasure import left_of, seed
    from serve.rights.erasure import PAGE, Eraser

    keys = Keys(prefix)
    r = aioredis.Redis.from_url(redis_url)
    vid = new_vid()
    n = PAGE + PAGE // 2  # more than one page
    sids = await seed(r, keys, vid, n, events=20, decisions=1)
    assert await left_of(r, keys, [vid, *sids]) > n
    first, second = await asyncio.gather(
        Eraser(r, keys).erase_visitor(SITE, vid, Retention()),
        Eraser(r, keys).erase_visitor(SITE, vid, Retention()),
    )
    assert await left_of(r, keys, [vid, *sids]) == 0
    final = await Eraser(r, keys).proof(SITE, subject_digest(SITE, vid))
    assert final["sessions"] == n and final["entries"] == n, "each key counted once"
    assert {first["digest"], second["digest"]} == {final["digest"]}
    await r.aclose()


async def test_a_withdrawal_on_a_connection_that_did_not_name_the_visitor_still_erases_it(
    any_stack,
) -> None:
    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    v = Visitor(new_vid())
    await visit(stack, v, accept=True)
    await visit(stack, v, accept=False)
    # The visitor's second session, resumed by a client that lost its visitor id.
    sid = v.sids[-1]
    client = LifelineClient(stack.ws_url, SITE, sid, ORIGIN)
    client.token = v.tokens[sid]
    assert (await client.connect())["t"] == "welcome"
    await client.send_frame({"t": "consent", "sid": sid, "consent": ["necessary"]})
    await client.wait_for(lambda f: f["t"] == "consent")
    await flush_shards(stack)
    assert await scan_for(r, keys.prefix, [v.vid, *v.sids]) == []
    proof = await r.hgetall(keys.erased(SITE, subject_digest(SITE, v.vid)))
    assert proof[b"reason"] == b"withdrawal" and int(proof[b"sessions"]) == 2
    await client.close()
