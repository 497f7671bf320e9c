"""Redis Cluster surviving a failure: a primary killed under load, its replica promoted.

Real processes: a Redis Cluster of three primaries with two replicas each
(cluster/redis_cluster_local.py), a stack given its ``redis+cluster://`` URL
with replica acknowledgements (``WAIT 1`` on each node's append connection),
and WebSocket visitors whose sessions live on every primary. One primary
gets SIGKILL mid-load; Redis Cluster promotes one of its replicas; the
gateway re-reads the slot map when that node's rounds fail and the visitors
resend. Every acknowledged event is then in the log exactly once, in order,
and every session is scored again within a bound. The load and the kill are
test_sentinel_failover.py's, with the cluster's kill and failover.
"""

from __future__ import annotations

import pytest

from tests.test_sentinel_failover import (
    RESCORED_WITHIN_S,
    _every_ack_logged_once,
    _load_and_kill,
    _stack,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_cluster_primary_killed_under_load_loses_and_repeats_nothing(ray_cluster):
    from cluster.redis_cluster_local import RedisClusterSet

    # Two replicas per primary: WAIT 1 can still be met after one is promoted.
    rc = RedisClusterSet(primaries=3, replicas=2)
    try:
        stack = await _stack(rc.url, wait_replicas=1)
        try:
            run = await _load_and_kill(stack, rc)
            visitors = run["visitors"]
            assert run["new"] != run["old"]
            assert max(run["rescored_s"]) < RESCORED_WITHIN_S, run["rescored_s"]
            await _every_ack_logged_once(stack, run)
            # Sessions lived on the killed primary, so the failover was on their path.
            names = {stack.gateway.store._nodes.node(f"{{{v.sid}}}") for v in visitors}
            assert f"127.0.0.1:{run['new']}" in names
            print(
                f"\nRedis Cluster, WAIT 1: failover {run['failover_s']:.2f} s, rescored max "
                f"{max(run['rescored_s']):.2f} s, acked {sum(v.acked for v in visitors)}, "
                f"lost 0, errors {run['res']['errors']}"
            )
            for v in visitors:
                v.leave()
        finally:
            await stack.stop()
    finally:
        rc.stop()
