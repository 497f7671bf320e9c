"""What drove a score: the features that pushed one row's exit risk up the most.

What it is for: a decision's reasons, next to its signals, in words an
operator reads ("time on this page", "form errors"). The model's own
per-feature contributions for the row (XGBoost's SHAP values, computed by
:meth:`actors.model.scoring.Scorer.explain` only for rows that led to a
decision) are turned here into the few largest positive ones.

Limits: contributions are in log-odds, additive over features for that one
row; a feature that lowered the risk is never listed. Pure: no Ray, Redis or
network imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from actors.core.features import FEATURE_NAMES, WORDS

TOP_DRIVERS = 3
MIN_PUSH = 0.01  # log-odds: smaller pushes are noise, not reasons


@dataclass(frozen=True)
class Driver:
    """One feature that raised this row's exit risk, and by how much (log-odds)."""

    feature: str
    words: str
    push: float


def top_drivers(contributions: Sequence[float], k: int = TOP_DRIVERS) -> tuple[Driver, ...]:
    """The ``k`` largest positive contributions of one row, in feature order of FEATURE_NAMES."""
    ranked = sorted(
        ((c, i) for i, c in enumerate(contributions[: len(FEATURE_NAMES)]) if c >= MIN_PUSH),
        reverse=True,
    )[:k]
    return tuple(
        Driver(FEATURE_NAMES[i], WORDS[FEATURE_NAMES[i]], round(float(c), 3)) for c, i in ranked
    )
