"""Behavioural segments: K-means over session features, k chosen by the silhouette criterion.

What it is for: giving the live session a coarse "what kind of visit is
this" label (explorers, cart builders, form strugglers...) that the policy
and the nudge text can use. Training fits centroids; the live path only
needs a nearest-centroid lookup over a dozen numbers.

How: each session contributes its last row (the session as a whole, up to
its purchase if any). Features are ``log1p``-compressed (counts and
durations are heavy-tailed) and standardised, then K-means (scikit-learn,
``n_init=10``) is fitted for every k in ``k_range`` (default 3..8); the
chosen k has the largest mean silhouette coefficient (computed on a sample
of at most 3,000 sessions). k = 2 is left out by default because a two-way
split of sessions is nearly always "short visit / long visit", which the
session's event count already says; more than 8 segments are more than a
policy rule or a nudge template can sensibly tell apart. Each segment is
named after its most over-represented feature.

Centroid file format (``Segments.to_dict``, JSON; also embedded in model
metadata under ``"segments"``)::

    {"format": "lifeline-segments/1",
     "feature_schema": "<FEATURE_SCHEMA_HASH>",
     "features": ["n_pages", ...],          # names from actors.core.features.FEATURE_NAMES
     "center": [...], "scale": [...],       # one per feature
     "centroids": [[...], ...],             # k rows, one value per feature, in z-space
     "names": ["explorers", ...], "sizes": [...], "exit_rate": [...],
     "k": 4, "criterion": "silhouette", "scores": {"2": 0.31, ...}}

Lookup for a feature row ``x`` (see :func:`nearest_segment`):
``z_i = (log1p(max(x[f_i], 0)) - center_i) / scale_i``; segment =
``argmin_j sum_i (z_i - centroids[j][i])**2``.

Limits: a live session's early rows look like short sessions, so its
segment settles as it goes; segments describe behaviour, not people, and
are refitted with every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from actors.core.features import FEATURE_SCHEMA_HASH

SEGMENT_FEATURES: tuple[str, ...] = (
    "session_age_s",
    "n_pages",
    "n_unique_pages",
    "mean_page_dwell_s",
    "scroll_depth_max",
    "n_clicks",
    "dead_click_ratio",
    "form_inputs",
    "form_errors",
    "hover_dwell_s",
    "video_watch_ratio",
    "cart_adds",
    "uturns",
    "rage_clicks",
)
# Friendlier names for a segment whose most over-represented feature is this one.
_NAMES = {
    "session_age_s": "long_visits",
    "n_pages": "many_pages",
    "n_unique_pages": "explorers",
    "mean_page_dwell_s": "slow_readers",
    "scroll_depth_max": "deep_scrollers",
    "n_clicks": "busy_clickers",
    "dead_click_ratio": "dead_clickers",
    "form_inputs": "form_fillers",
    "form_errors": "form_strugglers",
    "hover_dwell_s": "hoverers",
    "video_watch_ratio": "video_watchers",
    "cart_adds": "cart_builders",
    "uturns": "u_turners",
    "rage_clicks": "rage_clickers",
}
FORMAT = "lifeline-segments/1"


@dataclass
class Segments:
    """Fitted segment centroids and how their number was chosen."""

    features: list[str]
    center: list[float]
    scale: list[float]
    centroids: list[list[float]]
    names: list[str]
    sizes: list[int]
    exit_rate: list[float]
    k: int
    scores: dict[str, float] = field(default_factory=dict)
    criterion: str = "silhouette"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "feature_schema": FEATURE_SCHEMA_HASH,
            "features": self.features,
            "center": self.center,
            "scale": self.scale,
            "centroids": self.centroids,
            "names": self.names,
            "sizes": self.sizes,
            "exit_rate": self.exit_rate,
            "k": self.k,
            "criterion": self.criterion,
            "scores": self.scores,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segments:
        if d.get("format") != FORMAT:
            raise ValueError(
                f"not a segments file (format {d.get('format')!r}, expected {FORMAT!r})"
            )
        return cls(
            list(d["features"]),
            list(d["center"]),
            list(d["scale"]),
            [list(c) for c in d["centroids"]],
            list(d["names"]),
            list(d["sizes"]),
            list(d["exit_rate"]),
            int(d["k"]),
            dict(d.get("scores", {})),
            str(d.get("criterion", "silhouette")),
        )


def _transform(X: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(X, 0.0, None))


def session_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per session: its last row (rows come in event order within a session)."""
    return rows.groupby("sid", sort=False).tail(1).reset_index(drop=True)


def fit_segments(
    rows: pd.DataFrame,
    *,
    k_range: Sequence[int] = range(3, 9),
    seed: int = 0,
    features: Sequence[str] = SEGMENT_FEATURES,
    max_sessions: int = 20_000,
) -> Segments:
    """Fit K-means for each k in ``k_range`` and keep the k with the best silhouette."""
    sessions = session_table(rows)
    if len(sessions) > max_sessions:
        sessions = sessions.sample(max_sessions, random_state=seed)
    if len(sessions) < max(k_range) + 1:
        raise ValueError(
            f"{len(sessions)} sessions are too few to fit up to {max(k_range)} segments"
        )
    feats = list(features)
    T = _transform(sessions[feats].to_numpy(dtype=np.float64))
    center = T.mean(axis=0)
    scale = T.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature must not divide by zero
    Z = (T - center) / scale
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(Z), size=min(3000, len(Z)), replace=False)
    best: tuple[float, int, KMeans] | None = None
    scores: dict[str, float] = {}
    for k in k_range:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(Z)
        labels = km.labels_[sample]
        if len(np.unique(labels)) < 2:
            continue
        s = float(silhouette_score(Z[sample], labels))
        scores[str(k)] = round(s, 4)
        if best is None or s > best[0]:
            best = (s, k, km)
    if best is None:
        raise ValueError("K-means found no structure (every k collapsed to one cluster)")
    _, k, km = best
    labels = km.labels_
    y = sessions["label"].to_numpy() if "label" in sessions else np.full(len(sessions), -1)
    names, sizes, exit_rate = [], [], []
    for j in range(k):
        c = km.cluster_centers_[j]
        # Named after its most over-represented feature not already naming a segment.
        name = ""
        for i in np.argsort(-c):
            candidate = _NAMES.get(feats[i], feats[i])
            if c[i] >= 0.5 and candidate not in names:
                name = candidate
                break
        if not name:
            name = "quick_visits" if "quick_visits" not in names else f"segment_{j}"
        names.append(name)
        members = labels == j
        sizes.append(int(members.sum()))
        lab = y[members]
        lab = lab[lab >= 0]
        exit_rate.append(round(float(lab.mean()), 4) if len(lab) else float("nan"))
    return Segments(
        feats,
        [float(v) for v in center],
        [float(v) for v in scale],
        [[round(float(v), 6) for v in c] for c in km.cluster_centers_],
        names,
        sizes,
        exit_rate,
        k,
        scores,
    )


def nearest_segment(seg: Segments | dict[str, Any], row: Sequence[float]) -> int:
    """The index of the centroid nearest to a feature row: the live path's own lookup.

    ``row`` is a full feature row in ``FEATURE_NAMES`` order (what
    ``Session.apply`` returns). Delegates to :class:`actors.core.segments.SegmentLookup`,
    so training and the shards cannot disagree about a session's segment.
    """
    from actors.core.segments import SegmentLookup

    data = seg.to_dict() if isinstance(seg, Segments) else seg
    lookup = SegmentLookup.from_meta(data)
    assert lookup is not None, "no centroids"
    return lookup.nearest(row)
