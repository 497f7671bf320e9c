"""The event schema: every refusal has its machine-readable code, and nothing raises."""

from __future__ import annotations

import msgpack
import pytest

from actors.core.events import (
    BAD_EVENT,
    BAD_TYPE,
    CLOCK_SKEW,
    EVENT_TYPES,
    FIELDS,
    MAX_DEPTH,
    MAX_NUM,
    MAX_PRICE,
    MAX_QTY,
    MISSING_FIELD,
    OUT_OF_RANGE,
    TOO_LARGE,
    UNKNOWN_TYPE,
    EventError,
    validate_event,
)
from actors.core.session import Session

NOW = 1_700_000_000_000


def ev(**kw):
    base = {"type": "click", "seq": 1, "ts": NOW, "selector": "#b", "x": 1, "y": 2, "reacted": True}
    base.update(kw)
    return base


def test_valid_click_is_normalised_and_extra_fields_dropped():
    out = validate_event(ev(extra="dropped", value="typed text"), NOW)
    assert out == {
        "type": "click",
        "seq": 1,
        "ts": NOW,
        "selector": "#b",
        "x": 1,
        "y": 2,
        "reacted": True,
    }


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        ("not a map", BAD_EVENT, None),
        ({"seq": 1, "ts": NOW}, MISSING_FIELD, "type"),
        (ev(type="teleport"), UNKNOWN_TYPE, "type"),
        (ev(seq=0), BAD_TYPE, "seq"),
        (ev(seq=True), BAD_TYPE, "seq"),
        (ev(ts=None), MISSING_FIELD, "ts"),
        (ev(ts="yesterday"), BAD_TYPE, "ts"),
        (ev(selector=None), MISSING_FIELD, "selector"),
        (ev(x="12"), BAD_TYPE, "x"),
        (ev(reacted=1), BAD_TYPE, "reacted"),
        (ev(x=True), BAD_TYPE, "x"),  # a bool is not a coordinate
        (ev(selector="a" * 600), TOO_LARGE, "selector"),
        (ev(type="custom", name="n", props={"k": "v" * 5000}), TOO_LARGE, None),
        (ev(ts=NOW + 3_600_000), CLOCK_SKEW, "ts"),
        (ev(ts=NOW - 2 * 24 * 3_600_000), CLOCK_SKEW, "ts"),
        ({"type": "scroll", "seq": 1, "ts": NOW, "depth": 0.5, "dir": "sideways"}, BAD_TYPE, "dir"),
        (
            {"type": "mouse", "seq": 1, "ts": NOW, "dur": 1, "dist": 1, "turns": ["a"]},
            BAD_TYPE,
            "turns",
        ),
        (
            {"type": "mouse", "seq": 1, "ts": NOW, "dur": 1, "dist": 1, "turns": list(range(99))},
            BAD_TYPE,
            "turns",
        ),
    ],
)
def test_refusals_carry_codes(raw, code, field):
    out = validate_event(raw, NOW)
    assert isinstance(out, EventError)
    assert out.code == code
    assert out.field == field
    wire = out.to_wire()
    assert wire["code"] == code and wire["detail"]


def test_clock_offset_moves_ts_onto_server_clock():
    # The client's clock is an hour behind; its frame says so, and ts is corrected.
    out = validate_event(ev(ts=NOW - 3_600_000), NOW, clock_offset_ms=3_600_000)
    assert out["ts"] == NOW


def test_every_type_has_a_valid_minimal_form():
    samples = {str: "x", bool: True, int: 1, float: 1.5, list: [], dict: {}, tuple: []}
    for etype in EVENT_TYPES:
        raw = {"type": etype, "seq": 3, "ts": NOW}
        for name, (types, required) in FIELDS[etype].items():
            if required:
                raw[name] = samples[types[0]]
        if etype == "scroll":
            raw["dir"] = "down"
        if etype == "visibility":
            raw["state"] = "hidden"
        out = validate_event(raw, NOW)
        assert isinstance(out, dict), (etype, out)


def test_form_events_cannot_carry_values():
    out = validate_event(
        {
            "type": "form_input",
            "seq": 1,
            "ts": NOW,
            "form": "f",
            "field": "email",
            "value": "me@example.com",
        },
        NOW,
    )
    assert "value" not in out and "me@example.com" not in repr(out)


# -- numbers, strings and nesting: whatever validation passes can be stored ------

BIG = 2**70  # past msgpack's 64 bits
U64 = 2**64 - 1  # msgpack packs it, but a session summing two cannot be snapshotted


def cart(**kw):
    return {"type": "add_to_cart", "seq": 1, "ts": NOW, "item": "p-1", **kw}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (cart(qty=BIG), "qty"),
        (cart(qty=U64), "qty"),
        (cart(qty=MAX_QTY + 1), "qty"),
        (cart(qty=-1), "qty"),
        (cart(price=float("nan")), "price"),
        (cart(price=float("inf")), "price"),
        (cart(price=-5.0), "price"),
        (cart(price=MAX_PRICE * 10), "price"),
        ({**cart(qty=1), "type": "remove_from_cart", "qty": U64}, "qty"),
        (
            {"type": "form_input", "seq": 1, "ts": NOW, "form": "f", "field": "a", "count": U64},
            "count",
        ),
        (ev(x=float("nan")), "x"),
        (ev(y=float("-inf")), "y"),
        (ev(x=BIG), "x"),
        (ev(ts=float("nan")), "ts"),
        (ev(ts=float("inf")), "ts"),
        (ev(ts=1e999), "ts"),
        ({"type": "hover", "seq": 1, "ts": NOW, "selector": "a", "dwell": 1e300}, "dwell"),
        (
            {"type": "mouse", "seq": 1, "ts": NOW, "dur": 1, "dist": 1, "turns": [1, BIG]},
            "turns",
        ),
        (
            {"type": "mouse", "seq": 1, "ts": NOW, "dur": 1, "dist": 1, "turns": [float("nan")]},
            "turns",
        ),
        ({"type": "purchase", "seq": 1, "ts": NOW, "items": ["a", U64]}, "items"),
        (
            {"type": "custom", "seq": 1, "ts": NOW, "name": "n", "props": {"a": [{"b": BIG}]}},
            "props",
        ),
        (
            {"type": "custom", "seq": 1, "ts": NOW, "name": "n", "props": {"a": float("inf")}},
            "props",
        ),
    ],
)
def test_numbers_out_of_range_are_refused_with_their_seq(raw, field):
    out = validate_event(raw, NOW)
    assert isinstance(out, EventError), out
    assert (out.code, out.field, out.seq) == (OUT_OF_RANGE, field, 1)


def test_numbers_in_range_pass_and_pack():
    raw = cart(qty=MAX_QTY, price=MAX_PRICE)
    out = validate_event(raw, NOW)
    assert out["qty"] == MAX_QTY and out["price"] == MAX_PRICE
    msgpack.packb(out)
    assert validate_event(ev(x=-(2**53), y=2**53), NOW)["y"] == 2**53
    assert validate_event(ev(ts=float(NOW)), NOW)["ts"] == NOW  # a float ts is still a time


def test_a_session_can_snapshot_after_the_largest_valid_cart_adds():
    # Two qty = 2**64 - 1 adds used to be acknowledged, then break Session.packed.
    s = Session("sess-0001")
    for seq in range(1, 1001):
        out = validate_event(cart(seq=seq, qty=MAX_QTY, price=MAX_PRICE), NOW)
        assert isinstance(out, dict), out
        s.apply(out)
    assert s.cart_items == 1000 * MAX_QTY
    Session.from_state(msgpack.unpackb(s.packed()))  # packs and comes back


def test_seq_beyond_max_num_has_no_number_to_consume():
    out = validate_event(ev(seq=BIG), NOW)
    assert (out.code, out.field, out.seq) == (BAD_TYPE, "seq", None)
    assert validate_event(ev(seq=MAX_NUM), NOW)["seq"] == MAX_NUM


def test_huge_int_ts_is_clock_skew_with_a_printable_detail():
    out = validate_event(ev(ts=10**5000), NOW)  # str() of it would raise
    assert out.code == CLOCK_SKEW and "s from server time" in out.detail


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (ev(selector="\ud800"), BAD_TYPE, "selector"),  # a lone surrogate: no UTF-8 for it
        ({"type": "purchase", "seq": 1, "ts": NOW, "items": ["\udfff"]}, BAD_TYPE, "items"),
        (
            {"type": "custom", "seq": 1, "ts": NOW, "name": "n", "props": {"\ud800": 1}},
            BAD_TYPE,
            "props",
        ),
        ({"type": "custom", "seq": 1, "ts": NOW, "name": "n", "props": {1: 1}}, BAD_TYPE, "props"),
        (
            {"type": "custom", "seq": 1, "ts": NOW, "name": "n", "props": {"b": b"x"}},
            BAD_TYPE,
            "props",
        ),
        (
            {
                "type": "purchase",
                "seq": 1,
                "ts": NOW,
                "items": msgpack.ExtType(1, b""),  # a tuple subclass, from msgpack
            },
            BAD_TYPE,
            "items",
        ),
    ],
)
def test_values_msgpack_cannot_store_are_refused(raw, code, field):
    out = validate_event(raw, NOW)
    assert isinstance(out, EventError), out
    assert (out.code, out.field, out.seq) == (code, field, 1)


def test_non_ascii_text_passes():
    out = validate_event(ev(selector="button.añadir-🛒"), NOW)
    assert out["selector"] == "button.añadir-🛒"
    msgpack.packb(out)


def test_nesting_is_bounded_without_recursion_errors():
    deep: object = 1
    for _ in range(5000):  # far past the interpreter's recursion limit
        deep = [deep]
    raw = {"type": "custom", "seq": 1, "ts": NOW, "name": "n", "props": {"a": deep}}
    out = validate_event(raw, NOW)
    assert (out.code, out.field) == (TOO_LARGE, "props")
    ok: object = 1
    for _ in range(MAX_DEPTH - 1):  # with props itself: MAX_DEPTH levels
        ok = [ok]
    out = validate_event({**raw, "props": {"a": ok}}, NOW)
    assert isinstance(out, dict), out
    msgpack.unpackb(msgpack.packb(out))
