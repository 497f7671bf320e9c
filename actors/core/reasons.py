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
    """One feature that raised this row's exit risk: its value here, and by how much (log-odds).

    The value matters: a feature can push the risk up by being high (many
    form errors) or by being low (no scrolling at all).
    """

    feature: str
    words: str
    value: float
    push: float

    def text(self) -> str:
        """``"time on this page 48 (+0.31)"``: words, this visitor's value, the push."""
        v = self.value
        shown = f"{v:.0f}" if v == int(v) or abs(v) >= 100 else f"{v:.2f}"
        return f"{self.words} {shown} (+{self.push:.2f})"


def top_drivers(
    contributions: Sequence[float], row: Sequence[float], k: int = TOP_DRIVERS
) -> tuple[Driver, ...]:
    """The ``k`` largest positive contributions of one row (with its feature ``row``), largest first."""
    ranked = sorted(
        ((c, i) for i, c in enumerate(contributions[: len(FEATURE_NAMES)]) if c >= MIN_PUSH),
        reverse=True,
    )[:k]
    return tuple(
        Driver(FEATURE_NAMES[i], WORDS[FEATURE_NAMES[i]], float(row[i]), round(float(c), 3))
        for c, i in ranked
    )
