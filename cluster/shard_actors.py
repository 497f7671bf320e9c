"""Where the SessionShard actors come from: started for this run, or found on a joined cluster.

Two modes, chosen by whether ``lifeline up`` joins a Ray cluster
(``--address`` / ``RAY_ADDRESS``):

* **Local** (no address; the single-machine default and the test suite):
  the shards are named actors of this driver (``lifetime=None``): they end
  when ``lifeline up`` ends, and the next run starts new ones, which rebuild
  each session from its snapshot and log in Redis.
* **Joined**: the shards are *detached* named actors in Ray namespace
  ``lifeline``. They outlive the process that started them, are restarted
  by Ray wherever it can place them (``max_restarts=-1``: a dead node's
  shards come back on the surviving nodes), and are spread over the nodes
  that take work (CPU > 0): shard N is placed on the N-th of them, in node
  id order, with *soft* node affinity, so that Ray restarts it elsewhere
  when that node is gone. (Ray places actors that ask for no resource on a
  random node whatever their strategy, ``SPREAD`` included: a test run once
  found all three shards on one node. So a joined run's shards ask for
  64 MiB of Ray's memory resource.) A restarted ``lifeline up`` or gateway finds them by name
  (:func:`ray.get_actor`) instead of starting new ones; ``lifeline down``
  stops them.

Limits: the spread is decided when a shard starts; nodes that join later
get shards only as shards are added or restarted. A found shard keeps the
arguments it was started with (its Redis
URL, key prefix, sites file); after changing those, ``lifeline down`` first.
Names are per Ray namespace (``lifeline``), not per key prefix: one
Lifeline per Ray cluster.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray

log = logging.getLogger("lifeline")

NAME_PREFIX = "lifeline-shard-"
PLACED_MEMORY = 64 * 2**20  # what a joined run's shard asks of Ray's memory resource (bytes)
_INDEX = re.compile(rf"^{NAME_PREFIX}(\d+)")


def shard_name(index: int, suffix: str = "") -> str:
    """The Ray actor name of shard number ``index`` (``suffix``: tests' own names)."""
    return f"{NAME_PREFIX}{index}{suffix}"


def shard_index(name: str) -> int:
    """The number in a shard's name; raises ValueError for a name that is not a shard's."""
    found = _INDEX.match(name)
    if found is None:
        raise ValueError(f"not a shard name: {name!r}")
    return int(found[1])


def next_index(names: Sequence[str]) -> int:
    """The first shard number no name in ``names`` uses (numbers are never reused in a run)."""
    return max((shard_index(n) for n in names), default=-1) + 1


@dataclass(frozen=True)
class Placement:
    """How this run's shards are started: see the module's docstring."""

    detached: bool = False
    namespace: str = "lifeline"

    def options(self, name: str) -> dict[str, Any]:
        """``SessionShard.options(...)`` for the shard called ``name``."""
        if not self.detached:
            return {"name": name, "lifetime": None}
        return {
            "name": name,
            "namespace": self.namespace,
            "lifetime": "detached",
            # Atomic: two starts racing for one name get the same actor, never an error.
            "get_if_exists": True,
            "scheduling_strategy": spread(shard_index(name)),
            # Ray places an actor that asks for no resource at all on a random node, whatever
            # its strategy (only hard node affinity is kept); asking for some memory makes it
            # honour the strategy. Memory, not CPU: a node whose CPUs Serve's replicas hold
            # would keep a shard waiting there (soft affinity waits for a live node's room).
            "memory": PLACED_MEMORY,
        }

    def find(self, name: str) -> Any | None:
        """The running shard called ``name``, or None (only joined runs look)."""
        if not self.detached:
            return None
        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError:  # no actor of that name (or it was killed for good)
            return None


def working_nodes() -> list[str]:
    """The ids of the alive nodes that take work (CPU > 0), in id order ([] without Ray)."""
    if not ray.is_initialized():
        return []
    return sorted(
        n["NodeID"]
        for n in ray.nodes()
        if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0
    )


def spread(index: int, nodes: Sequence[str] | None = None) -> Any:
    """Shard ``index``'s scheduling strategy: soft affinity to node ``index`` mod the
    working nodes (``nodes``, default :func:`working_nodes`); ``SPREAD`` if there are none."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = working_nodes() if nodes is None else nodes
    if not nodes:
        return "SPREAD"
    return NodeAffinitySchedulingStrategy(nodes[index % len(nodes)], soft=True)


def start_or_find(
    placement: Placement, name: str, start: Callable[[dict[str, Any]], Any]
) -> tuple[Any, bool]:
    """(the shard called ``name``, whether it was already running).

    ``start(options)`` starts it with :meth:`Placement.options` when no
    running one is found.
    """
    found = placement.find(name)
    if found is not None:
        return found, True
    return start(placement.options(name)), False


def running_shards(namespace: str) -> list[str]:
    """Names of the shard actors alive in ``namespace`` (what ``lifeline down`` stops)."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        a["name"]
        for a in named
        if a.get("namespace") == namespace and _INDEX.match(a.get("name", ""))
    )
