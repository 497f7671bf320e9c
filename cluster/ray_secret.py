"""A secret handed to Ray actors through the object store, never inline in their creation task.

An actor's constructor arguments are not shown by Ray's state API or
dashboard (they show the class, name, runtime environment, ``repr`` and
death cause), but inline arguments are kept in the actor's creation task
spec in the GCS, whose tables an external store may persist (GCS fault
tolerance). A :class:`RaySecret` puts the value in the object store of the
node that made it and hands actors only its object id; the actor fetches
the value with :meth:`get`. Its ``repr`` shows a redacted form only.

Limits: the maker must keep the :class:`RaySecret` for as long as an actor
may (re)start and read it, since Ray frees the object when the last
reference goes (``cluster.stack.Stack`` keeps its own for its lifetime; its
actors die with it). Whoever can reach the Ray cluster can read any object:
Ray's network is trusted fully (docs/SECURITY.md).
"""

from __future__ import annotations

from typing import Any

import ray


class RaySecret:
    """``value`` in Ray's object store; ``shown`` is what its repr and logs may say."""

    def __init__(self, value: str, shown: str) -> None:
        # Nested in this object, the reference travels as an id inside the (inline)
        # argument; passed bare, Ray would resolve it itself and warn that a restart
        # depends on an object-store argument (ray-project/ray#53727), which is as true here:
        # the reference held by the maker is what keeps it.
        self._ref: Any = ray.put(value)
        self.shown = shown

    def get(self) -> str:
        """The secret (blocks while it is fetched from the object store)."""
        return ray.get(self._ref)

    def __repr__(self) -> str:
        return f"RaySecret({self.shown})"


def reveal(value: str | RaySecret) -> str:
    """``value`` itself, or the secret a :class:`RaySecret` holds."""
    return value.get() if isinstance(value, RaySecret) else value
