"""/healthz turns red for what stops service: a shard whose background loops are down."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.shard.actor import ShardCore
from cluster.config import Settings
from cluster.keys import Keys
from serve.console import ops
from serve.console.context import ConsoleContext

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_health_is_red_while_a_shard_reports_a_loop_down(lifeline_stack, redis_url, prefix):
    core = ShardCore(7, redis_url, prefix, Settings().sites_file, enrich=False)
    core.warm_up()  # starts its loops on its I/O thread
    # Every background loop has started (each has an entry, its failures counted from 0).
    while set(core.info()["loop_failures"]) != {"model", "snapshots", "sites", "tallies"}:
        await asyncio.sleep(0.01)
    infos = []

    async def shard_info():
        return infos

    ctx = ConsoleContext(
        Settings(), redis_url, Keys(prefix), gateway=lifeline_stack.gateway, shard_info=shard_info
    )
    from aiohttp import web

    app = web.Application()
    app["ctx"] = ctx
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/api/health", ops.health_detail)
    async with TestClient(TestServer(app)) as client:
        infos[:] = [core.info()]
        r = await client.get("/healthz")
        assert r.status == 200, await r.text()
        # Its snapshot and model loops end: nothing would snapshot its sessions. (Off the
        # tests' event loop, which the stack's gateway runs on.)
        await asyncio.to_thread(core.stop, 30.0)
        infos[:] = [core.info()]
        r = await client.get("/healthz")
        body = await r.json()
        # The public health names the failing part and nothing more (no shard internals).
        assert r.status == 503 and body == {
            "ok": False,
            "checks": {"redis": True, "gateway": True, "shards": False},
        }
        r = await client.get("/api/health")
        body = await r.json()
        assert r.status == 503 and body["shards_unhealthy"] == [7]
