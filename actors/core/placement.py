"""Consistent hashing of session ids onto shards.

Each shard owns many points on a hash ring, so sessions spread evenly and,
when the pool grows or shrinks, only about 1/N of the sessions move. The
hash is a keyed BLAKE2b, stable across processes and Python versions (the
built-in ``hash`` is salted per process and would scatter a session).

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Sequence

VNODES = 64  # points per shard: evens out the load to a few percent


def _point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Maps a session id to one of a set of named shards, stably.

    Built from the shards' names (their Ray actor names), not their
    positions: a shard's points depend on its name alone, so adding or
    removing one shard moves only the sessions whose ring position it
    takes or gives up, and none between two shards that stay. ``HashRing(n)``
    names the shards ``shard-0`` .. ``shard-{n-1}`` (tools and tests).
    """

    def __init__(self, shards: int | Sequence[str], vnodes: int = VNODES) -> None:
        names = [f"shard-{s}" for s in range(shards)] if isinstance(shards, int) else list(shards)
        if not names:
            raise ValueError("a ring needs at least one shard")
        if len(set(names)) != len(names):
            raise ValueError(f"shard names must be distinct: {names}")
        self.names = names
        self.n = len(names)
        points = sorted(
            (_point(f"{name}#{v}"), s) for s, name in enumerate(names) for v in range(vnodes)
        )
        self._keys = [p for p, _ in points]
        self._owners = [s for _, s in points]
        # A live session's shard is asked for on every frame: remember recent answers.
        self.shard_of = functools.lru_cache(maxsize=1 << 16)(self._shard_of)
        self.owner = functools.lru_cache(maxsize=1 << 16)(self._owner)

    def _shard_of(self, sid: str) -> int:
        """The position (in ``names``) of the shard that owns ``sid``."""
        i = bisect.bisect(self._keys, _point(sid))
        return self._owners[i % len(self._owners)]

    def _owner(self, sid: str) -> str:
        """The name of the shard that owns ``sid``."""
        return self.names[self.shard_of(sid)]
