"""The journey simulator: valid raw events, determinism, a plausible generative story."""

from __future__ import annotations

import statistics

import pytest

from actors.core.events import EventError, validate_event
from actors.core.session import Session
from training.simulator import (
    ARCHETYPES,
    DEFAULT_START_MS,
    PRODUCTS,
    SCRIPTED_KINDS,
    STRUGGLE_ARCHETYPES,
    Journey,
    scripted,
    simulate,
)

INTENT_ARCHETYPES = ("comparer", "searcher", "converter", "calm_converter")

REQUIRED_ARCHETYPES = {
    "browser",
    "comparer",
    "searcher",
    "converter",
    "rage_clicker",
    "form_struggler",
    "uturner",
    "video_dropoff",
    "cart_abandoner",
    "calm_converter",
}


def _check_raw(events: list[dict]) -> None:
    assert events, "a journey has events"
    for i, e in enumerate(events):
        assert e["seq"] == i + 1
        if i:
            assert e["ts"] > events[i - 1]["ts"], "ts strictly increases"
        ev = validate_event(e, now_ms=e["ts"])
        assert not isinstance(ev, EventError), (ev, e)
        # Raw form: exactly what validation keeps, nothing the client would not send.
        assert set(e) == set(ev)


@pytest.fixture(scope="module")
def journeys() -> list[Journey]:
    return simulate(600, seed=11)


def test_every_event_is_a_valid_raw_client_event(journeys: list[Journey]) -> None:
    for j in journeys:
        _check_raw(j.events)
        assert j.start_ms == j.events[0]["ts"]


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a = simulate(40, seed=5)
    b = simulate(40, seed=5)
    c = simulate(40, seed=6)
    assert [(j.sid, j.archetype, j.converted, j.events) for j in a] == [
        (j.sid, j.archetype, j.converted, j.events) for j in b
    ]
    assert [j.events for j in a] != [j.events for j in c]
    # start_ms shifts time only
    d = simulate(40, seed=5, start_ms=DEFAULT_START_MS + 1000)
    assert [e["ts"] - 1000 for e in d[3].events] == [e["ts"] for e in a[3].events]


def test_archetypes_mix_and_catalogue(journeys: list[Journey]) -> None:
    assert set(ARCHETYPES) >= REQUIRED_ARCHETYPES
    assert {j.archetype for j in journeys} == set(ARCHETYPES)
    page_types = {e["page_type"] for j in journeys for e in j.events if e["type"] == "page_view"}
    assert page_types == {"home", "listing", "product", "cart", "checkout", "calculator", "help"}
    for j in journeys:
        for e in j.events:
            if e["type"] == "page_view" and e["page_type"] == "product":
                assert e["item"] in PRODUCTS
                assert e["path"] == f"/product.html?id={e['item']}"
    only = simulate(30, seed=1, mix={"rage_clicker": 1.0})
    assert {j.archetype for j in only} == {"rage_clicker"}
    with pytest.raises(ValueError, match="unknown archetypes"):
        simulate(1, mix={"nobody": 1.0})


def _episodes(events: list[dict]) -> set[str]:
    """The struggle episodes visible in a journey's raw events."""
    kinds = set()
    if any(e["type"] == "form_error" and e["form"] == "calculator" for e in events):
        kinds.add("form")
    if any(e["type"] == "video_pause" for e in events):
        kinds.add("video")
    if any(e["type"] == "remove_from_cart" for e in events) or (
        any(e["type"] == "add_to_cart" for e in events)
        and not any(e["type"] == "purchase" for e in events)
    ):
        kinds.add("cart")
    # Two or more fields of a form edited, then a page change before it was sent.
    edited: dict[str, set[str]] = {}
    for e in events:
        if e["type"] == "form_input":
            edited.setdefault(e["form"], set()).add(e["field"])
        elif e["type"] == "form_submit":
            edited.pop(e["form"], None)
        elif e["type"] == "page_view" and any(len(f) >= 2 for f in edited.values()):
            kinds.add("abandon")
        elif e["type"] == "page_view":
            edited.clear()
    views = [e for e in events if e["type"] == "page_view"]
    for a, b in zip(views, views[1:], strict=False):
        # Straight back to the listing it came from: a u-turn.
        if a["page_type"] == "product" and b["path"] == a["ref"] and b["ts"] - a["ts"] < 5000:
            kinds.add("uturn")
    dead = [e for e in events if e["type"] == "click" and not e["reacted"]]
    for a, b, c in zip(dead, dead[1:], dead[2:], strict=False):
        if a["selector"] == b["selector"] == c["selector"] and c["ts"] - a["ts"] < 1000:
            kinds.add("rage")
    return kinds


def test_labels_follow_the_generative_story(journeys: list[Journey]) -> None:
    for j in journeys:
        purchases = [e for e in j.events if e["type"] == "purchase"]
        assert j.converted == bool(purchases)
        assert len(purchases) <= 1
        if j.archetype in STRUGGLE_ARCHETYPES:
            assert j.struggling  # intent plus a forced episode of their kind
        # The flag and the events agree: no episode, no struggle in the events
        # (a quick look at a product and back can happen to anyone, so u-turns
        # are left out of this check).
        if not j.struggling:
            assert not _episodes(j.events) - {"uturn"}, (j.sid, _episodes(j.events))

    def rate(group: list[Journey]) -> float:
        return statistics.mean(j.converted for j in group)

    by = {a: [j for j in journeys if j.archetype == a] for a in ARCHETYPES}
    # Committed converters mostly convert; browsers rarely.
    assert rate(by["converter"]) > 0.6 and rate(by["calm_converter"]) > 0.6
    assert rate(by["rage_clicker"]) < rate(by["converter"])
    assert rate(by["form_struggler"]) < rate(by["converter"])
    assert rate(by["browser"]) < 0.2
    assert 0.1 < rate(journeys) < 0.45

    # Struggle is an episode independent of intent: every intent archetype has
    # struggling and calm journeys, browsers struggle less often, and overall
    # about a third of the journeys struggle.
    intent = [j for a in INTENT_ARCHETYPES for j in by[a]]
    for a in INTENT_ARCHETYPES:
        assert {j.struggling for j in by[a]} == {True, False}, a
    share = statistics.mean(j.struggling for j in intent)
    assert 0.15 < share < 0.5
    assert statistics.mean(j.struggling for j in by["browser"]) < share
    assert 0.25 < statistics.mean(j.struggling for j in journeys) < 0.45
    # Every kind of episode happens to visitors of the intent archetypes too.
    seen = set().union(*(_episodes(j.events) for j in intent if j.struggling))
    assert seen == {"form", "video", "cart", "uturn", "rage", "abandon"}, seen
    # Struggle lowers conversion strongly, for the same intent.
    calm = [j for j in intent if not j.struggling]
    struggling = [j for j in intent if j.struggling]
    assert rate(struggling) < 0.6 * rate(calm), (rate(struggling), rate(calm))


def test_realistic_timing(journeys: list[Journey]) -> None:
    n_events = [len(j.events) for j in journeys]
    durations = [(j.events[-1]["ts"] - j.events[0]["ts"]) / 1000 for j in journeys]
    assert 10 <= statistics.median(n_events) <= 80
    assert 20 <= statistics.median(durations) <= 300
    starts = [j.start_ms for j in journeys]
    spread = (max(starts) - min(starts)) / (len(starts) - 1)
    assert 5_000 < spread < 60_000  # arrivals spread over time (mean gap 20 s)
    # Rage bursts are fast: some consecutive dead clicks on one element < 300 ms apart.
    rage = [j for j in journeys if j.archetype == "rage_clicker"]
    fast = 0
    for j in rage:
        for a, b in zip(j.events, j.events[1:], strict=False):
            if a["type"] == b["type"] == "click" and not a["reacted"] and b["ts"] - a["ts"] < 300:
                fast += 1
    assert fast > len(rage)


def _replay(events: list[dict]) -> Session:
    s = Session("sim-test-0001")
    for e in events:
        ev = validate_event(e, now_ms=e["ts"])
        assert not isinstance(ev, EventError)
        s.apply(ev)
    return s


def test_scripted_struggling_is_the_calculator_scenario() -> None:
    t0 = 1_732_300_000_000
    ev = scripted("struggling", "s-struggle-01", t0)
    _check_raw(ev)
    assert ev[-1]["ts"] - ev[0]["ts"] <= 15_000
    errors = [e for e in ev if e["type"] == "form_error"]
    assert len(errors) >= 3 and {e["form"] for e in errors} == {"calculator"}
    submits = [e for e in ev if e["type"] == "form_submit"]
    assert len(submits) == 3 and not any(e["ok"] for e in submits)
    dead = [
        e
        for e in ev
        if e["type"] == "click" and e["selector"] == "#calc-submit" and not e["reacted"]
    ]
    assert len(dead) >= 6
    assert scripted("struggling", "other-sid-01", t0) == ev  # deterministic
    sig = _replay(ev).signals()
    # The live detectors see what the script acts out.
    assert sig["rage_click"] >= 0.7 and sig["form_struggle"] >= 0.7 and sig["cursor_thrash"] > 0


def test_scripted_calm_and_cart_hesitation() -> None:
    t0 = 1_732_300_000_000
    calm = scripted("calm", "s-calm-0001", t0)
    _check_raw(calm)
    assert 50_000 <= calm[-1]["ts"] - calm[0]["ts"] <= 75_000
    assert any(e["type"] == "video_ended" for e in calm)
    assert not any(e["type"] in ("form_error", "purchase") for e in calm)
    assert max(_replay(calm).signals().values()) < 0.7

    cart = scripted("cart_hesitation", "s-cart-0001", t0)
    _check_raw(cart)
    types = [e["type"] for e in cart]
    assert types.index("add_to_cart") < types.index("remove_from_cart") < len(types) - 1
    assert cart[-1]["type"] == "page_view" and cart[-1]["page_type"] == "listing"
    lingering = cart[: types.index("remove_from_cart")]
    assert _replay(lingering).signals()["cart_hesitation"] > 0.5
    assert set(SCRIPTED_KINDS) == {"struggling", "calm", "cart_hesitation"}
    with pytest.raises(ValueError, match="unknown scripted kind"):
        scripted("nope", "s-x-000001", t0)
