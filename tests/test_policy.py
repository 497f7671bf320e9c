"""The intervention policy: thresholds, kinds, cooldown, cap, holdout, reasons, site rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.core.features import FEATURE_INDEX, N_FEATURES
from actors.core.kinds import CONTENT_SUGGESTION, FORM_HINT, HELP_OFFER, RECOMMENDATIONS
from actors.core.policy import PolicyConfig, decide, in_holdout
from actors.core.session import EventView, Session
from actors.core.signals import SIGNALS
from actors.core.sites import SiteConfigError, parse_sites

NO_HOLDOUT = PolicyConfig(holdout=0.0)


def view(seq=5, ts=100_000, page_type="product", error_field="", **features) -> EventView:
    row = [0.0] * N_FEATURES
    row[FEATURE_INDEX["n_events"]] = 10
    for name, value in features.items():
        row[FEATURE_INDEX[name]] = value
    return EventView(seq, ts, row, "/p", page_type, error_field)


def signals(*names, strength=0.9) -> dict[str, float]:
    return {f"sig_{n}": strength for n in names}


def session(consent=("analytics",)) -> Session:
    s = Session("sess-abcdefgh")
    s.consent = list(consent)
    return s


def test_no_intervention_below_both_thresholds():
    assert (
        decide(
            session(),
            view(**signals("rage_click", "dead_click", "form_struggle")),
            NO_HOLDOUT.risk_threshold - 0.01,
            NO_HOLDOUT,
        )
        is None
    )


def test_risk_threshold_triggers_with_reasons():
    d = decide(session(), view(**signals("rage_click", strength=0.8)), 0.80, NO_HOLDOUT)
    assert d is not None and d.trigger == "risk" and d.kind == HELP_OFFER
    assert [(r.signal, r.strength) for r in d.reasons] == [("rage_click", 0.8), ("exit_risk", 0.8)]


def test_four_strong_signals_trigger_without_risk():
    v = view(**signals("rage_click", "dead_click", "cursor_thrash", "js_error"))
    d = decide(session(), v, 0.10, NO_HOLDOUT)
    assert d is not None and d.trigger == "signals" and len(d.reasons) == 5
    weak = view(**signals("rage_click", "dead_click", "cursor_thrash"), sig_js_error=0.69)
    assert decide(session(), weak, 0.10, NO_HOLDOUT) is None


def test_kind_follows_context():
    s = session()
    d = decide(s, view(error_field="loan-amount", **signals("form_struggle")), 0.9, NO_HOLDOUT)
    assert (d.kind, d.target) == (FORM_HINT, "loan-amount")
    d = decide(session(), view(**signals("video_dropoff")), 0.9, NO_HOLDOUT)
    assert d.kind == CONTENT_SUGGESTION
    cart = view(page_type="cart", cart_items=2, **signals("cart_hesitation"))
    assert (
        decide(session(("analytics", "personalization")), cart, 0.9, NO_HOLDOUT).kind
        == RECOMMENDATIONS
    )
    # Without personalisation consent: generic help, never recommendations.
    d = decide(session(), cart, 0.9, NO_HOLDOUT)
    assert d.kind == HELP_OFFER and not d.personalized


def test_site_can_disable_kinds():
    cfg = PolicyConfig(holdout=0.0, kinds=(HELP_OFFER,))
    d = decide(session(), view(error_field="f", **signals("form_struggle")), 0.9, cfg)
    assert d.kind == HELP_OFFER


def test_cooldown_and_cap():
    cfg = PolicyConfig(holdout=0.0, cooldown_s=60, max_per_session=2)
    s = session()
    assert decide(s, view(seq=5, ts=100_000), 0.9, cfg) is not None
    assert decide(s, view(seq=6, ts=159_999), 0.9, cfg) is None  # inside the cooldown
    assert decide(s, view(seq=7, ts=160_000), 0.9, cfg) is not None
    assert decide(s, view(seq=8, ts=999_000), 0.9, cfg) is None  # cap reached
    assert s.iv_count == 2


def test_not_before_min_events_and_not_after_purchase():
    few = view()
    few.row[FEATURE_INDEX["n_events"]] = 2
    assert decide(session(), few, 0.99, NO_HOLDOUT) is None
    assert decide(session(), view(purchased=1.0), 0.99, NO_HOLDOUT) is None


def test_holdout_is_recorded_not_hidden_from_the_schedule():
    sids = [f"sid-{i:06d}" for i in range(5000)]
    share = sum(in_holdout(s, 0.10) for s in sids) / len(sids)
    assert 0.085 < share < 0.115
    # The same sid lands the same way in another process with another hash seed, as it
    # must after a restart or on another gateway (Python's hash() would not).
    mine = "".join("1" if in_holdout(s, 0.10) else "0" for s in sids)
    code = (
        "import sys; from actors.core.policy import in_holdout; "
        "print(''.join('1' if in_holdout(s, 0.10) else '0' for s in sys.stdin.read().split()))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        input="\n".join(sids),
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == mine
    held = next(s for s in sids if in_holdout(s, 0.10))
    s = Session(held)
    d = decide(s, view(), 0.9, PolicyConfig(holdout=0.10))
    assert d is not None and d.holdout and s.iv_count == 1


def test_site_rules_parse_and_reject_typos():
    sites = parse_sites(
        {
            "sites": {
                "shop": {
                    "origins": ["https://shop.example"],
                    "policy": {"cooldown_s": 30, "kinds": ["help_offer"]},
                }
            }
        }
    )
    assert sites["shop"].policy.cooldown_s == 30
    assert sites["shop"].origin_allowed("https://shop.example")
    assert not sites["shop"].origin_allowed(None)
    with pytest.raises(SiteConfigError, match="cooldwn_s"):
        parse_sites({"sites": {"shop": {"policy": {"cooldwn_s": 30}}}})
    with pytest.raises(SiteConfigError, match="popup"):
        parse_sites({"sites": {"shop": {"policy": {"kinds": ["popup"]}}}})


def test_signal_names_are_stable():
    assert SIGNALS[:3] == ("rage_click", "dead_click", "form_struggle")


def test_site_rules_with_a_typo_are_refused_not_ignored():
    from actors.core.detectors import DetectorConfig

    with pytest.raises(ValueError, match=r"unknown policy settings: \['risk_treshold'\]"):
        PolicyConfig.from_mapping({"risk_treshold": 0.8})
    with pytest.raises(ValueError, match=r"unknown detector settings: \['rage_click'\]"):
        DetectorConfig.from_mapping({"rage_click": 3})
    assert PolicyConfig.from_mapping({"risk_threshold": 0.8}).risk_threshold == 0.8
    assert DetectorConfig.from_mapping({"rage_clicks": 4}).rage_clicks == 4
