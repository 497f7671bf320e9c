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
  (``SPREAD``). A restarted ``lifeline up`` or gateway finds them by name
  (:func:`ray.get_actor`) instead of starting new ones; ``lifeline down``
  stops them.

Limits: a found shard keeps the arguments it was started with (its Redis
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
            # Over every node with room; after a node dies Ray restarts its shards elsewhere.
            "scheduling_strategy": "SPREAD",
        }

    def find(self, name: str) -> Any | None:
        """The running shard called ``name``, or None (only joined runs look)."""
        if not self.detached:
            return None
        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError:  # no actor of that name (or it was killed for good)
            return None


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
