"""Uplift of an intervention: conversion of treated sessions minus the holdout's, with an interval.

What it is for: the one estimator every outcome figure uses (the outcome
report, the console's Outcomes page, the closed-loop simulator's coverage
study), so they cannot disagree.

The estimate is the difference of two conversion rates, sessions offered
help and shown it (treated) against holdout sessions that would have been
offered the same help. The interval is Newcombe's hybrid score interval
(method 10 in Newcombe 1998), built from the two Wilson score intervals: it
stays inside [-1, 1], behaves at rates near 0 and with small groups, where
the Wald interval is too narrow, and needs no iteration.

Limits: sessions are assumed independent (a visitor with several sessions
counts several times), and the holdout is assumed random with respect to
the outcome (it is: a hash of the session id).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = _z(level)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Uplift:
    """Treated minus holdout conversion, with its interval and the group sizes."""

    treated_n: int
    treated_conversions: int
    holdout_n: int
    holdout_conversions: int
    treated_rate: float | None
    holdout_rate: float | None
    uplift: float | None  # None when a group is empty
    low: float | None
    high: float | None
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"excludes_zero": self.excludes_zero}


def uplift(
    treated_conversions: int,
    treated_n: int,
    holdout_conversions: int,
    holdout_n: int,
    level: float = 0.95,
) -> Uplift:
    """Newcombe's hybrid score interval for ``rate(treated) - rate(holdout)``."""
    for name, c, n in (
        ("treated", treated_conversions, treated_n),
        ("holdout", holdout_conversions, holdout_n),
    ):
        if n < 0 or c < 0 or c > n:
            raise ValueError(f"{name}: need 0 <= conversions <= sessions, got {c} of {n}")
    p1 = treated_conversions / treated_n if treated_n else None
    p2 = holdout_conversions / holdout_n if holdout_n else None
    d = low = high = None  # an empty group has no rate, so no difference
    if p1 is not None and p2 is not None:
        l1, u1 = wilson(treated_conversions, treated_n, level)
        l2, u2 = wilson(holdout_conversions, holdout_n, level)
        d = p1 - p2
        low = max(-1.0, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
        high = min(1.0, d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    return Uplift(
        treated_n, treated_conversions, holdout_n, holdout_conversions, p1, p2, d, low, high, level
    )


def sessions_needed(
    base_rate: float, effect: float, holdout: float, level: float = 0.95, power: float = 0.8
) -> int:
    """Sessions offered help (treated plus holdout) before the interval excludes zero.

    The usual normal-approximation sample size for two proportions with
    unequal groups (a ``holdout`` share of the sessions in the holdout), at
    the given ``power``: the chance that a true ``effect`` on a
    ``base_rate`` shows as an interval that excludes zero.
    """
    if not 0 < holdout < 1:
        raise ValueError("holdout must be in (0, 1)")
    p2 = base_rate
    p1 = min(max(base_rate + effect, 1e-9), 1 - 1e-9)
    if effect == 0:
        raise ValueError("a zero effect never excludes zero")
    z = _z(level) + NormalDist().inv_cdf(power)
    var = p1 * (1 - p1) / (1 - holdout) + p2 * (1 - p2) / holdout
    return math.ceil(z * z * var / (effect * effect))
