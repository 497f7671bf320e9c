"""The append round's own Redis connection (serve/edge/resp.py), against a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from serve.edge.resp import ScriptCaller, command

aio = pytest.mark.asyncio(loop_scope="session")

ECHO = "return {ARGV[1], #ARGV[1], 'ok'}"


def test_commands_are_resp_arrays_of_bulk_strings():
    assert command(b"SELECT", 5) == b"*2\r\n$6\r\nSELECT\r\n$1\r\n5\r\n"
    assert command(b"EVAL", b"a\r\nb", 0) == b"*3\r\n$4\r\nEVAL\r\n$4\r\na\r\nb\r\n$1\r\n0\r\n"


@aio
async def test_calls_return_the_script_reply_and_survive_script_errors(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    # A script Redis has never seen, not loaded on connect: the first call meets
    # NOSCRIPT, with nothing behind it, and sends the script in full.
    fresh = ScriptCaller(r, ECHO + f" -- {uuid.uuid4().hex}", preload=False)
    failing = ScriptCaller(r, "return redis.error_reply('BAD ' .. ARGV[1])")
    try:
        assert await fresh(b"\x00bin\r\n") == [b"\x00bin\r\n", 6, b"ok"]
        assert await fresh(b"again") == [b"again", 5, b"ok"]  # now by its hash
        with pytest.raises(ResponseError, match="BAD input"):
            await failing(b"input")
        conn = failing._conn
        with pytest.raises(ResponseError, match="BAD again"):
            await failing(b"again")
        assert failing._conn is conn  # an error reply does not cost the connection
    finally:
        fresh.close()
        failing.close()
        await r.aclose()


@aio
async def test_a_killed_connection_is_reopened_by_the_next_call(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    caller = ScriptCaller(r, ECHO)
    try:
        assert await caller(b"a") == [b"a", 1, b"ok"]
        first = caller._conn
        assert first is not None and first.transport is not None
        host, port = first.transport.get_extra_info("sockname")[:2]
        assert await r.client_kill(f"{host}:{port}")
        try:
            reply = await caller(b"b")  # may meet the dead socket, or a new one
        except RedisConnectionError:
            reply = await caller(b"b")
        assert reply == [b"b", 1, b"ok"]
        assert caller._conn is not first
    finally:
        caller.close()
        await r.aclose()


@aio
async def test_the_database_in_the_url_is_selected(redis_url, prefix):
    base = redis_url.rsplit("/", 1)[0]
    other = aioredis.Redis.from_url(f"{base}/5")
    zero = aioredis.Redis.from_url(f"{base}/0")
    caller = ScriptCaller(other, "redis.call('SET', ARGV[1], 'x', 'EX', 60) return 1")
    key = f"{prefix}db5"
    try:
        assert await caller(key.encode()) == 1
        assert await other.get(key) == b"x"
        assert await zero.get(key) is None
    finally:
        caller.close()
        await other.delete(key)
        await other.aclose()
        await zero.aclose()


@aio
async def test_a_refused_login_is_a_connection_error(redis_url):
    # Redis refuses a wrong password, and any AUTH at all when it has none set.
    scheme, rest = redis_url.split("//", 1)
    r = aioredis.Redis.from_url(f"{scheme}//:wrong-password@{rest.rsplit('@', 1)[-1]}")
    caller = ScriptCaller(r, ECHO)
    try:
        with pytest.raises(RedisConnectionError, match="refused"):
            await caller(b"a")
    finally:
        caller.close()
        await r.aclose()


@aio
async def test_a_call_without_reply_times_out_and_drops_the_connection():
    accepted: asyncio.Queue = asyncio.Queue()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))  # answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2)
    # Not preloaded: the call itself, not a SCRIPT LOAD, meets the silence.
    caller = ScriptCaller(r, ECHO, preload=False)
    try:
        with pytest.raises(RedisTimeoutError):
            await caller(b"a")
        reader, writer = await accepted.get()
        # The call reached the server, then the caller hung up (read() ends at EOF).
        assert (await reader.read()).startswith(b"*4\r\n$7\r\nEVALSHA\r\n")
        writer.close()
    finally:
        caller.close()
        server.close()
        await server.wait_closed()
        await r.aclose()


COUNT = "return {redis.call('INCR', ARGV[1]), ARGV[1]}"


@aio
async def test_a_new_connection_loads_the_script(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    caller = ScriptCaller(r, ECHO + f" -- {uuid.uuid4().hex}")
    try:
        await caller._connect()
        assert await r.script_exists(caller._sha.decode()) == [True]
    finally:
        caller.close()
        await r.aclose()


@aio
async def test_started_calls_run_in_the_order_they_were_started(redis_url, prefix):
    r = aioredis.Redis.from_url(redis_url)
    caller = ScriptCaller(r, COUNT)
    key = f"{prefix}pipelined".encode()
    try:
        started = [await caller.start(key) for _ in range(5)]
        assert len(caller._conn.waiting) == 5  # all written before any reply was read
        assert [await reply for reply in started] == [[n, key] for n in range(1, 6)]
    finally:
        caller.close()
        await r.delete(key)
        await r.aclose()


@aio
async def test_a_script_lost_with_calls_in_flight_fails_them_and_the_next_call_recovers(
    redis_url, prefix
):
    # Redis does not know the script (as after SCRIPT FLUSH) and two calls are out:
    # resending the first would run it after the second, so both fail, and neither ran.
    r = aioredis.Redis.from_url(redis_url)
    caller = ScriptCaller(r, COUNT + f" -- {uuid.uuid4().hex}", preload=False)
    key = f"{prefix}lost".encode()
    try:
        first, second = await caller.start(key), await caller.start(key)
        for reply in (first, second):
            with pytest.raises(RedisConnectionError):
                await reply
        assert await r.get(key) is None
        assert await caller(key) == [1, key]  # a new connection; alone, so sent in full
        assert await r.get(key) == b"1"
    finally:
        caller.close()
        await r.delete(key)
        await r.aclose()


INCR = "return redis.call('INCR', ARGV[1])"


@aio
async def test_a_wait_that_confirms_fewer_replicas_fails_the_call(redis_url):
    from serve.edge.resp import ReplicasBehind

    r = aioredis.Redis.from_url(redis_url)
    replicas = (await r.info("replication"))["connected_slaves"]
    key = f"lltest-wait-{uuid.uuid4().hex}"
    enough = ScriptCaller(r, INCR, wait=(replicas, 50)) if replicas else None
    short = ScriptCaller(r, INCR, wait=(replicas + 1, 20))
    try:
        if enough is not None:
            assert await enough(key.encode()) == 1
        # The call ran on the primary, but is not confirmed: the caller hears so, and the
        # connection stays (the next call, written behind the WAIT, is in order).
        with pytest.raises(ReplicasBehind, match=f"0 of {replicas + 1}|{replicas} of"):
            await short(key.encode())
        assert int(await r.get(key)) == (2 if enough else 1)
        conn = short._conn
        pending = [await short.start(key.encode()) for _ in range(3)]  # pipelined, each + WAIT
        for p in pending:
            with pytest.raises(ReplicasBehind):
                await p
        assert short._conn is conn and int(await r.get(key)) == (5 if enough else 4)
    finally:
        short.close()
        if enough is not None:
            enough.close()
        await r.delete(key)
        await r.aclose()


@aio
async def test_a_primary_demoted_to_replica_fails_the_call_and_drops_the_connection():
    from cluster.redis_server import start_embedded

    server = start_embedded()
    r = aioredis.Redis.from_url(server.url)
    caller = ScriptCaller(r, INCR)
    try:
        assert await caller(b"k") == 1
        conn = caller._conn
        # What a failover does to the old primary: it becomes a replica (of a primary
        # that is not there: the link stays down, the data stays read-only).
        await r.execute_command("REPLICAOF", "127.0.0.1", "1")
        with pytest.raises(RedisConnectionError, match="replica now"):
            await caller(b"k")
        assert conn is not None and conn.closed  # the next call opens a new connection
        await r.execute_command("REPLICAOF", "NO", "ONE")
        assert await caller(b"k") == 2 and caller._conn is not conn
    finally:
        caller.close()
        await r.aclose()
        server.stop()
