"""Shared fixtures: one real Ray cluster and one real Redis server for the whole run.

Every test gets its own Redis key prefix, so tests share the server without
seeing each other's keys. Ray is started once per run, sized for a 2-core
machine, and reused by every test that asks for it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import pytest_asyncio

from cluster.redis_server import delete_prefix, ensure_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A reachable Redis: $REDIS_URL, the local one at 6379, or an embedded server."""
    server = ensure_redis(os.environ.get("REDIS_URL", ""))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A local Redis Cluster of three primaries (cluster/redis_cluster_local.py), for the run."""
    from cluster.redis_cluster_local import RedisClusterSet

    c = RedisClusterSet(primaries=3)
    yield c.url
    c.stop()


@pytest.fixture(params=["standalone", "cluster"])
def store_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Each Redis Lifeline runs on: the standalone one, then a Redis Cluster (the same test twice)."""
    if request.param == "standalone":
        return redis_url
    return request.getfixturevalue("redis_cluster_url")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    p = f"lltest-{uuid.uuid4().hex[:10]}:"
    yield p
    delete_prefix(redis_url, p)


@pytest.fixture(scope="session")
def ray_cluster(redis_url: str) -> Iterator[None]:
    """One local Ray cluster for the whole test run (ray.init takes seconds)."""
    import ray

    from cluster.stack import RAY_SYSTEM_CONFIG

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
            namespace="lifeline-tests",
            _system_config=RAY_SYSTEM_CONFIG,
        )
    yield None
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # Serve may never have started
        pass
    ray.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def lifeline_stack(ray_cluster: None, redis_url: str):
    """The whole service (shards, gateway, HTTP), started once in the tests' event loop.

    Attributes: ``http_url``, ``ws_url``, ``redis_url``, ``prefix``, ``gateway``,
    ``shards``; ``await event_count(sid)``; ``shard_for(sid)``.
    """
    from cluster.config import Settings
    from cluster.stack import Stack

    prefix = f"lltest-stack-{uuid.uuid4().hex[:8]}:"
    stack = Stack(
        Settings(redis_url=redis_url, prefix=prefix, ws_port=0, http_port=0, console_port=0)
    )
    await stack.start(shard_name_suffix=f"-{uuid.uuid4().hex[:6]}")
    yield stack
    await stack.stop()
    delete_prefix(redis_url, prefix)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cluster_stack(ray_cluster: None, redis_cluster_url: str):
    """The whole service as ``lifeline_stack``, on a local Redis Cluster of three primaries."""
    from cluster.config import Settings
    from cluster.stack import Stack

    stack = Stack(
        Settings(
            redis_url=redis_cluster_url,
            prefix=f"lltest-rc-{uuid.uuid4().hex[:8]}:",
            ws_port=0,
            http_port=0,
            console_port=0,
            shards=1,  # one shard: what is under test is Redis (two stacks share two cores)
        )
    )
    await stack.start(shard_name_suffix=f"-{uuid.uuid4().hex[:6]}")
    yield stack
    await stack.stop()


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def any_stack(request: pytest.FixtureRequest):
    """The stack on each Redis Lifeline runs on: ``lifeline_stack``, then ``cluster_stack``."""
    name = "lifeline_stack" if request.param == "standalone" else "cluster_stack"
    return request.getfixturevalue(name)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chat(any_stack):
    """The stack with a ChatAssistant (stand-in model) behind its gateway's chat.

    The shared stack runs without a model; this deploys an assistant whose model is the
    local Messages API stand-in (serve/dev/llm_stub.py) and hands it to the gateway for
    the tests of one module.
    """
    import asyncio

    from cluster.config import Settings
    from serve.apps import assistant as A
    from serve.dev.llm_stub import StubLLM

    stack = any_stack
    stub = StubLLM(api_key="test-key", first_token_s=0.05, tokens_per_s=400)
    await stub.start()
    name = f"assistant-{uuid.uuid4().hex[:6]}"
    handle = await asyncio.to_thread(
        A.deploy_assistant,
        Settings(anthropic_api_key="test-key", anthropic_base_url=stub.url),
        stack.redis_url,
        stack.prefix,
        overrides={"first_token_s": 3.0},
        name=name,
    )
    stack.gateway.chat.assistant = handle
    stack.stub = stub  # type: ignore[attr-defined]  # its requests: what the model was sent
    yield stack
    stack.gateway.chat.assistant = None
    from ray import serve

    serve.delete(name, _blocking=False)
    await stub.close()
