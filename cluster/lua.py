"""How Lifeline calls its Lua scripts: one packed argument, and on Redis Cluster, node by node.

A script takes one msgpack argument (:func:`script_arg`) instead of many:
redis-py builds and encodes every argument in Python. The scripts name
their keys themselves from prefixes, so one call can write many sessions.

On Redis Cluster (cluster/redis_cluster.py) a script runs on one node and
may touch only keys that node serves. :func:`by_node` sends one call per
node with the items whose key lives there; :func:`run_parts` runs a list
of (key, op) steps of an "ops" script the same way, for writes whose
steps each live in their own slot (a decision's log entry, record and
index). On a standalone Redis or Sentinel each is one call.

Limits: calls to several nodes are atomic per node, not together; callers
order their steps so that a crash between them leaves nothing that
expiry does not take (each caller says what).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgpack

from cluster.redis_cluster import is_cluster_client, node_of

T = TypeVar("T")


def script_arg(value: Any) -> bytes:
    """``value`` packed for a Lua script that reads it with ``cmsgpack.unpack(ARGV[1])``.

    One packed argument instead of many: redis-py builds and encodes every
    argument in Python. Bytes go as msgpack strings, because Redis's Lua
    cmsgpack predates msgpack's bin types.
    """
    return msgpack.packb(value, use_bin_type=False)


def ops_script(functions: str, kinds: dict[str, str]) -> str:
    """An "ops" script for :func:`run_parts`: the Lua ``functions``, then the loop that runs
    each op (``[kind, ...]``) by its kind and returns the results packed.

    ``kinds``: kind -> Lua statements, which read ``op``, ``p`` (``a.p``) and ``a``
    (the argument), and may set ``r``, the op's result (0 if they do not).
    """
    branches = "\n  else".join(f"if kind == '{k}' then\n    {body}" for k, body in kinds.items())
    return (
        functions
        + f"""
local a = cmsgpack.unpack(ARGV[1])
local p = a.p
local out = {{}}
for i, op in ipairs(a.ops) do
  local kind, r = op[1], 0
  {branches}
  end
  out[i] = r
end
return cmsgpack.pack(out)
"""
    )


async def by_node(
    r: Any,
    script: Any,
    items: Sequence[T],
    key_of: Callable[[T], str],
    arg_of: Callable[[list[T]], Any],
) -> list[Any]:
    """Run ``script`` (a redis-py ``Script`` of ``r``) over ``items``; its replies, one per call.

    On a standalone Redis (or Sentinel), one call with every item. On Redis
    Cluster, one call per node, with the items whose key (``key_of``) lives
    there; the first item's key goes as ``KEYS[1]``, so redis-py sends the
    call to that node and Redis checks it serves the key. The script must
    touch only keys of its items' slots (keys sharing a node with them work,
    as Redis allows a script without flags to reach any key its node serves).
    ``arg_of``: a group of items -> the script's one argument. Raises the
    first call's error when one fails (the others ran).
    """
    out = []
    for _group, reply in await by_node_groups(r, script, items, key_of, arg_of):
        if isinstance(reply, BaseException):
            raise reply
        out.append(reply)
    return out


async def by_node_groups(
    r: Any,
    script: Any,
    items: Sequence[T],
    key_of: Callable[[T], str],
    arg_of: Callable[[list[T]], Any],
) -> list[tuple[list[T], Any]]:
    """:func:`by_node`, keeping each call's items with its reply or its exception.

    For a caller that must know which items a failed call held (to retry
    only those).
    """
    if not items:
        return []
    if not is_cluster_client(r):
        group = list(items)
        try:
            return [(group, await script(args=[arg_of(group)]))]
        except Exception as exc:  # noqa: BLE001 - handed back with its items
            return [(group, exc)]
    if not r.nodes_manager.slots_cache:
        await r.initialize()
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(node_of(r, key_of(item)), []).append(item)
    replies = await asyncio.gather(
        *(script(keys=[key_of(g[0])], args=[arg_of(g)]) for g in groups.values()),
        return_exceptions=True,
    )
    return list(zip(groups.values(), replies, strict=True))


async def run_parts(
    r: Any, script: Any, ops: Sequence[tuple[str, list[Any]]], **arg: Any
) -> list[Any]:
    """Run ``ops`` ((key, op) pairs) of an "ops" script by node; each op's result, in order.

    The script reads ``cmsgpack.unpack(ARGV[1])``: ``arg`` and ``ops`` (the
    ops of one node, in their order), and returns its results, one per op,
    packed with ``cmsgpack.pack``. Each op runs on the node of its key, so
    a write spanning slots goes as one call per node (:func:`by_node`).
    Raises the first call's error (the other calls ran).
    """
    items = list(enumerate(ops))
    out: list[Any] = [None] * len(items)
    for group, reply in await by_node_groups(
        r,
        script,
        items,
        lambda item: item[1][0],
        lambda g: script_arg({**arg, "ops": [op for _, (_, op) in g]}),
    ):
        if isinstance(reply, BaseException):
            raise reply
        for (i, _), result in zip(group, msgpack.unpackb(reply), strict=True):
            out[i] = result
    return out
