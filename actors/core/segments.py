"""Which visitor segment a session is in: the nearest K-means centroid, cheaply.

Training (training/segments.py) fits the centroids over a few session
features and stores them in the model's metadata (format
``lifeline-segments/1``); the shards load them with the model and look a
session's segment up only when a decision is made, so it costs nothing on
events that lead to no intervention. The policy's decision and the nudge
prompt carry the segment's index and name.

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actors.core.features import FEATURE_INDEX


@dataclass(frozen=True)
class SegmentLookup:
    """Centroids in a standardised log space: z = (log1p(max(x, 0)) - center) / scale."""

    indices: tuple[int, ...]  # positions of the segment features in a feature row
    center: tuple[float, ...]
    scale: tuple[float, ...]
    centroids: tuple[tuple[float, ...], ...]
    names: tuple[str, ...]

    @classmethod
    def from_meta(cls, seg: dict[str, Any] | None) -> SegmentLookup | None:
        """From a model's ``meta["segments"]``; None if the model has no segments."""
        if not seg or not seg.get("centroids"):
            return None
        names = seg.get("names") or [f"segment_{i}" for i in range(len(seg["centroids"]))]
        return cls(
            indices=tuple(FEATURE_INDEX[f] for f in seg["features"]),
            center=tuple(float(c) for c in seg["center"]),
            scale=tuple(float(s) or 1.0 for s in seg["scale"]),
            centroids=tuple(tuple(float(v) for v in c) for c in seg["centroids"]),
            names=tuple(names),
        )

    def nearest(self, row: Sequence[float]) -> int:
        """The index of the centroid nearest to a feature row (``FEATURE_NAMES`` order)."""
        z = [
            (math.log1p(max(row[i], 0.0)) - c) / s
            for i, c, s in zip(self.indices, self.center, self.scale, strict=True)
        ]
        best, best_d = 0, math.inf
        for j, cen in enumerate(self.centroids):
            d = sum((a - b) ** 2 for a, b in zip(z, cen, strict=True))
            if d < best_d:
                best, best_d = j, d
        return best
