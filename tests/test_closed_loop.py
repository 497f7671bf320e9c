"""The closed loop: simulated visitors answer the help they get, and the uplift estimator is checked on known truth."""

from __future__ import annotations

import random
import statistics

import pytest

from actors.core.events import EventError, validate_event
from actors.core.policy import Decision, PolicyConfig
from actors.model.scoring import Scorer
from training.closed_loop import (
    NO_EFFECT,
    Effects,
    RunResult,
    Visitor,
    coverage,
    expected_effect,
    first_excluding,
    run,
    runs,
)
from training.simulator import continue_journey, simulate
from training.uplift import uplift

# Strong effects and a generous budget, so that a few hundred sessions show them.
STRONG = Effects(struggling=0.4, calm=-0.02)
POLICY = PolicyConfig(holdout=0.5, budget=0.25)
SEED, SESSIONS = 7, 500
IV = ("intervention_shown", "intervention_accepted", "intervention_dismissed")


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.bundled()


@pytest.fixture(scope="module")
def helped(scorer: Scorer) -> tuple[RunResult, list[Visitor]]:
    keep: list[Visitor] = []
    return run(SEED, SESSIONS, scorer, policy=POLICY, effects=STRONG, keep=keep), keep


@pytest.fixture(scope="module")
def unhelped(scorer: Scorer) -> tuple[RunResult, list[Visitor]]:
    keep: list[Visitor] = []
    return run(SEED, SESSIONS, scorer, policy=POLICY, effects=NO_EFFECT, keep=keep), keep


def _treated(visitors: list[Visitor]) -> list[Visitor]:
    return [v for v in visitors if v.offer is not None and not v.offer.holdout]


def _conversion(visitors: list[Visitor]) -> float:
    return statistics.mean(v.purchase is not None for v in visitors)


def test_expected_effect_is_the_coupled_draws_effect() -> None:
    # Exactly: averaged over the untreated outcome, the chance moves by p' - p.
    for p, q in ((0.3, 0.45), (0.3, 0.2), (0.05, 0.1), (0.9, 1.0), (0.4, 0.4)):
        mean = p * expected_effect(p, q, True) + (1 - p) * expected_effect(p, q, False)
        assert mean == pytest.approx(q - p)
    # And by simulation: converts iff u < p, with help iff u < p', the same u.
    rng = random.Random(1)
    p, q = 0.3, 0.45
    draws = [rng.random() for _ in range(200_000)]
    non_buyers = [(u < q) - (u < p) for u in draws if u >= p]
    assert statistics.mean(non_buyers) == pytest.approx(expected_effect(p, q, False), abs=0.01)
    assert all(d == 0 for u in draws if u < p for d in [(u < q) - (u < p)])
    buyers = [(u < 0.2) - (u < p) for u in draws if u < p]
    assert statistics.mean(buyers) == pytest.approx(expected_effect(p, 0.2, True), abs=0.01)


def test_continue_journey_writes_valid_endings_for_either_outcome() -> None:
    for j in simulate(30, seed=4):
        cut = j.events[: max(1, len(j.events) // 2)]
        for converted in (True, False):
            rest = continue_journey(cut, converted, random.Random(0), j.engaged)
            events = cut + rest
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert all(b["ts"] > a["ts"] for a, b in zip(events, events[1:], strict=False))
            assert not any(isinstance(validate_event(e, e["ts"]), EventError) for e in rest)
            assert any(e["type"] == "purchase" for e in rest) == converted


def test_every_session_sends_valid_events_in_order(helped: tuple[RunResult, list[Visitor]]) -> None:
    _, visitors = helped
    assert len(visitors) == SESSIONS
    for v in visitors:
        ev = v.sent
        assert [e["seq"] for e in ev] == list(range(1, len(ev) + 1))
        assert all(b["ts"] > a["ts"] for a, b in zip(ev, ev[1:], strict=False))
        assert not any(isinstance(validate_event(e, e["ts"]), EventError) for e in ev)


def test_holdout_sessions_go_on_exactly_as_written(
    helped: tuple[RunResult, list[Visitor]],
) -> None:
    _, visitors = helped
    holdout = [v for v in visitors if v.offer is not None and v.offer.holdout]
    untouched = [v for v in visitors if v.offer is None]
    assert len(holdout) > 30 and untouched
    for v in holdout + untouched:
        assert v.sent == v.journey.events  # nothing shown, nothing answered, same outcome
        assert (v.purchase is not None) == v.journey.converted


def test_shown_help_is_answered_in_the_session(helped: tuple[RunResult, list[Visitor]]) -> None:
    result, visitors = helped
    treated = _treated(visitors)
    assert len(treated) > 30
    for v in treated:
        types = {e["iid"]: [] for e in v.sent if e["type"] in IV}
        for e in v.sent:
            if e["type"] in IV:
                types[e["iid"]].append(e["type"])
        shown = [d for d in v.decisions if d.iid in v.answers]
        assert set(types) == {d.iid for d in shown}
        for d in shown:
            assert types[d.iid][0] == "intervention_shown"
            assert len(types[d.iid]) <= 2
            # The answer comes after the event that drew the help, through the same session.
            first = next(e for e in v.sent if e.get("iid") == d.iid)
            assert first["seq"] > d.seq
    reactions = result.estimate["reactions"]
    assert reactions["accepted"] > 0 and reactions["dismissed"] > 0
    assert result.estimate["treated_n"] + result.estimate["holdout_n"] == result.offered


def test_help_changes_outcomes_as_the_effect_says(
    helped: tuple[RunResult, list[Visitor]], unhelped: tuple[RunResult, list[Visitor]]
) -> None:
    (with_help, visitors), (without, plain) = helped, unhelped
    # Same seed, same journeys: only the effect differs.
    assert [v.journey.sid for v in visitors] == [v.journey.sid for v in plain]
    assert with_help.estimate["treated_rate"] > without.estimate["treated_rate"] + 0.05
    assert _conversion(_treated(visitors)) > _conversion(_treated(plain))
    flipped = 0
    for v in _treated(visitors):
        o = v.offer
        assert o is not None
        bought = v.purchase is not None
        assert bought == (v.journey.draw < o.p_helped)  # the same draw, the new probability
        if bought != v.journey.converted:
            flipped += 1
            assert o.seen and bought == o.struggling  # help lifts the struggling, costs the calm
    assert flipped >= 5
    # Without an effect, treated visitors answer help but keep their outcome.
    for v in _treated(plain):
        assert (v.purchase is not None) == v.journey.converted


def test_true_effect_comes_from_the_simulators_probabilities(
    helped: tuple[RunResult, list[Visitor]], unhelped: tuple[RunResult, list[Visitor]]
) -> None:
    result, visitors = helped
    offered = [v for v in visitors if v.offer is not None]
    assert len(offered) == result.offered
    expected = []
    for v in offered:
        o, j = v.offer, v.journey
        assert o is not None
        assert o.struggling == j.struggling_at(o.seq)  # ground truth, not the detectors
        p_helped = STRONG.helped(j.p_convert, o.struggling) if o.seen else j.p_convert
        assert o.p_helped == p_helped
        expected.append(expected_effect(j.p_convert, p_helped, j.converted))
    assert result.true_effect == pytest.approx(statistics.mean(expected))
    assert result.true_effect > 0.05
    assert unhelped[0].true_effect == 0.0


def test_a_dismissal_ends_further_help(helped: tuple[RunResult, list[Visitor]]) -> None:
    result, visitors = helped
    dismissed = [v for v in visitors if v.dismissed]
    assert dismissed
    for v in dismissed:
        at = next(e["seq"] for e in v.sent if e["type"] == "intervention_dismissed")
        assert all(d.seq < at for d in v.decisions)  # the policy offers nothing more
    assert result.decisions_after_dismissal == 0
    # And a visitor who dismissed answers no later help, even if some were shown.
    j = simulate(1, seed=3)[0]
    v = Visitor(j, random.Random(0), STRONG)
    v.take(j.events[5]["ts"] + 1)
    v.dismissed = True
    d = Decision(
        iid="i-x-6", sid=j.sid, seq=6, ts=j.events[5]["ts"], kind="help_offer", score=0.9,
        trigger="risk", reasons=(), holdout=False,
    )  # fmt: skip
    v.on_decision(d)
    assert v.after_dismissal == 1
    answered = [e["type"] for e, _ in v.pending if e["type"] in IV]
    assert answered == ["intervention_shown"]


def test_first_excluding_needs_the_interval_to_stay_clear_of_zero() -> None:
    def g(k: int, low: float) -> dict:
        return {"key": str(k), **uplift(30, 100, 10, 100).to_dict()} | {
            "low": low,
            "excludes_zero": low > 0,
        }

    assert first_excluding([g(10, -0.1), g(20, 0.01), g(30, -0.01), g(40, 0.02)]) == 40
    assert first_excluding([g(10, 0.01), g(20, 0.02)]) == 10
    assert first_excluding([g(10, 0.01), g(20, -0.02)]) is None


def test_coverage_on_ten_seeded_runs() -> None:
    """Ten runs with a strong effect: the 95 % intervals cover the true effect, and say something.

    These seeds give 8 of 10 (seeds 100-147: 45 of 48, 94 %); a loop whose
    visitors answer help without changing course gives 2 of 10.
    """
    res = runs(range(100, 110), SESSIONS, policy=POLICY, effects=STRONG, workers=2)
    s = coverage(res)
    assert s["runs_with_both_arms"] == 10
    assert s["coverage"] >= 0.8, [(r["true_effect"], r["estimate"]) for r in res]
    # Not covered by being vague: the estimates centre on the truth, and some exclude zero
    # (a loop whose visitors did not react would estimate ~0 against a true ~+20 points).
    assert s["mean_true_effect"] > 0.1
    assert abs(s["mean_estimate"] - s["mean_true_effect"]) < 0.08
    assert s["excludes_zero"] >= 0.3
    assert s["decisions_after_dismissal"] == 0
