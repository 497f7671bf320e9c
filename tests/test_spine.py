"""The real-time spine end to end: real Ray, real Redis, real WebSocket connections."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import msgpack
import psutil
import pytest
import websockets

from actors.core.events import validate_event
from actors.core.kinds import KINDS
from actors.core.policy import in_holdout
from actors.core.session import replay
from cluster.redis_client import redis_client
from serve.dev.pyclient import LifelineClient
from training.simulator import scripted

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"


def new_sid(tag: str) -> str:
    return f"t-{tag}-{uuid.uuid4().hex[:12]}"


def treated_sid(tag: str) -> str:
    """A sid outside the demo site's 10 % holdout: its interventions are shown."""
    while True:
        sid = new_sid(tag)
        if not in_holdout(sid, 0.10):
            return sid


async def connect(stack, sid: str, **kw) -> LifelineClient:
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN, **kw)
    welcome = await client.connect()
    assert welcome["t"] == "welcome", welcome
    return client


async def send_all(client: LifelineClient, events: list[dict], batch: int = 5) -> None:
    for i in range(0, len(events), batch):
        await client.send_events(events[i : i + batch])


def journey(kind: str, sid: str) -> list[dict]:
    # Recent timestamps: the gateway refuses events more than a day old.
    return scripted(kind, sid, int(time.time() * 1000) - 120_000)


async def test_struggling_journey_gets_help_pushed(any_stack):
    sid = treated_sid("struggle")
    events = journey("struggling", sid)
    client = await connect(any_stack, sid)
    await send_all(client, events)
    iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
    await client.wait_acked(len(events))
    assert iv["sid"] == sid and iv["kind"] in KINDS
    assert iv["text"], "the templated text goes out at once"
    # Every decision carries why: the score, and any strong signals; one of the
    # site's two rules must hold.
    policy = any_stack.sites["demo"].policy
    strong = [r for r in iv["reasons"] if r["signal"] != "exit_risk"]
    assert iv["reasons"][-1] == {"signal": "exit_risk", "strength": round(iv["score"], 3)}
    assert iv["score"] >= policy.risk_threshold or len(strong) >= policy.min_signals, iv["reasons"]
    assert all(r["strength"] >= policy.signal_strength for r in strong)
    assert 1 <= iv["seq"] <= len(events)
    assert await any_stack.event_count(sid) == len(events)
    await client.close()


async def test_holdout_session_gets_decision_recorded_but_not_shown(any_stack):

    while True:
        sid = new_sid("holdout")
        if in_holdout(sid, 0.10):
            break
    events = journey("struggling", sid)
    client = await connect(any_stack, sid)
    await send_all(client, events)
    await client.wait_acked(len(events))
    await any_stack.gateway.wait_scored(sid, len(events))
    await client.roundtrip()
    assert client.of_type("intervention") == []
    r = any_stack.gateway.redis
    log = await r.xrange(f"{any_stack.prefix}ivlog")
    mine = [fields for _, fields in log if fields[b"sid"] == sid.encode()]
    # Recorded asynchronously after the reply: the decision may still be on its way.
    if not mine:
        last = log[-1][0] if log else b"0-0"
        for _ in range(20):
            got = await r.xread({f"{any_stack.prefix}ivlog": last}, block=500)
            for _, entries in got:
                for eid, fields in entries:
                    last = eid
                    if fields[b"sid"] == sid.encode():
                        mine.append(fields)
            if mine:
                break
    assert mine and mine[0][b"holdout"] == b"1"
    await client.close()


async def test_calm_journey_gets_no_intervention(any_stack):
    sid = treated_sid("calm")  # a holdout session would get none whatever the journey
    events = journey("calm", sid)
    client = await connect(any_stack, sid)
    await send_all(client, events)
    await client.wait_acked(len(events))
    await any_stack.gateway.wait_scored(sid, len(events))
    await client.roundtrip()  # anything queued for this socket has now arrived
    assert client.of_type("intervention") == []
    row = await any_stack.shard_for(sid).session_row.remote(sid)
    assert row is not None and row[0] == len(events), "every event was applied to the session"
    await client.close()


async def test_withdrawn_consent_erases_the_session_from_its_shard_and_log(any_stack):
    stack = any_stack
    keys = stack.gateway.keys
    r = stack.gateway.redis
    sid = treated_sid("withdraw")
    events = journey("struggling", sid)
    client = await connect(stack, sid)
    await send_all(client, events)
    iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
    shown = {"type": "intervention_shown", "iid": iv["iid"], "ts": events[-1]["ts"] + 500}
    await client.send_events([dict(shown, seq=len(events) + 1)])
    await client.wait_acked(len(events) + 1)
    await stack.gateway.wait_scored(sid, len(events) + 1)
    # Records and a snapshot written now (or already, by the periodic flush).
    await stack.shard_for(sid).flush.remote()
    # What the withdrawal must take away: the log, the snapshot, the decision and its outcome,
    # and the data key its log is sealed with (so every copy of the log is unreadable too).
    assert (
        await r.exists(
            keys.snapshot("demo", sid),
            keys.events("demo", sid),
            keys.interventions_of("demo", sid),
            keys.data_key("demo", sid),
        )
        == 4
    )
    assert await r.hget(keys.intervention(iv["iid"]), "outcome") == b"shown"
    logged = await r.xrange(keys.intervention_log)
    assert [e for _, e in logged if e[b"sid"] == sid.encode()]

    await client.send_frame({"t": "consent", "sid": sid, "consent": ["necessary"]})
    reply = await client.wait_for(lambda f: f["t"] == "consent")
    assert reply["consent"] == ["necessary"]
    # A session on the same shard whose events come after the withdrawal: once they
    # are scored, the shard has handled the withdrawal (one queue per shard, in order).
    other = new_sid("after")
    while stack.gateway.ring.shard_of(other) != stack.gateway.ring.shard_of(sid):
        other = new_sid("after")
    later = await connect(stack, other)
    await later.send_events(journey("calm", other)[:1])
    await stack.gateway.wait_scored(other, 1)

    assert await stack.shard_for(sid).session_row.remote(sid) is None
    gone = [
        keys.snapshot("demo", sid),
        keys.events("demo", sid),
        keys.interventions_of("demo", sid),
        keys.data_key("demo", sid),
    ]
    assert await r.exists(*gone, keys.intervention(iv["iid"])) == 0
    logged = await r.xrange(keys.intervention_log)
    assert not [e for _, e in logged if e[b"sid"] == sid.encode()]
    assert json.loads(await r.hget(keys.session("demo", sid), "consent")) == ["necessary"]
    await client.send_events([dict(events[0], seq=len(events) + 2)])
    refused = await client.wait_for(lambda f: f["t"] == "error")
    assert refused["code"] == "unknown_session"  # nothing more is collected
    assert await stack.event_count(sid) == 0
    await client.close()
    await later.close()


async def test_bad_input_gets_errors_and_loses_nothing_else(any_stack):
    sid = new_sid("bad")
    good = journey("calm", sid)[:6]
    client = await connect(any_stack, sid, binary=False)
    now = int(time.time() * 1000)
    await client.send_raw("{not json")
    await client.send_raw(json.dumps([1, 2, 3]))
    await client.send_raw(json.dumps({"t": "launch_rockets"}))
    await client.send_events(good[:2])
    bad = [
        {"type": "teleport", "seq": 3, "ts": now},  # unknown type
        {"type": "click", "seq": 4, "ts": now, "x": 1, "y": 2, "reacted": True},  # missing selector
        {"type": "scroll", "seq": 5, "ts": now, "depth": "deep", "dir": "down"},  # mistyped
        {"type": "js_error", "seq": 6, "ts": now, "msg": "x" * 5000},  # too large
        {"type": "visibility", "seq": 7, "ts": now + 3_600_000, "state": "hidden"},  # clock skew
    ]
    await client.send_events(bad)
    rest = [dict(ev, seq=8 + i) for i, ev in enumerate(good[2:])]
    await client.send_events(rest)
    await client.send_events([dict(good[2], seq=40)])  # a gap
    last = 7 + len(rest)
    await client.wait_acked(last)
    await client.roundtrip()
    codes = [f["code"] for f in client.of_type("error")]
    assert codes[:3] == ["bad_frame", "bad_frame", "bad_frame"]
    assert codes[3:8] == ["unknown_type", "missing_field", "bad_type", "too_large", "clock_skew"]
    assert codes[8] == "sequence_gap"
    by_seq = {f["seq"]: f for f in client.of_type("error") if "seq" in f}
    assert by_seq[4]["field"] == "selector" and by_seq[5]["field"] == "depth"
    stored = await any_stack.gateway.store.read_events("demo", sid)
    assert [e["seq"] for e in stored] == [1, 2, *range(8, last + 1)]
    assert client.closed is None, "bad input never closes the connection"
    await any_stack.gateway.wait_scored(sid, last)
    row = await any_stack.shard_for(sid).session_row.remote(sid)
    assert row[0] == 2 + len(rest)
    await client.close()


async def test_resume_after_drop_neither_loses_nor_duplicates(any_stack):
    sid = new_sid("resume")
    events = journey("struggling", sid)
    n = len(events)
    client = await connect(any_stack, sid)
    await send_all(client, events[: n // 2])
    await client.wait_acked(n // 2)
    await client.send_events(events[n // 2 : n // 2 + 4])
    await client.abort()  # cut mid-stream: these four may or may not have been stored
    assert client.acked < n

    resumed = LifelineClient(any_stack.ws_url, "demo", sid, ORIGIN)
    resumed.token = client.token
    resumed.unacked = dict(client.unacked)
    welcome = await resumed.connect()
    assert welcome["t"] == "welcome" and welcome["acked"] >= n // 2
    # Resend everything from the start: the server must drop what it already has.
    await resumed.send_events(events[:10])
    await send_all(resumed, events[10:])
    await resumed.wait_acked(n)
    stored = await any_stack.gateway.store.read_events("demo", sid)
    assert [e["seq"] for e in stored] == list(range(1, n + 1))
    await any_stack.gateway.wait_scored(sid, n)
    row = await any_stack.shard_for(sid).session_row.remote(sid)
    assert row[0] == n, "each event applied exactly once"
    await resumed.close()


async def test_resume_needs_the_token(any_stack):
    sid = new_sid("token")
    client = await connect(any_stack, sid)
    await client.send_events(journey("calm", sid)[:2])
    await client.wait_acked(2)
    await client.close()
    thief = LifelineClient(any_stack.ws_url, "demo", sid, ORIGIN)
    reply = await thief.connect()
    assert reply["t"] == "error" and reply["code"] == "bad_token"
    thief.token = "0" * 32
    await thief.close()
    reply = await thief.connect()
    assert reply["code"] == "bad_token"
    await thief.close()


async def test_handshake_refuses_unknown_site_and_origin(any_stack):
    with pytest.raises(websockets.InvalidStatus) as bad_origin:
        await websockets.connect(any_stack.ws_url + "?site=demo", origin="http://evil.example")
    assert bad_origin.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as bad_site:
        await websockets.connect(any_stack.ws_url + "?site=nope", origin=ORIGIN)
    assert bad_site.value.response.status_code == 403


async def test_hello_without_analytics_consent_is_refused(any_stack):
    client = LifelineClient(
        any_stack.ws_url, "demo", new_sid("noconsent"), ORIGIN, consent=("necessary",)
    )
    reply = await client.connect()
    assert reply["code"] == "consent_required"
    await client.close()


async def test_oversized_frames(any_stack):
    sid = new_sid("big")
    client = await connect(any_stack, sid)
    await client.send_raw(
        msgpack.packb({"t": "events", "sid": sid, "events": [], "pad": "x" * 70_000})
    )
    err = await client.wait_for(lambda f: f["t"] == "error")
    assert err["code"] == "frame_too_large"
    await client.send_events(journey("calm", sid)[:1])
    await client.wait_acked(1)  # still usable
    await client.send_raw(b"\x00" * (1024 * 1024 + 10))
    with pytest.raises(ConnectionError):
        await client.wait_for(lambda f: False, timeout=10)
    assert client.closed[0] == 1009


async def test_beacon_flush_is_validated_and_stored(any_stack):
    sid = new_sid("beacon")
    events = journey("calm", sid)
    client = await connect(any_stack, sid)
    await client.send_events(events[:3])
    await client.wait_acked(3)
    url = f"{any_stack.http_url}/beacon?site=demo"
    body = {
        "sid": sid,
        "token": client.token,
        "now": int(time.time() * 1000),
        "events": events[2:6] + [{"type": "nope", "seq": 7, "ts": events[5]["ts"]}],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, data=json.dumps(body), headers={"Origin": ORIGIN, "Content-Type": "text/plain"}
        ) as resp:
            assert resp.status == 200
            reply = await resp.json()
        async with http.post(
            url, data=json.dumps({**body, "token": "f" * 32}), headers={"Origin": ORIGIN}
        ) as resp:
            assert resp.status == 403
    assert reply["acked"] == 7
    assert [e["code"] for e in reply["errors"]] == ["unknown_type"]
    stored = await any_stack.gateway.store.read_events("demo", sid)
    assert [e["seq"] for e in stored] == [1, 2, 3, 4, 5, 6]
    await client.close()


async def test_shard_crash_recovery_keeps_exact_features(any_stack):
    """Kill the shard mid-journey; its sessions continue exactly as if nothing happened."""
    stack = any_stack
    shard = stack.shards[0]
    sids = []
    while len(sids) < 3:  # sessions that all live on shard 0
        sid = new_sid("crash")
        if stack.gateway.ring.shard_of(sid) == 0:
            sids.append(sid)
    journeys = {sid: journey("struggling" if i % 2 else "calm", sid) for i, sid in enumerate(sids)}
    clients = {sid: await connect(stack, sid) for sid in sids}
    # First part, then a snapshot, then more events that only the log holds.
    for sid, evs in journeys.items():
        await send_all(clients[sid], evs[:4])
        await stack.gateway.wait_scored(sid, 4)
    await shard.flush.remote()  # the periodic flush may have written some already
    keys, r = stack.gateway.keys, stack.gateway.redis
    assert await r.exists(*(keys.snapshot("demo", sid) for sid in sids)) == len(sids)
    for sid, evs in journeys.items():
        await send_all(clients[sid], evs[4:8])
        await stack.gateway.wait_scored(sid, 8)

    before = await shard.ping.remote()
    restarts = stack.gateway.stats.shard_restarts["0"]
    # A crash, not a polite stop: the shard's process dies at once, mid-stream, and Ray
    # restarts the actor. (ray.kill returns before the process is gone, and the link
    # would keep serving the old actor meanwhile.)
    process = psutil.Process((await shard.memory.remote())["pid"])
    process.kill()
    await asyncio.to_thread(process.wait, 30)
    for sid, evs in journeys.items():
        await send_all(clients[sid], evs[8:])
    for sid, evs in journeys.items():
        await clients[sid].wait_acked(len(evs))
        await stack.gateway.wait_scored(sid, len(evs), timeout=60)
    after = await shard.ping.remote()
    assert after["activations"] >= len(sids), "sessions were rebuilt from Redis"
    assert after["batches"] < before["batches"] + 10, "this is a fresh actor"
    # The gateway's link saw the new actor (its new token): the restart is a series in /metrics.
    assert stack.gateway.stats.shard_restarts["0"] == restarts + 1

    for sid, evs in journeys.items():
        # Recovered from a sealed log (encryption at rest is on by default; cluster/sealing.py).
        entries = await stack.gateway.redis.xrange(stack.gateway.keys.events("demo", sid))
        assert entries and all(
            f[b"k"] == stack.gateway.keys.session_id("demo", sid).encode() for _, f in entries
        )
        live = await shard.session_row.remote(sid)
        stored = await stack.gateway.store.read_events("demo", sid)
        uninterrupted = replay(
            [validate_event(e, now_ms=e["ts"]) for e in stored], sid=sid, site="demo"
        )
        assert live == uninterrupted[-1]
        assert live[0] == len(evs)
        await clients[sid].close()


async def test_activation_reads_the_log_tail_after_the_snapshot_or_else_the_whole_log(
    any_stack,
):
    """A session comes back from its snapshot plus only its log's newest entries when they
    reach back to the snapshot; from its whole log when they do not (an old snapshot)."""
    from actors.shard.actor import TAIL_ENTRIES
    from tests.multinode_scenario import journey as long_journey  # ~74 events, numbered 1..

    stack = any_stack
    shard, me = stack.shards[0], stack.gateway.ring.names[0]
    keys, r = stack.gateway.keys, stack.gateway.redis
    sids = []
    while len(sids) < 2:  # "tail", then "whole"; both on shard 0
        sid = new_sid("tail")
        if stack.gateway.ring.shard_of(sid) == 0:
            sids.append(sid)
    journeys = {sid: long_journey(int(time.time() * 1000) - 300_000) for sid in sids}
    clients = {sid: await connect(stack, sid) for sid in sids}
    for sid in sids:
        await send_all(clients[sid], journeys[sid][:5])
        await stack.gateway.wait_scored(sid, 5)
    await shard.flush.remote()
    old_snapshot = await r.get(keys.snapshot("demo", sids[1]))
    for sid in sids:  # one frame an event: one log entry each, more than the tail holds
        await send_all(clients[sid], journeys[sid][5:], batch=1)
        await stack.gateway.wait_scored(sid, len(journeys[sid]))
        assert await r.xlen(keys.events("demo", sid)) > TAIL_ENTRIES + 5
    # Dropped from memory with a snapshot of where they are (a shard-set change's hand-over);
    # the second gets its old snapshot back, so its log's tail no longer reaches it.
    assert await shard.release.remote(["elsewhere"], me) >= 2
    await r.set(keys.snapshot("demo", sids[1]), old_snapshot)
    before = await shard.ping.remote()
    for sid in sids:
        last = journeys[sid][-1]
        await send_all(clients[sid], [dict(last, seq=last["seq"] + 1, ts=last["ts"] + 500)])
        await stack.gateway.wait_scored(sid, last["seq"] + 1)
    after = await shard.ping.remote()
    assert after["activations"] - before["activations"] == 2
    assert after["whole_log_reads"] - before["whole_log_reads"] == 1
    for sid in sids:
        stored = await stack.gateway.store.read_events("demo", sid)
        uninterrupted = replay(
            [validate_event(e, now_ms=e["ts"]) for e in stored], sid=sid, site="demo"
        )
        assert await shard.session_row.remote(sid) == uninterrupted[-1]
        await clients[sid].close()


async def test_model_hot_reload_and_refusal(any_stack):
    """A promoted model is picked up between batches; a mismatched one is refused."""

    from actors.model.scoring import BUNDLED_META, BUNDLED_MODEL
    from training.registry import ModelRegistry

    stack = any_stack
    reg = ModelRegistry(redis_client(stack.redis_url), stack.prefix)
    meta = json.loads(BUNDLED_META.read_text())
    good = reg.save(BUNDLED_MODEL.read_bytes(), {**meta, "note": "hot-reload test"})
    bad = reg.save(BUNDLED_MODEL.read_bytes(), {**meta, "feature_schema": "0000000000000000"})

    sid = new_sid("reload")
    events = journey("calm", sid)
    client = await connect(stack, sid)
    await send_all(client, events[:5])
    reg.promote(good)
    infos = await asyncio.gather(*(s.wait_model_decision.remote(good) for s in stack.shards))
    assert all(i["model"] == good for i in infos)
    await send_all(client, events[5:])
    await client.wait_acked(len(events))
    await stack.gateway.wait_scored(sid, len(events))

    reg.promote(bad)  # without expected_schema the registry lets it through: the shards must refuse
    infos = await asyncio.gather(*(s.wait_model_decision.remote(bad) for s in stack.shards))
    assert all(i["model"] == good and i["model_refusals"] >= 1 for i in infos)
    row = await stack.shard_for(sid).session_row.remote(sid)
    assert row[0] == len(events), "no event was dropped across the swaps"
    await client.close()


async def test_a_challenger_scores_its_share_of_sessions_and_decisions_name_their_model(
    any_stack,
):
    """Champion/challenger: sessions in the challenger's share are decided by it, and recorded so."""

    from actors.core.policy import in_challenger
    from actors.model.scoring import BUNDLED_META, BUNDLED_MODEL
    from training.registry import ModelRegistry

    stack = any_stack
    r = redis_client(stack.redis_url)
    reg = ModelRegistry(r, stack.prefix)
    meta = json.loads(BUNDLED_META.read_text())
    challenger = reg.save(BUNDLED_MODEL.read_bytes(), {**meta, "note": "challenger test"})
    reg.set_challenger(challenger, 0.5)
    infos = await asyncio.gather(*(s.wait_model_decision.remote(challenger) for s in stack.shards))
    assert all(i["challenger"] == challenger for i in infos)
    try:
        sids = {}
        while len(sids) < 2:
            sid = treated_sid("challenge")
            sids.setdefault(in_challenger(sid, 0.5), sid)
        for sid in sids.values():
            events = journey("struggling", sid)
            client = await connect(stack, sid)
            await send_all(client, events)
            await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
            await client.close()
        for s in stack.shards:
            await s.flush.remote()  # waits for the decision records
        models = {}
        for _id, fields in r.xrange(stack.gateway.keys.intervention_log):
            sid = fields[b"sid"].decode()
            if sid in sids.values():
                models.setdefault(sid, set()).add(fields[b"model"].decode())
                assert json.loads(fields[b"drivers"]), "each decision names what drove its score"
        assert models[sids[True]] == {challenger}
        assert challenger not in models[sids[False]] and len(models[sids[False]]) == 1
    finally:
        reg.clear_challenger()


async def test_racing_beacons_store_everything_once(any_stack):
    """A page-hide beacon racing another (or the socket) loses and duplicates nothing."""
    sid = new_sid("beaconrace")
    events = journey("calm", sid)
    client = await connect(any_stack, sid)
    await client.send_events(events[:2])
    await client.wait_acked(2)
    url = f"{any_stack.http_url}/beacon?site=demo"
    now = int(time.time() * 1000)
    bodies = [
        {"sid": sid, "token": client.token, "now": now, "events": events[2:8]},
        {"sid": sid, "token": client.token, "now": now, "events": events[4:10]},
    ]
    async with aiohttp.ClientSession() as http:

        async def post(body):
            async with http.post(url, data=json.dumps(body), headers={"Origin": ORIGIN}) as resp:
                return resp.status, await resp.json()

        replies = await asyncio.gather(*(post(b) for b in bodies))
    assert [status for status, _ in replies] == [200, 200], replies
    assert max(r["acked"] for _, r in replies) == 10
    stored = await any_stack.gateway.store.read_events("demo", sid)
    assert [e["seq"] for e in stored] == list(range(1, 11))
    await client.close()
