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

VNODES = 64  # points per shard: evens out the load to a few percent


def _point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Maps a session id to one of ``n`` shards, stably."""

    def __init__(self, n: int, vnodes: int = VNODES) -> None:
        if n < 1:
            raise ValueError("a ring needs at least one shard")
        self.n = n
        points = sorted((_point(f"shard-{s}#{v}"), s) for s in range(n) for v in range(vnodes))
        self._keys = [p for p, _ in points]
        self._owners = [s for _, s in points]
        # A live session's shard is asked for on every frame: remember recent answers.
        self.shard_of = functools.lru_cache(maxsize=1 << 16)(self._shard_of)

    def _shard_of(self, sid: str) -> int:
        """The shard that owns ``sid``."""
        i = bisect.bisect(self._keys, _point(sid))
        return self._owners[i % len(self._owners)]
