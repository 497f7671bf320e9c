"""The intervention budget: the share of sessions offered help, and who gets it first."""

from __future__ import annotations

import random

import pytest

from actors.core.budget import Budget, priority
from actors.core.session import Session


def _sessions(budget: Budget, n: int, need, seed: int = 0) -> tuple[int, list[float]]:
    """Each of ``n`` sessions has two eligible moments; returns offered count and the needs offered."""
    rng = random.Random(seed)
    offered, needs = 0, []
    for i in range(n):
        s = Session(f"s{i}")
        budget.count(s)
        p = need(rng)
        for moment in (p * 0.8, p):
            if budget.admit(s, moment):
                s.iv_count += 1
                offered += 1
                needs.append(p)
                break
    return offered, needs


def test_share_stays_within_the_budget_and_goes_to_the_most_in_need() -> None:
    b = Budget(0.10)
    offered, needs = _sessions(b, 5000, lambda r: r.random())
    assert 0.08 <= offered / 5000 <= 0.11
    # The level sits near the top decile of need: most offers go to the top fifth.
    assert sum(1 for p in needs if p >= 0.8) / len(needs) > 0.8
    assert b.state()["offered"] == offered and b.state()["sessions"] == 5000


def test_struggle_ranks_above_risk_alone() -> None:
    assert priority(0.1, 1) > priority(0.99, 0)
    assert priority(0.5, 9) == priority(0.5, 4)  # capped
    b = Budget(0.10)
    # 5 % of sessions struggle (one strong signal, low risk); the rest have high risk only.
    offered, needs = _sessions(
        b, 4000, lambda r: priority(0.2, 1) if r.random() < 0.05 else priority(r.uniform(0.5, 1), 0)
    )
    struggling = sum(1 for p in needs if p >= 1)
    assert struggling / len(needs) > 0.4  # 5 % of sessions, but about half of the help


def test_the_allowance_holds_the_share_when_everyone_peaks_at_once() -> None:
    # Every session reaches the same high priority: the quantile cannot rank them,
    # the allowance still keeps the share.
    b = Budget(0.10, burst=3)
    offered, _ = _sessions(b, 2000, lambda r: 1.5)
    assert offered <= 0.10 * 2000 + 3


def test_a_session_already_helped_stays_admitted_and_counts_once() -> None:
    b = Budget(0.5)
    s = Session("x")
    b.count(s)
    assert b.admit(s, 0.9)
    s.iv_count = 1
    assert b.admit(s, 0.1) and b.offered == 1


def test_share_must_be_a_fraction() -> None:
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            Budget(bad)


def test_a_crowd_arriving_at_once_brings_its_allowance() -> None:
    """Sessions that all start before any is eligible (a campaign) still get their share."""
    b = Budget(0.10)
    sessions = [Session(f"s{i}") for i in range(1000)]
    for s in sessions:
        b.count(s)
    rng = random.Random(1)
    offered = 0
    for s in sessions:
        if b.admit(s, rng.random()):
            s.iv_count += 1
            offered += 1
    assert 0.05 * 1000 <= offered <= 0.10 * 1000 + b.burst
