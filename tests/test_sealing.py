"""Encryption at rest: the event log sealed under per-subject data keys, so erasure reaches copies.

Real Redis throughout (the ``prefix`` fixture); the recovery test hosts a
shard in this process (its metrics need Ray), the gateway tests run on the
shared stack. What they hold: Redis never sees a logged event in plaintext;
every reader opens what the gateway sealed; two gateways racing for a
subject get one key; deleting a subject's data key makes its events
unreadable everywhere, an export written before the erasure included, while
other subjects stay intact.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from actors.core.events import validate_event
from actors.core.host import EVENTS, VISIT, pack_batch
from actors.core.session import replay
from actors.shard.actor import ShardCore
from cluster.config import Settings
from cluster.keys import Keys
from cluster.sealing import KeyUnavailable, MasterKeys, Opener
from serve.edge.store import Append, EventStore
from training.dataset import export_redis, read_jsonl
from training.sealed_export import write_sealed_jsonl

aio = pytest.mark.asyncio(loop_scope="session")

MASTER = MasterKeys("test-master-key-" + "x" * 20)


def _events(start: int, n: int, marker: str) -> list[dict]:
    """``n`` normalised page views from seq ``start``, each naming the product ``marker``."""
    t0 = int(time.time() * 1000) - 60_000
    return [
        validate_event(
            {"type": "page_view", "seq": s, "ts": t0 + s * 100, "path": f"/product/{marker}"},
            t0 + s * 100,
        )
        for s in range(start, start + n)
    ]


async def _log(store: EventStore, sid: str, evs: list[dict], vid: str | None = None) -> None:
    """What a gateway does: a hello (the subject's key), then the events appended sealed."""
    # token=True: the hello carried a (checked) resume token, so a known session resumes.
    status, seq, sealer = await store.open_session(sid, "demo", ["analytics"], True, vid)
    assert status == "ok", status
    run = Append.of("demo", sid, seq + 1, seq + len(evs), evs, sealer)
    assert await store.append_many([run]) == [(seq + len(evs), True)]


def test_master_keys_wrap_rotate_and_never_show_a_secret() -> None:
    old = MasterKeys("old-secret-aaaaaaaaaaaa")
    wrapped = old.new_wrapped("demo")
    rotated = MasterKeys("new-secret-bbbbbbbbbbbb, old-secret-aaaaaaaaaaaa")
    assert rotated.current != old.current and MasterKeys.key_id(wrapped) == old.current
    assert rotated.unwrap("demo", wrapped) == old.unwrap("demo", wrapped)  # old keys still open
    assert MasterKeys.key_id(rotated.wrap("demo", b"k" * 32)) == rotated.current
    with pytest.raises(KeyUnavailable):  # the old secret dropped: its keys no longer open
        MasterKeys("new-secret-bbbbbbbbbbbb").unwrap("demo", wrapped)
    with pytest.raises(KeyUnavailable):  # bound to its site
        old.unwrap("other", wrapped)
    assert "secret" not in repr(rotated)
    assert pickle.loads(pickle.dumps(rotated)).unwrap("demo", wrapped) == old.unwrap(
        "demo", wrapped
    )


def test_nonces_never_repeat_in_a_process_nor_across_a_fork() -> None:
    """Entries are sealed with a per-process counter nonce (cluster/sealing.py ``_nonces``).

    GCM under one key must never see a nonce twice: every nonce of a sealer
    differs, the next process call continues the count, and a forked child
    draws a start of its own instead of repeating its parent's next nonces.
    Entries sealed before the counter (a random nonce each) still open.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from cluster.sealing import NONCE_BYTES, next_nonce

    key = b"k" * 32
    sealer = MASTER.sealer("demo:v-nonce", MASTER.wrap("demo", key))
    blobs = [sealer.seal(b"payload %d" % i) for i in range(2000)]
    assert len({b[:NONCE_BYTES] for b in blobs}) == len(blobs)
    last = int.from_bytes(blobs[-1][:NONCE_BYTES], "big")
    assert int.from_bytes(next_nonce(), "big") == (last + 1) % 2**96  # one counter per process
    opener = Opener(Keys("unused:"), MASTER)
    opener.learn(["demo:v-nonce"], [MASTER.wrap("demo", key)])
    assert [opener.open("demo:v-nonce", b) for b in blobs] == [
        b"payload %d" % i for i in range(2000)
    ]
    old = os.urandom(NONCE_BYTES)  # how an entry was sealed up to session 15
    assert opener.open("demo:v-nonce", old + AESGCM(key).encrypt(old, b"before", None)) == b"before"
    # A fork, in a subprocess of its own (never fork the test process: it runs threads).
    script = (
        "import os\n"
        "from cluster.sealing import next_nonce\n"
        "parent = next_nonce()\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(w, next_nonce())\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print(parent.hex(), os.read(r, 12).hex(), next_nonce().hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    parent, child, parent_next = (int(x, 16) for x in out)
    assert parent_next == parent + 1  # the parent's count goes on
    assert abs(child - parent) > 2**64  # the child drew its own start, far from its parent's


def test_the_development_master_key_is_refused_off_loopback() -> None:
    from cluster.config import InsecureSettings, check_data_key

    assert check_data_key(Settings(host="127.0.0.1")) is not None  # a loud warning
    with pytest.raises(InsecureSettings, match="LIFELINE_DATA_KEY"):
        check_data_key(Settings(host="0.0.0.0"))
    assert check_data_key(Settings(host="0.0.0.0", data_key="an-operator-key-" * 2)) is None
    shown = dict((env, value) for env, value, _ in Settings().describe_values())
    assert shown["LIFELINE_DATA_KEY"] == "(development default)"


@aio
async def test_the_log_holds_no_plaintext_and_reads_back_equal(redis_url, prefix) -> None:
    keys = Keys(prefix)
    r = aioredis.Redis.from_url(redis_url)
    store = EventStore(r, keys, MASTER)
    try:
        anon, known, vid = "s-anon-0001", "s-known-001", "v-" + uuid.uuid4().hex[:16]
        evs = {anon: _events(1, 5, "sku-ANON-7731"), known: _events(1, 5, "sku-VISIT-4412")}
        await _log(store, anon, evs[anon])
        await _log(store, known, evs[known], vid)
        for sid, ref in ((anon, Keys.session_id("demo", anon)), (known, f"demo:{{{vid}}}")):
            entries = await r.xrange(keys.events("demo", sid))
            raw = b"".join(v for _, f in entries for v in f.values())
            assert b"sku-" not in raw and b"/product" not in raw, "plaintext in Redis"
            assert {f[b"k"] for _, f in entries} == {ref.encode()}
            assert await store.read_events("demo", sid) == evs[sid]
            assert await store.read_events("demo", sid, limit=2) == evs[sid][:2]
        # The explorer's index rebuild opens the last entry for the session's last-seen time.
        from actors.shard.index import reindex

        assert (await reindex(r, keys, master=MASTER))["indexed"] == 2
        seen = await r.zscore(keys.session_index("demo", "seen"), known)
        assert seen == evs[known][-1]["ts"]
        # A reader that does not seal (the console) opens the sealed log too.
        reader = EventStore(r, keys, MASTER, seal=False)
        assert await reader.read_events("demo", known) == evs[known]
        # Erasing the visitor's key: its events are gone for every reader, the other's stay.
        await r.delete(keys.data_key("demo", vid))
        assert await reader.read_events("demo", known) == []
        assert reader.unreadable == 1
        assert await reader.read_events("demo", anon) == evs[anon]
    finally:
        store.close()
        await r.aclose()


@aio
async def test_two_gateways_racing_for_a_subject_get_one_key(redis_url, prefix) -> None:
    keys = Keys(prefix)
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    gateways = [EventStore(c, keys, MASTER) for c in clients]
    try:
        vid = "v-" + uuid.uuid4().hex[:16]
        sids = [f"s-race-{i:04d}" for i in range(8)]
        # Every hello of the visitor's sessions at once, half on each gateway's connection.
        opened = await asyncio.gather(
            *(
                gateways[i % 2].open_session(sid, "demo", ["analytics"], True, vid)
                for i, sid in enumerate(sids)
            )
        )
        assert {status for status, _, _ in opened} == {"ok"}
        assert {s.ref for _, _, s in opened} == {Keys.session_id("demo", vid)}
        stored = MASTER.unwrap("demo", await clients[0].get(keys.data_key("demo", vid)))
        opener = Opener(keys, MASTER)
        opener.learn([Keys.session_id("demo", vid)], [MASTER.wrap("demo", stored)])
        for _, _, sealer in opened:  # each gateway seals under the one stored key
            assert opener.open(sealer.ref, sealer.seal(b"payload")) == b"payload"
        assert len(await clients[0].keys(keys.data_key("demo", "*"))) == 1
        assert await clients[0].ttl(keys.data_key("demo", vid)) > 0
    finally:
        for g, c in zip(gateways, clients, strict=True):
            g.close()
            await c.aclose()


@aio
async def test_a_shard_recovers_a_session_from_its_sealed_log(ray_cluster, redis_url, prefix):
    keys = Keys(prefix)
    r = aioredis.Redis.from_url(redis_url)
    store = EventStore(r, keys, MASTER)
    core = ShardCore(0, redis_url, prefix, Settings().sites_file, enrich=False, master=MASTER)
    try:
        sid, vid = "s-recover-01", "v-" + uuid.uuid4().hex[:16]
        first = _events(1, 4, "sku-EARLY")  # logged under the session's own key
        later = _events(5, 4, "sku-LATER")  # the next hello names the visitor: its key
        await _log(store, sid, first)
        await _log(store, sid, later, vid)
        refs = {f[b"k"] for _, f in await r.xrange(keys.events("demo", sid))}
        assert refs == {
            Keys.session_id("demo", sid).encode(),
            Keys.session_id("demo", vid).encode(),
        }
        # This shard never saw the session: its next events make it load the past from Redis.
        last = _events(9, 1, "sku-LAST")
        await _log(store, sid, last, vid)
        batch = [
            (VISIT, sid, "demo", ["analytics"], vid.encode()),
            (EVENTS, sid, "demo", ["analytics"], Append.of("demo", sid, 9, 9, last).payload),
        ]
        await asyncio.to_thread(core.handle, pack_batch(batch))
        assert core.info()["activations"] == 1
        assert core.session_row(sid) == replay(first + later + last, sid=sid, site="demo")[-1]
        assert core.info()["unreadable_entries"] == 0
    finally:
        core.stop()
        store.close()
        await r.aclose()


@aio
async def test_an_export_is_unreadable_after_its_visitor_is_erased(
    redis_url, prefix, tmp_path
) -> None:
    keys = Keys(prefix)
    r = aioredis.Redis.from_url(redis_url)
    store = EventStore(r, keys, MASTER)
    sync = redis.Redis.from_url(redis_url)
    try:
        erased, kept = "v-" + uuid.uuid4().hex[:16], "v-" + uuid.uuid4().hex[:16]
        logged = {
            "s-erased-01": (erased, _events(1, 4, "sku-GONE-1")),
            "s-erased-02": (erased, _events(1, 3, "sku-GONE-2")),
            "s-kept-0001": (kept, _events(1, 5, "sku-KEPT-1")),
            "s-anon-0001": (None, _events(1, 2, "sku-ANON-1")),
        }
        for sid, (vid, evs) in logged.items():
            await _log(store, sid, evs, vid)
        path = tmp_path / "export.jsonl"
        assert write_sealed_jsonl(sync, prefix, path) == (4, 4)
        text = path.read_text()
        assert "sku-" not in text and "/product" not in text, "plaintext in the export"
        assert {json.loads(line)["sid"] for line in text.splitlines()} == set(logged)

        opener = Opener(keys, MASTER)
        before = {s.sid: s.events for s in read_jsonl(path, redis=sync, opener=opener)}
        assert before == {sid: evs for sid, (_, evs) in logged.items()}
        # Another deployment's master key opens nothing, and says so apart from erasures.
        stranger = Opener(keys, MasterKeys("another-deployments-key"))
        assert read_jsonl(path, redis=sync, opener=stranger) == []
        assert (stranger.dropped_sessions, stranger.unopenable_keys) == (4, 3)

        # The erasure deletes the visitor's data keys (its own and its sessions').
        assert await r.delete(*keys.data_keys_of("demo", erased, ["s-erased-01", "s-erased-02"]))
        opener = Opener(keys, MASTER)
        after = {s.sid: s.events for s in read_jsonl(path, redis=sync, opener=opener)}
        assert opener.dropped_sessions == 2
        assert after == {sid: evs for sid, (vid, evs) in logged.items() if vid != erased}
        # The live log reads the same way for training.
        live_opener = Opener(keys, MASTER)
        live = {s.sid: s.events for s in export_redis(sync, prefix, opener=live_opener)}
        assert live == after and live_opener.dropped_sessions == 2
        # Without the deployment's Redis a sealed export cannot be read at all.
        with pytest.raises(Exception, match="Redis"):
            read_jsonl(path)
    finally:
        store.close()
        await r.aclose()
        sync.close()


@aio
async def test_the_gateway_seals_socket_and_beacon_events_under_the_visitor_key(
    any_stack,
) -> None:
    import aiohttp

    from serve.dev.pyclient import LifelineClient
    from tests.test_spine import ORIGIN, new_sid

    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    sid, vid = new_sid("sealed"), "v-" + uuid.uuid4().hex[:16]
    evs = [
        {"type": "page_view", "seq": s, "ts": int(time.time() * 1000) - 5_000 + s, "path": p}
        for s, p in ((1, "/product/sku-SOCKET-991"), (2, "/product/sku-SOCKET-992"))
    ]
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN, vid=vid)
    assert (await client.connect())["t"] == "welcome"
    await client.send_events(evs)
    await client.wait_acked(2)
    beacon = {
        "sid": sid,
        "token": client.token,
        "events": [{"type": "page_view", "seq": 3, "ts": evs[-1]["ts"] + 1, "path": "/cart/BCN"}],
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stack.http_url}/beacon?site=demo",
            data=json.dumps(beacon),
            headers={"Origin": ORIGIN},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    await client.close()
    entries = await r.xrange(keys.events("demo", sid))
    raw = b"".join(v for _, f in entries for v in f.values())
    assert b"sku-SOCKET" not in raw and b"/cart/BCN" not in raw, "plaintext in Redis"
    assert {f[b"k"] for _, f in entries} == {Keys.session_id("demo", vid).encode()}
    paths = [e["path"] for e in await stack.gateway.store.read_events("demo", sid)]
    assert paths == ["/product/sku-SOCKET-991", "/product/sku-SOCKET-992", "/cart/BCN"]


def test_a_rotation_rewraps_every_data_key_and_keeps_its_ttl(redis_url, prefix) -> None:
    from cluster.sealing import rewrap

    keys = Keys(prefix)
    r = redis.Redis.from_url(redis_url)
    old = MasterKeys("old-master-key-aaaaaaaa")
    rotated = MasterKeys("new-master-key-bbbbbbbb,old-master-key-aaaaaaaa")
    data = {}
    for subject in ("v-aaaaaaaaaa", "v-bbbbbbbbbb", "s-cccccccccc"):
        data[subject] = b"%-32s" % subject.encode()
        r.set(keys.data_key("demo", subject), old.wrap("demo", data[subject]), ex=3600)
    r.set(keys.data_key("demo", "v-fresh00000"), rotated.new_wrapped("demo"), ex=3600)
    r.set(keys.data_key("demo", "v-lost000000"), MasterKeys("gone-key-cc").new_wrapped("demo"))
    assert rewrap(r, keys, rotated) == {"rewrapped": 3, "current": 1, "unopenable": 1}
    new_only = MasterKeys("new-master-key-bbbbbbbb")  # the old key can now be dropped
    for subject, key in data.items():
        wrapped = r.get(keys.data_key("demo", subject))
        assert new_only.unwrap("demo", wrapped) == key
        assert 0 < r.ttl(keys.data_key("demo", subject)) <= 3600
    r.close()


@aio
async def test_a_hello_whose_data_key_does_not_open_is_refused_as_overloaded(
    redis_url, prefix
) -> None:
    from serve.edge.protocol import CLAIM_REFUSALS

    keys = Keys(prefix)
    r = aioredis.Redis.from_url(redis_url)
    ours, misconfigured = EventStore(r, keys, MASTER), EventStore(r, keys, MasterKeys("other-key"))
    try:
        assert (await ours.open_session("s-keyed-0001", "demo", ["analytics"], True))[0] == "ok"
        status, _seq, sealer = await misconfigured.open_session(
            "s-keyed-0001", "demo", ["analytics"], True
        )
        assert (status, sealer) == ("key_unavailable", None)
        assert CLAIM_REFUSALS[status][0] == "overloaded"  # the client resends later
        # Nothing was overwritten: the deployment's own key still opens.
        assert (await ours.open_session("s-keyed-0001", "demo", ["analytics"], True))[0] == "ok"
    finally:
        ours.close()
        misconfigured.close()
        await r.aclose()
