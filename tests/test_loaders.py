"""Loaders on the real public files, and their errors on malformed ones."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from actors.core.events import EventError, validate_event
from training.dataset import normalise, read_jsonl, write_jsonl
from training.loaders import (
    OS_FEATURES,
    DataError,
    SessionEvents,
    default_data_dir,
    load_diginetica,
    load_online_shoppers,
    load_yoochoose,
)


def _valid(sessions: list[SessionEvents]) -> None:
    for s in sessions:
        assert [e["seq"] for e in s.events] == list(range(1, len(s.events) + 1))
        assert s.start_ms == s.events[0]["ts"]
        for e in s.events:
            assert not isinstance(validate_event(e, now_ms=e["ts"]), EventError), e


def test_data_dir_is_the_shared_one() -> None:
    assert (default_data_dir() / "README.md").is_file()


def test_diginetica_views_and_purchases() -> None:
    sessions = load_diginetica()
    # Figures from ../shared/data/README.md.
    assert len(sessions) == 2398
    assert sum(s.converted for s in sessions) == 106
    kinds = Counter(e["type"] for s in sessions for e in s.events)
    assert kinds == {"page_view": 9775, "purchase": 106}
    _valid(sessions)
    for s in sessions:
        purchases = [e for e in s.events if e["type"] == "purchase"]
        assert len(purchases) == (1 if s.converted else 0)
        assert s.sid.startswith("dg-")
    starts = [s.start_ms for s in sessions]
    assert starts == sorted(starts)
    first = sessions[0].events[0]
    assert first["page_type"] == "product" and first["path"].startswith(
        f"/product.html?id={first['item']}"
    )
    # The categories file is joined into the path when it knows the item.
    assert sum("&cat=" in e.get("path", "") for s in sessions for e in s.events) > 9000
    assert len(load_diginetica(limit_sessions=10, with_categories=False)) == 10


def test_yoochoose_clicks() -> None:
    sessions = load_yoochoose()
    assert len(sessions) == 17794
    assert sum(len(s.events) for s in sessions) == 70278
    assert all(s.converted is None and len(s.events) >= 2 for s in sessions)
    _valid(sessions[:2000])
    # Six days of April 2014 (unix ms).
    assert 1396310400000 <= min(s.start_ms for s in sessions) < 1398902400000


def test_online_shoppers_table() -> None:
    df = load_online_shoppers()
    assert df.shape == (12330, 18)
    assert len(OS_FEATURES) == 17 and "Revenue" not in OS_FEATURES
    assert abs(df["Revenue"].mean() - 0.155) < 0.001
    assert str(df["Month"].dtype) == "category" and df["Weekend"].dtype == bool


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_malformed_files_name_file_line_and_expectation(tmp_path: Path) -> None:
    dg = tmp_path / "diginetica"
    with pytest.raises(DataError, match=r"train-item-views\.csv: file not found"):
        load_diginetica(dg)

    _write(dg, "train-item-views.csv", "session;user;item\n1;;2\n")
    with pytest.raises(
        DataError,
        match=r"train-item-views\.csv:1: unexpected header .* expected 'session_id;user_id",
    ):
        load_diginetica(dg)

    _write(
        dg,
        "train-item-views.csv",
        "session_id;user_id;item_id;timeframe;eventdate\n1;;5;0;2016-01-01\n2;;x7;10;2016-01-01\n",
    )
    with pytest.raises(
        DataError, match=r"train-item-views\.csv:3: expected an integer item_id, got 'x7'"
    ):
        load_diginetica(dg)

    _write(dg, "train-item-views.csv", "session_id;user_id;item_id;timeframe;eventdate\n1;;5;0\n")
    with pytest.raises(DataError, match=r":2: expected 5 ';'-separated fields"):
        load_diginetica(dg)

    _write(
        dg,
        "train-item-views.csv",
        "session_id;user_id;item_id;timeframe;eventdate\n1;;5;0;01/02/2016\n",
    )
    with pytest.raises(DataError, match=r":2: expected a date YYYY-MM-DD in eventdate"):
        load_diginetica(dg)

    yc = _write(tmp_path, "clicks.tsv", "SessionId\tItemId\tTime\n1\t5\t1396437466.9\n1\t6\tsoon\n")
    with pytest.raises(DataError, match=r"clicks\.tsv:3: expected a number Time, got 'soon'"):
        load_yoochoose(yc)

    header = ";".join(
        ["Administrative", "Administrative_Duration", "Informational", "Informational_Duration"]
        + ["ProductRelated", "ProductRelated_Duration", "BounceRates", "ExitRates", "PageValues"]
        + ["SpecialDay", "Month", "OperatingSystems", "Browser", "Region", "TrafficType"]
        + ["VisitorType", "Weekend", "Revenue"]
    )
    good = "0;0;0;0;1;0;0.2;0.2;0;0;Feb;1;1;1;1;Returning_Visitor;FALSE;FALSE"
    bad = "0;0;0;0;1;0;0.2;0.2;0;0;Feb;1;1;1;1;Returning_Visitor;FALSE;maybe"
    os_file = _write(tmp_path, "os.csv", f"{header}\n{good}\n{bad}\n")
    with pytest.raises(
        DataError, match=r"os\.csv:3: expected TRUE or FALSE in Revenue, got 'maybe'"
    ):
        load_online_shoppers(os_file)
    assert len(load_online_shoppers(_write(tmp_path, "os2.csv", f"{header}\n{good}\n"))) == 1


def test_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    sessions = load_diginetica(limit_sessions=25)
    path = tmp_path / "s.jsonl"
    assert write_jsonl(sessions, path) == 25
    back = read_jsonl(path)
    assert [s.sid for s in back] == [s.sid for s in sessions]
    assert [s.converted for s in back] == [s.converted for s in sessions]
    assert [s.events for s in back] == [normalise(s.events) for s in sessions]

    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"type":"page_view"', '"type":"teleport"', 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"s\.jsonl:3: session 'dg-\d+': event #1 refused: unknown_type"
    ):
        read_jsonl(path)
    path.write_text('{"sid": "a"}\n')
    with pytest.raises(DataError, match=r"s\.jsonl:1: expected \{\"sid\": str, \"events\""):
        read_jsonl(path)
    path.write_text("not json\n")
    with pytest.raises(DataError, match=r"s\.jsonl:1: not JSON"):
        read_jsonl(path)
