"""The event schema: every refusal has its machine-readable code, and nothing raises."""

from __future__ import annotations

import pytest

from actors.events import (
    BAD_EVENT,
    BAD_TYPE,
    CLOCK_SKEW,
    EVENT_TYPES,
    FIELDS,
    MISSING_FIELD,
    TOO_LARGE,
    UNKNOWN_TYPE,
    EventError,
    validate_event,
)

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
