"""What a run on the live log learnt from (training/livelog.py): counts from events and rows."""

from __future__ import annotations

from training.dataset import normalise, rows_frame
from training.livelog import markdown, summarise
from training.loaders import SessionEvents

T0 = 1_700_000_000_000


def _session(sid: str, site: str, *extra: dict) -> SessionEvents:
    raw = [{"type": "page_view", "path": "/", "seq": 1, "ts": T0}]
    raw += [{**e, "seq": i, "ts": T0 + 1000 * i} for i, e in enumerate(extra, start=2)]
    events = normalise(raw)
    bought = any(e["type"] == "purchase" for e in events)
    return SessionEvents(sid, events, bought, "redis", T0, {"site": site})


def test_summary_counts_sessions_conversions_and_answers() -> None:
    shown = {"type": "intervention_shown", "iid": "i1"}
    sessions = [
        _session(
            "a", "demo", shown, {"type": "intervention_accepted", "iid": "i1"}, {"type": "purchase"}
        ),
        _session("b", "demo", shown, {"type": "intervention_dismissed", "iid": "i1"}),
        _session("c", "shop", {"type": "page_view", "path": "/x"}),
    ]
    rows = rows_frame(sessions)
    s = summarise(sessions, rows)
    assert s["sessions"] == 3 and s["events"] == 9 and s["rows"] == len(rows) == 8
    assert s["converted_sessions"] == 1 and s["conversion_rate"] == round(1 / 3, 4)
    assert s["sessions_by_site"] == {"demo": 2, "shop": 1}
    assert (s["sessions_shown_help"], s["sessions_accepted_help"]) == (2, 1)
    assert s["sessions_dismissed_help"] == 1 and s["conversion_rate_accepted"] == 1.0
    # Rows from the answer on carry it (a's purchase row is left out of the rows).
    assert s["rows_after_help"] == {"iv_shown": 4, "iv_accepted": 1, "iv_dismissed": 1}
    md = markdown(s)
    assert md.startswith("## Live event log") and "33.3 %" in md and "demo 2, shop 1" in md
    empty = summarise([], rows.iloc[:0])
    assert empty["conversion_rate"] is None and "n/a" in markdown(empty)
