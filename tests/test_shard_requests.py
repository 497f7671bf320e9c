"""The loop that serves `lifeline shards` requests (cluster/resharding.py) outlives a Redis hiccup."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio as aioredis

from cluster.keys import Keys
from cluster.resharding import ShardControl

pytestmark = pytest.mark.asyncio(loop_scope="session")


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


async def test_a_timed_out_read_is_retried_and_the_request_still_answered(redis_url, prefix):
    real = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    flaky = Flaky(real)
    control = ShardControl(flaky, keys, ["lifeline-shard-0"], [None], lambda i: ("", None), None)
    task = asyncio.get_running_loop().create_task(control.serve())
    try:
        await real.rpush(keys.shards("requests"), json.dumps({"id": "r1", "op": "list"}))
        got = await real.blpop([keys.shards("reply:r1")], timeout=10)
        assert got is not None, "no reply: the loop died with the timeout"
        assert json.loads(got[1]) == {"ok": True, "op": "list", "shards": ["lifeline-shard-0"]}
        assert flaky.failed == 1 and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await real.aclose()
