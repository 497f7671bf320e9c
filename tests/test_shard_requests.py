"""The loop that serves `lifeline shards` requests (cluster/resharding.py) outlives a Redis hiccup.

The loop runs on an event loop of its own in a thread (as it would in `lifeline up`),
with a client whose first read times out; the test asks it over the real Redis list.
"""

from __future__ import annotations

import asyncio
import json
import threading

import redis
import redis.asyncio as aioredis

from cluster.keys import Keys
from cluster.redis_client import redis_client
from cluster.resharding import ShardControl


class Flaky:
    """A Redis client whose first BLPOP times out, as a slow server's would."""

    def __init__(self, real: aioredis.Redis) -> None:
        self.real, self.failed = real, 0

    async def blpop(self, *args, **kwargs):
        if not self.failed:
            self.failed += 1
            raise redis.TimeoutError("Timeout reading from socket")
        return await self.real.blpop(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_a_timed_out_read_is_retried_and_the_request_still_answered(redis_url, prefix):
    keys = Keys(prefix)
    ready, stop = threading.Event(), threading.Event()
    state: dict = {}

    async def serve() -> None:
        real = redis_client(redis_url, aio=True)
        flaky = Flaky(real)
        state["flaky"] = flaky
        control = ShardControl(
            flaky, keys, ["lifeline-shard-0"], [None], lambda i: ("", None), None
        )
        task = asyncio.get_running_loop().create_task(control.serve())
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)  # the test thread's signal: nothing to await across threads
        state["alive"] = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await real.aclose()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    sync = redis_client(redis_url)
    try:
        assert ready.wait(10)
        sync.rpush(keys.shards("requests"), json.dumps({"id": "r1", "op": "list"}))
        got = sync.blpop([keys.shards("reply:r1")], timeout=10)
        assert got is not None, "no reply: the loop died with the timeout"
        assert json.loads(got[1]) == {"ok": True, "op": "list", "shards": ["lifeline-shard-0"]}
        assert state["flaky"].failed == 1
    finally:
        stop.set()
        thread.join(10)
        sync.close()
    assert not thread.is_alive() and state["alive"]
