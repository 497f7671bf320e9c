"""`lifeline import` and the events file it writes: round trips on the real data, and refusals."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from training.cli import main
from training.loaders import DataError, load_diginetica, load_taobao, load_yoochoose
from training.replay_io import read_events_jsonl, write_events_jsonl


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_import_writes_every_event_interleaved_by_time_and_reads_back(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "taobao.jsonl"
    assert main(["import", "--source", "taobao", "--out", str(out), "--limit", "3000"]) == 0
    said = capsys.readouterr().out
    original = load_taobao(limit_sessions=3000)
    n_events = sum(len(s.events) for s in original)
    assert f"wrote {n_events} events of 3000 sessions" in said
    lines = _lines(out)
    assert len(lines) == n_events and all(set(x) == {"sid", "event"} for x in lines)
    # Ordered by event time across sessions, and sessions really are interleaved.
    ts = [x["event"]["ts"] for x in lines]
    assert ts == sorted(ts)
    sids = [x["sid"] for x in lines]
    runs = sum(1 for a, b in zip(sids, sids[1:], strict=False) if a != b) + 1
    assert runs > len(set(sids)), "some session's events are split by other sessions' events"
    # Read back: the same sessions, each in seq order, events as the loader made them.
    back = {s.sid: s for s in read_events_jsonl(out)}
    assert set(back) == {s.sid for s in original}
    for s in original:
        got = back[s.sid]
        assert got.events == s.events
        assert [e["seq"] for e in got.events] == sorted(e["seq"] for e in got.events)
        assert got.converted == s.converted and got.start_ms == s.start_ms
    starts = [s.start_ms for s in back.values()]
    assert starts == sorted(starts)


@pytest.mark.parametrize(
    ("source", "load"),
    [("diginetica", lambda: load_diginetica(limit_sessions=300)), ("yoochoose", None)],
)
def test_import_other_sources(tmp_path: Path, capsys, source: str, load) -> None:
    out = tmp_path / f"{source}.jsonl"
    assert main(["import", "--source", source, "--out", str(out), "--limit", "300"]) == 0
    capsys.readouterr()
    original = load() if load else load_yoochoose(limit_sessions=300)
    back = {s.sid: s for s in read_events_jsonl(out)}
    assert {sid: s.events for sid, s in back.items()} == {s.sid: s.events for s in original}
    kinds = Counter(x["event"]["type"] for x in _lines(out))
    if source == "diginetica":
        assert kinds["purchase"] == sum(s.converted for s in original) > 0
    else:  # no purchases, so nothing reads back as converted (the format carries no label)
        assert set(kinds) == {"page_view"} and not any(s.converted for s in back.values())


def test_import_refuses_a_missing_data_dir(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.jsonl"
    rc = main(["import", "--source", "taobao", "--out", str(out), "--data-dir", str(tmp_path)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "lifeline import: error:" in err and "user-behavior.csv: file not found" in err


EV = {"type": "page_view", "seq": 1, "ts": 1_700_000_000_000, "path": "/"}


def _write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def test_reader_groups_interleaved_sessions_in_seq_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"sid": "b", "event": {**EV, "seq": 2, "ts": EV["ts"] + 5}},
        {"sid": "a", "event": EV},
        "",
        {"sid": "b", "event": {**EV, "ts": EV["ts"] + 9}},  # out of time order: seq decides
        {"sid": "a", "event": {"type": "purchase", "seq": 3, "ts": EV["ts"] + 20}},  # a gap: ok
    )
    a, b = read_events_jsonl(path)
    assert (a.sid, b.sid) == ("a", "b")  # by start time
    assert [e["seq"] for e in a.events] == [1, 3] and a.converted
    assert [e["seq"] for e in b.events] == [1, 2] and not b.converted
    assert b.start_ms == EV["ts"] + 9
    # A file the writer made reads back to the same sessions.
    again = tmp_path / "again.jsonl"
    assert write_events_jsonl([a, b], again) == 4
    assert [(s.sid, s.events) for s in read_events_jsonl(again)] == [
        (a.sid, a.events),
        (b.sid, b.events),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"events.jsonl:2: not JSON .*expected \{\"sid\""),
        ("[1, 2]", r"events.jsonl:2: expected a JSON object"),
        ({"sid": "a", "event": EV, "site": "x"}, r":2: unexpected keys \['site'\]"),
        ({"event": EV}, r":2: 'sid' must be a non-empty string"),
        ({"sid": "a", "event": [EV]}, r":2: 'event' must be an object"),
        (
            {"sid": "a", "event": {"type": "click", "seq": 2, "ts": EV["ts"]}},
            r":2: event of session 'a' refused as the gateway would refuse it: "
            r"missing_field: click needs 'selector'",
        ),
        (
            {"sid": "a", "event": {**EV, "type": "teleport"}},
            r":2: .*unknown_type: unknown event type 'teleport'",
        ),
        ({"sid": "a", "event": {**EV, "seq": 0}}, r":2: .*'seq' must be an integer"),
        (
            {"sid": "s", "event": {**EV, "ts": EV["ts"] + 1}},
            r":2: session 's' has seq 1 twice \(first on line 1\)",
        ),
    ],
)
def test_reader_refuses_a_malformed_line_naming_file_and_line(
    tmp_path: Path, line: object, expected: str
) -> None:
    path = _write(tmp_path, {"sid": "s", "event": EV}, line)
    with pytest.raises(DataError, match=expected) as info:
        read_events_jsonl(path)
    assert info.value.path == str(path) and info.value.line == 2


def test_reader_refuses_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: file not found; expected JSON lines"):
        read_events_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="events.jsonl: no events"):
        read_events_jsonl(_write(tmp_path, ""))


def test_an_imported_file_replays(tmp_path: Path, capsys) -> None:
    """`lifeline import` writes what `lifeline replay --events` reads (through read_events_jsonl)."""
    events = tmp_path / "dg.jsonl"
    assert main(["import", "--source", "diginetica", "--out", str(events), "--limit", "200"]) == 0
    out = tmp_path / "replay"
    assert main(["replay", "--events", str(events), "--out", str(out)]) == 0
    assert "of 200 sessions offered help" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sessions"] == 200
