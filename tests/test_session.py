"""Session features: hand-computed cases for each detector and rolling feature."""

from __future__ import annotations

import msgpack
import pytest

from actors.core.detectors import DetectorConfig
from actors.core.events import validate_event
from actors.core.features import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    N_FEATURES,
    PAGE_TYPES,
    STRONG_SIGNAL,
    page_type_of,
)
from actors.core.session import SNAPSHOT_LAYOUT, Session, SnapshotMismatch, replay

T0 = 1_700_000_000_000


class J:
    """Builds a normalised journey: each call appends one event at T0 + t ms."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def add(self, at: int, etype: str, **fields) -> J:
        raw = {"type": etype, "seq": len(self.events) + 1, "ts": T0 + at, **fields}
        ev = validate_event(raw, T0 + at)
        assert isinstance(ev, dict), ev
        self.events.append(ev)
        return self

    def click(self, t: int, x: float = 100, y: float = 100, reacted: bool = True, **kw) -> J:
        return self.add(t, "click", selector="#b", x=x, y=y, reacted=reacted, **kw)

    def run(self, cfg: DetectorConfig | None = None) -> tuple[Session, list[float]]:
        s = Session("s1", "demo", cfg or DetectorConfig())
        row: list[float] = []
        for ev in self.events:
            row = s.apply(ev)
        return s, row


def f(row: list[float], name: str) -> float:
    return row[FEATURE_INDEX[name]]


def test_row_has_every_feature():
    _, row = J().add(0, "page_view", path="/").run()
    assert len(row) == N_FEATURES == len(FEATURE_NAMES)
    assert f(row, "n_events") == 1 and f(row, "page_home") == 1


@pytest.mark.parametrize(
    "path", ["/", "/shop", "/product/7", "/cart", "/checkout", "/apply", "/help", "/about"]
)
def test_page_flags_are_one_hot_and_other_pages_set_none(path):
    _, row = J().add(0, "page_view", path=path).run()
    flags = {p: f(row, f"page_{p}") for p in PAGE_TYPES}
    kind = page_type_of(path)
    assert flags == {p: (1.0 if p == kind else 0.0) for p in PAGE_TYPES}
    assert kind != "other" or not any(flags.values())


def test_strong_signal_count_matches_the_signals_on_every_event():
    j = J().add(0, "page_view", path="/apply")
    for i, t in enumerate(range(500, 6000, 400)):  # rage and dead clicks, then form errors
        j.click(t, x=100 + i, reacted=False)
        j.add(t + 100, "form_error", form="apply", field="email")
    s = Session("s1", "demo", DetectorConfig())
    counts = set()
    for ev in j.events:
        row = s.apply(ev)
        strong = sum(
            1 for name in FEATURE_NAMES if name.startswith("sig_") and f(row, name) >= STRONG_SIGNAL
        )
        assert f(row, "n_strong_signals") == strong
        counts.add(strong)
    assert len(counts) >= 3  # the journey went from none to several strong signals


def test_rage_click_is_three_close_quick_clicks_counted_once_per_burst():
    j = J().add(0, "page_view", path="/p")
    for i, t in enumerate((1000, 1900, 2800, 3700)):  # 4 clicks, 900 ms apart, 10 px apart
        j.click(t, x=100 + 10 * i)
    _, row = j.run()
    assert f(row, "rage_clicks") == 1
    assert f(row, "sig_rage_click") == pytest.approx(1.0 * 0.5 ** (900 / 60_000))


def test_rage_click_needs_each_click_close_to_the_previous():
    j = (
        J().add(0, "page_view", path="/p").click(1000).click(1500).click(2600)
    )  # third is 1100 ms late
    _, row = j.run()
    assert f(row, "rage_clicks") == 0
    j = (
        J().add(0, "page_view", path="/p").click(1000, x=0).click(1100, x=25).click(1200, x=60)
    )  # 35 px jump
    assert f(j.run()[1], "rage_clicks") == 0


def test_rage_click_skips_text_inputs_and_steppers():
    j = J().add(0, "page_view", path="/p")
    for t in (1000, 1100, 1200, 1300):
        j.click(t, target="stepper")
    assert f(j.run()[1], "rage_clicks") == 0
    assert f(j.run()[1], "n_clicks") == 4


def test_rage_threshold_is_configurable():
    j = J().add(0, "page_view", path="/p").click(1000).click(1100).click(1200)
    assert f(j.run(DetectorConfig(rage_clicks=4))[1], "rage_clicks") == 0


def test_dead_clicks_and_ratio():
    j = J().add(0, "page_view", path="/p").click(1000, reacted=False).click(5000, reacted=True)
    j.click(9000, reacted=False)
    _, row = j.run()
    assert f(row, "dead_clicks") == 2 and f(row, "dead_click_ratio") == pytest.approx(2 / 3)


def test_form_errors_and_reedits():
    j = J().add(0, "page_view", path="/calculator.html")
    j.add(100, "form_focus", form="calc", field="amount")
    j.add(
        200, "form_input", form="calc", field="amount", count=5
    )  # before any error: not a re-edit
    j.add(300, "form_error", form="calc", field="amount", code="range")
    j.add(400, "form_input", form="calc", field="amount")  # a re-edit
    j.add(500, "form_input", form="calc", field="amount")  # same error: counted once
    j.add(600, "form_error", form="calc", field="term")
    s, row = j.run()
    assert (f(row, "form_errors"), f(row, "form_reedits"), f(row, "form_inputs")) == (2, 1, 7)
    assert s.last_error_field == "term"
    assert f(row, "page_form") == 1


def test_uturn_is_back_to_the_previous_page_within_the_window():
    j = J().add(0, "page_view", path="/a").add(10_000, "page_view", path="/b")
    j.add(14_000, "page_view", path="/a")  # back within 4 s: a u-turn
    j.add(30_000, "page_view", path="/b")  # back after 16 s: not one
    _, row = j.run()
    assert f(row, "uturns") == 1
    assert f(row, "n_pages") == 4 and f(row, "n_unique_pages") == 2
    assert f(row, "mean_page_dwell_s") == pytest.approx((10 + 4 + 16) / 3)


def test_scroll_reversals_and_depth():
    j = J().add(0, "page_view", path="/p")
    for t, depth, d in (
        (1000, 30, "down"),
        (2000, 0.6, "down"),
        (3000, 0.4, "up"),
        (4000, 0.8, "down"),
    ):
        j.add(t, "scroll", depth=depth, dir=d)
    _, row = j.run()
    assert f(row, "scroll_reversals") == 2
    assert f(row, "scroll_depth_page") == pytest.approx(0.8)


def test_cursor_thrash():
    j = J().add(0, "page_view", path="/p")
    j.add(1000, "mouse", dur=300, dist=800, turns=[0, 40, 80, 120, 160])
    j.add(2000, "mouse", dur=300, dist=800, turns=[0, 100, 200])
    assert f(j.run()[1], "cursor_thrash") == 1


def test_idle_gaps_and_time_features():
    j = J().add(0, "page_view", path="/p").add(45_000, "scroll", depth=0.2, dir="down")
    j.add(46_000, "scroll", depth=0.3, dir="down")
    _, row = j.run()
    assert f(row, "idle_gaps") == 1 and f(row, "max_idle_s") == 45
    assert f(row, "gap_s") == 1 and f(row, "session_age_s") == 46


def test_video_dropoff_when_leaving_early():
    j = J().add(0, "page_view", path="/product.html")
    j.add(1000, "video_play", media="v", t=0, dur=60)
    j.add(10_000, "video_pause", media="v", t=9, dur=60)
    j.add(11_000, "page_view", path="/")  # left at 15 %: below the 50 % line
    _, row = j.run()
    assert f(row, "sig_video_dropoff") == pytest.approx(1 - 0.15 / 0.5)
    watched = J().add(0, "page_view", path="/p").add(1000, "video_play", media="v", t=0, dur=10)
    watched.add(11_000, "video_ended", media="v").add(12_000, "page_view", path="/")
    assert f(watched.run()[1], "sig_video_dropoff") == 0


def test_form_abandonment_is_edited_fields_left_unsent_for_another_page_or_form():
    def form(j: J, t: int, name: str, fields: tuple[str, ...]) -> J:
        for i, field in enumerate(fields):
            j.add(t + i * 1000, "form_focus", form=name, field=field)
            j.add(t + i * 1000 + 500, "form_input", form=name, field=field, count=4)
        return j

    left = form(J().add(0, "page_view", path="/checkout"), 1000, "co", ("name", "street"))
    _, row = left.add(9000, "page_view", path="/cart").run()
    assert f(row, "form_abandons") == 1 and f(row, "sig_form_abandon") > 0.99
    # Another form started: the first one was left.
    other = form(J().add(0, "page_view", path="/apply"), 1000, "a", ("x", "y", "z"))
    _, row = form(other, 9000, "b", ("q",)).run()
    assert f(row, "form_abandons") == 1
    # Sent (even when refused) is not abandoned; nor is one edited field (a search box),
    # nor a hidden tab (looking something up elsewhere).
    sent = form(J().add(0, "page_view", path="/checkout"), 1000, "co", ("name", "street"))
    sent.add(5000, "form_submit", form="co", ok=False).add(6000, "visibility", state="hidden")
    _, row = sent.add(9000, "page_view", path="/cart").run()
    one = form(J().add(0, "page_view", path="/"), 1000, "search", ("q",))
    _, row_one = one.add(9000, "page_view", path="/search").run()
    assert f(row, "form_abandons") == f(row_one, "form_abandons") == 0
    assert f(row, "sig_form_abandon") == f(row_one, "sig_form_abandon") == 0
    # The threshold is a site setting.
    _, row = one.run(DetectorConfig(abandon_fields=1))
    assert f(row, "form_abandons") == 1


def test_video_playback_rate_and_forward_skips():
    j = J().add(0, "page_view", path="/product.html")
    j.add(1000, "video_play", media="v", t=0, dur=120)
    j.add(2000, "video_rate", media="v", rate=2.0, t=1)
    j.add(3000, "video_seek", media="v", dur=120, **{"from": 2, "to": 30})
    j.add(4000, "video_seek", media="v", dur=120, **{"from": 31, "to": 10})
    j.add(5000, "video_seek", media="v", dur=120, **{"from": 11, "to": 40.5})
    s, row = j.run()
    assert f(row, "video_rate") == 2.0
    assert (f(row, "video_seek_fwd"), f(row, "video_seek_back"), f(row, "video_seeks")) == (2, 1, 3)
    assert f(row, "video_skipped_s") == pytest.approx(28 + 29.5)
    # A new page's video plays at the normal rate until told otherwise.
    _, row = j.add(6000, "page_view", path="/").run()
    assert f(row, "video_rate") == 1.0 and f(row, "video_skipped_s") == pytest.approx(57.5)


def test_cart_state_and_purchase():
    j = J().add(0, "page_view", path="/product.html?id=p-1", item="p-1")
    j.add(1000, "add_to_cart", item="p-1", qty=2, price=10.0)
    j.add(2000, "add_to_cart", item="p-2", price=5.0)
    j.add(3000, "remove_from_cart", item="p-2")
    j.add(4000, "page_view", path="/cart.html")
    j.add(49_000, "scroll", depth=0.1, dir="down")  # 45 s on the cart page with items
    s, row = j.run()
    assert f(row, "cart_items") == 2 and f(row, "cart_adds") == 2 and f(row, "cart_removes") == 1
    assert f(row, "sig_cart_hesitation") == pytest.approx(1.0)
    assert s.cart_item_ids == ["p-1"] and s.recent_items == ["p-1", "p-2"]
    j.add(50_000, "purchase", value=20.0)
    s, row = j.run()
    assert (
        f(row, "purchased") == 1
        and f(row, "cart_items") == 0
        and f(row, "sig_cart_hesitation") == 0
    )


def test_client_clock_stepping_back_does_not_go_negative():
    j = J().add(5000, "page_view", path="/").add(4000, "scroll", depth=0.1, dir="down")
    _, row = j.run()
    assert f(row, "gap_s") == 0 and f(row, "session_age_s") == 0


def test_a_form_hint_points_at_the_rejected_field_the_visitor_typed_into():
    # The visitor types into amount and zip; the submit rejects every invalid
    # field in page order, including ones left empty (term, income).
    j = J().add(0, "page_view", path="/calculator.html")
    j.add(100, "form_input", form="calc", field="amount")
    j.add(200, "form_input", form="calc", field="zip")
    j.add(300, "form_submit", form="calc", ok=False)
    j.add(310, "form_error", form="calc", field="amount")
    j.add(311, "form_error", form="calc", field="term").add(
        312, "form_error", form="calc", field="income"
    )
    s, _ = j.run()
    assert s.last_error_field == "amount"  # what the policy sees if it decides here
    j.add(313, "form_error", form="calc", field="zip")
    s, _ = j.run()
    assert s.last_error_field == "zip"  # also typed into: the latest such
    # Once zip is edited again it may be fine: the next rejection moves the hint.
    j.add(400, "form_input", form="calc", field="zip")
    j.add(500, "form_error", form="calc", field="income")
    s, _ = j.run()
    assert s.last_error_field == "income"
    # Nothing typed into a rejected field: the latest rejection, as before.
    k = J().add(0, "page_view", path="/calculator.html")
    k.add(100, "form_input", form="calc", field="amount")
    k.add(200, "form_error", form="calc", field="term").add(
        201, "form_error", form="calc", field="dob"
    )
    s, _ = k.run()
    assert s.last_error_field == "dob"


def test_a_snapshot_of_another_layout_is_refused_not_misread():
    s, _ = J().add(0, "page_view", path="/p").click(100).run()
    layout, fields = msgpack.unpackb(s.packed())
    assert layout == SNAPSHOT_LAYOUT
    for state in (fields, ["0000beef", fields], [layout, fields[:-1]], [layout]):
        with pytest.raises(SnapshotMismatch):
            Session.from_state(state)


def test_snapshot_roundtrip_is_exact():
    j = J().add(0, "page_view", path="/p").click(100).click(200).click(300, reacted=False)
    j.add(400, "form_error", form="f", field="x").add(
        500, "mouse", dur=1, dist=1, turns=[1, 2, 3, 4, 5]
    )
    s, row = j.run()
    packed = s.packed()
    assert len(packed) < 1024
    back = Session.from_state(msgpack.unpackb(packed))
    assert back.row() == row
    # and it keeps evolving identically
    nxt = validate_event(
        {
            "type": "click",
            "seq": 99,
            "ts": T0 + 600,
            "selector": "#b",
            "x": 100,
            "y": 100,
            "reacted": True,
        },
        T0 + 600,
    )
    assert back.apply(dict(nxt)) == s.apply(dict(nxt))


def test_replay_gives_each_events_own_row():
    """One row per event, as of that event (expectations by hand, not by a second replay)."""
    j = J().add(0, "page_view", path="/p").click(100).add(500, "scroll", depth=0.5, dir="down")
    rows = replay(j.events)
    assert len(rows) == 3 and all(len(r) == N_FEATURES for r in rows)
    by_event = {
        name: [f(r, name) for r in rows]
        for name in ("n_events", "session_age_s", "gap_s", "n_pages", "n_clicks")
    }
    assert by_event == {
        "n_events": [1, 2, 3],
        "session_age_s": [0.0, 0.1, 0.5],
        "gap_s": [0.0, 0.1, 0.4],
        "n_pages": [1, 1, 1],
        "n_clicks": [0, 1, 1],
    }
    assert [f(r, "scroll_depth_max") for r in rows] == [0.0, 0.0, 0.5]
    assert all(f(r, f"page_{p}") == 0 for r in rows for p in PAGE_TYPES)  # "/p" is no known page
    # The detector settings are the ones given: three quick clicks on one spot are a rage
    # burst by default (3 clicks), not when a burst takes four.
    burst = J().add(0, "page_view", path="/").click(100).click(300).click(500).events
    assert f(replay(burst)[-1], "rage_clicks") >= 1
    assert f(replay(burst, cfg=DetectorConfig(rage_clicks=4))[-1], "rage_clicks") == 0


@pytest.mark.parametrize(
    ("path", "declared", "kind"),
    [
        ("/", None, "home"),
        ("/cart.html", None, "cart"),
        ("/checkout", None, "checkout"),
        ("/product.html?id=1", None, "product"),
        ("/x", "calculator", "form"),
        ("/x", "help", "help"),
        ("/about", None, "other"),
    ],
)
def test_page_type(path, declared, kind):
    assert page_type_of(path, declared) == kind
