"""The outcome join and its report on constructed decision records (pure; no Redis)."""

from __future__ import annotations

import json
import random

import pytest

from training.cli import UserError, parse_since
from training.outcomes import FORMAT, DecisionRecord, aggregate, join, select, utc_day
from training.outcomes_report import write_report
from training.uplift import uplift

DAY1 = 1_780_000_000_000  # 2026-05-28 20:26 UTC
DAY2 = DAY1 + 86_400_000


def rec(sid: str, seq: int, kind: str = "help_offer", **kw) -> DecisionRecord:
    base = {
        "iid": f"i-{sid}-{seq}",
        "sid": sid,
        "site": "demo",
        "seq": seq,
        "ts": DAY1 + seq * 1000,
        "kind": kind,
        "holdout": False,
        "model": "v1",
        "segment": "cart_builders",
    }
    return DecisionRecord(**(base | kw))


def records() -> list[DecisionRecord]:
    t = DAY1 + 60_000
    out = [
        # Two decisions: the session belongs to its first; it accepted the second.
        rec("a", 5, "form_hint", shown=t, converted=t + 9, converted_seq=30, goal="purchase"),
        rec("a", 20, "help_offer", shown=t, accepted=t + 1, converted=t + 9, converted_seq=30),
        rec("b", 4, shown=t, dismissed=t + 1),
        rec("c", 6, shown=t, converted=t, converted_seq=9, goal="lead"),
        rec("d", 6, segment=""),  # never confirmed shown; a model without segments
        rec("e", 7, holdout=True, converted=t, converted_seq=8, goal="purchase"),
        rec("f", 7, holdout=True, ts=DAY2),
        # A conversion that did not come after the decision is not one.
        rec("g", 9, shown=t, converted=t, converted_seq=3, goal="purchase"),
        # The same sid on another site is another session.
        rec("a", 3, site="shop", model="v2", holdout=True),
        # A session whose record expired is left out, not counted with a later decision.
        rec("h", 2, expired=True),
        rec("h", 9, shown=t),
    ]
    random.Random(3).shuffle(out)
    return out


def test_join_gives_one_row_per_session_with_its_first_decision_reaction_and_conversion():
    rows, expired = join(records())
    assert expired == 1
    by = {(r.site, r.sid): r for r in rows}
    assert set(by) == {("demo", s) for s in "abcdefg"} | {("shop", "a")}
    a = by[("demo", "a")]
    assert (a.kind, a.decisions, a.reaction, a.converted, a.goal) == (
        "form_hint",
        2,
        "accepted",
        True,
        "purchase",
    )
    assert [by[("demo", s)].reaction for s in "bcdg"] == [
        "dismissed",
        "ignored",
        "unseen",
        "ignored",
    ]
    assert (by[("demo", "c")].converted, by[("demo", "c")].goal) == (True, "lead")
    assert by[("demo", "g")].converted is False and by[("demo", "g")].goal is None
    assert by[("demo", "d")].segment == "none"
    assert [by[("demo", s)].reaction for s in "ef"] == ["holdout", "holdout"]
    assert by[("demo", "e")].converted and not by[("demo", "f")].converted
    assert by[("demo", "f")].day == utc_day(DAY2) != by[("demo", "e")].day
    assert [r.first_ts for r in rows] == sorted(r.first_ts for r in rows)


def test_aggregate_compares_treated_with_holdout_in_total_and_by_each_breakdown():
    rows, _ = join(records())
    data = aggregate(rows, source={"decisions": 11})
    assert data["format"] == FORMAT and data["sessions"] == 8
    t = data["totals"]
    # Treated a, b, c, d, g: a and c converted; holdout e, f (demo) and a (shop): e converted.
    assert (t["treated_n"], t["treated_conversions"], t["holdout_n"], t["holdout_conversions"]) == (
        5,
        2,
        3,
        1,
    )
    expected = uplift(2, 5, 1, 3).to_dict()
    assert {k: t[k] for k in expected} == expected
    assert t["reactions"] == {"accepted": 1, "dismissed": 1, "ignored": 2, "unseen": 1}
    assert t["goals"] == {
        "lead": {"treated": 1, "holdout": 0},
        "purchase": {"treated": 1, "holdout": 1},
    }
    by = {dim: {g["key"]: g for g in groups} for dim, groups in data["by"].items()}
    assert set(by) == {"kind", "site", "segment", "model", "day"}
    assert set(by["kind"]) == {"form_hint", "help_offer"}
    assert by["kind"]["form_hint"]["treated_n"] == 1 and by["kind"]["form_hint"]["holdout_n"] == 0
    # A group without holdout sessions has no uplift: null, not zero.
    assert by["kind"]["form_hint"]["uplift"] is None and by["kind"]["form_hint"]["low"] is None
    assert (by["site"]["shop"]["treated_n"], by["site"]["shop"]["holdout_n"]) == (0, 1)
    assert by["segment"]["none"]["sessions"] == 1
    assert by["model"]["v2"]["sessions"] == 1 and by["model"]["v1"]["sessions"] == 7
    assert [g["key"] for g in data["by"]["day"]] == [utc_day(DAY1), utc_day(DAY2)]
    assert by["day"][utc_day(DAY2)]["holdout_n"] == 1
    # Other breakdowns: most sessions first.
    assert [g["key"] for g in data["by"]["site"]] == ["demo", "shop"]
    assert data["source"] == {"decisions": 11}
    assert json.loads(json.dumps(data)) == data  # JSON as it is


def test_select_keeps_sessions_by_first_decision_time_and_site():
    rows, _ = join(records())
    assert {r.sid for r in select(rows, since_ms=DAY2)} == {"f"}
    assert {(r.site, r.sid) for r in select(rows, site="shop")} == {("shop", "a")}
    assert len(select(rows)) == len(rows)


def test_records_are_read_from_the_strings_the_shard_writes():
    fields = {
        "iid": "i-x-4",
        "sid": "x",
        "site": "demo",
        "seq": "4",
        "ts": "1780000000123",
        "kind": "form_hint",
        "holdout": "1",
        "model": "v0003-ab",
        "segment": "2",
        "segment_name": "",
        "shown": "1780000000200.0",
        "converted": "1780000009000",
        "converted_seq": "11",
        "goal": "lead",
        "log_id": "1780000000123-0",
    }
    r = DecisionRecord.from_fields(fields)
    assert (r.seq, r.ts, r.holdout, r.segment, r.shown) == (
        4,
        1780000000123,
        True,
        "segment 2",
        1780000000200,
    )
    assert (r.converted, r.converted_seq, r.goal, r.accepted) == (1780000009000, 11, "lead", None)
    named = DecisionRecord.from_fields(fields | {"segment_name": "u_turners", "holdout": "0"})
    assert (named.segment, named.holdout) == ("u_turners", False)
    assert DecisionRecord.from_fields(fields | {"segment": ""}).segment == ""


def test_the_report_writes_every_breakdown_and_says_no_data_for_empty_groups(tmp_path):
    rows, _ = join(records())
    path = write_report(aggregate(rows), tmp_path / "r", command="lifeline report outcomes")
    md = path.read_text()
    for heading in ("By intervention kind", "By site", "By segment", "By model version", "By day"):
        assert f"## {heading}" in md
    assert "no data: no holdout sessions" in md  # form_hint has none
    assert "no data: no treated sessions" in md  # the shop site has none
    assert "| purchase | 1 | 1 |" in md
    for png in ("uplift.png", "daily.png", "reactions.png"):
        assert (tmp_path / "r" / png).stat().st_size > 5000 and f"]({png})" in md
    assert json.loads((tmp_path / "r" / "outcomes.json").read_text())["sessions"] == 8

    empty = write_report(aggregate([]), tmp_path / "empty").read_text()
    assert "No data: conversion cannot be compared yet." in empty
    assert (tmp_path / "empty" / "uplift.png").exists()


def test_the_report_draws_rates_of_zero_and_one(tmp_path):
    """Every session of a day converted, or none did: the intervals end at the rate itself."""
    # Wilson's bounds for 0 of 5 and 13 of 13 land a rounding error inside the rate.
    won = [
        rec(f"w{i}", 5, shown=DAY1, converted=DAY1 + 5, converted_seq=6, goal="purchase")
        for i in range(13)
    ]
    rows, _ = join(won + [rec(f"x{i}", 5, holdout=True) for i in range(5)])
    md = write_report(aggregate(rows), tmp_path).read_text()
    assert "13 / 13 (100.0%)" in md and "0 / 5 (0.0%)" in md and "+100.0 pts" in md


def test_since_takes_a_span_or_a_date():
    now = DAY2
    assert parse_since("7d", now) == now - 7 * 86_400_000
    assert parse_since("12h", now) == now - 12 * 3_600_000
    assert parse_since("30m", now) == now - 30 * 60_000
    assert parse_since("2026-05-01", now) == 1_777_593_600_000
    assert parse_since("2026-05-01T02:00+02:00", now) == 1_777_593_600_000
    with pytest.raises(UserError, match="span"):
        parse_since("last week", now)


def test_chats_opened_from_offers_are_counted_per_group_next_to_the_holdout():
    t = DAY1 + 60_000
    fields = {"iid": "i-h-4", "sid": "h", "site": "demo", "seq": "4", "ts": str(DAY1),
              "kind": "help_offer", "holdout": "0", "chat_opened": "2", "chat_messages": "3",
              "chat_resolved": "1"}  # fmt: skip
    assert DecisionRecord.from_fields(fields).chat_opened == 2
    rows, _ = join(
        [
            DecisionRecord.from_fields(fields),
            rec(
                "i",
                4,
                shown=t,
                accepted=t,
                chat_opened=1,
                chat_messages=1,
                chat_handoff=1,
                converted=t + 5,
                converted_seq=9,
                goal="purchase",
            ),  # fmt: skip
            rec("j", 4, shown=t),  # offered, no chat
            rec("k", 4, holdout=True, converted=t, converted_seq=9, goal="purchase"),
        ]
    )
    totals = aggregate(rows)["totals"]
    assert totals["chats"] == {
        "sessions": 2,
        "converted": 1,
        "rate": 0.5,
        "messages": 4,
        "resolved_by_assistant": 1,
        "handed_off": 1,
    }
    assert totals["holdout_n"] == 1  # the comparison the report sets it against
    none = aggregate([r for r in rows if r.sid == "j"])["totals"]["chats"]
    assert none["sessions"] == 0 and none["rate"] is None  # no data, never a made-up zero
