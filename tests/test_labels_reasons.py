"""The exit label (with censoring), the Taobao sessions, and a decision's drivers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actors.core.features import FEATURE_NAMES, WORDS
from actors.core.host import SessionHost
from actors.core.reasons import top_drivers
from actors.model.scoring import Scorer
from training.dataset import rows_frame
from training.labels import UNKNOWN, apply_label, exit_labels
from training.loaders import SESSION_GAP_MS, SessionEvents, load_taobao


def _pv(seq: int, ts: int) -> dict:
    return {"type": "page_view", "seq": seq, "ts": ts, "path": f"/p{seq}", "page_type": "product"}


def test_exit_soon_label_and_censoring() -> None:
    t0 = 1_700_000_000_000
    minute = 60_000
    leaver = SessionEvents("a", [_pv(1, t0), _pv(2, t0 + 20 * minute)], False, "x", t0)
    buyer = SessionEvents(
        "b", [_pv(1, t0), {"type": "purchase", "seq": 2, "ts": t0 + minute}], True, "x", t0
    )
    # Cut off by the window: its last event is less than the session gap before the end.
    cut = SessionEvents(
        "c",
        [_pv(1, t0), _pv(2, t0 + 20 * minute)],
        False,
        "x",
        t0,
        {"observed_until_ms": t0 + 25 * minute},
    )
    df = rows_frame([leaver, buyer, cut])
    labels = dict(
        zip(zip(df["sid"], df["seq"], strict=True), exit_labels(df, horizon_s=600), strict=True)
    )
    assert labels[("a", 1)] == 0 and labels[("a", 2)] == 1  # 20 minutes on, then gone
    assert labels[("b", 1)] == 0  # converted
    assert labels[("c", 1)] == 0 and labels[("c", 2)] == UNKNOWN  # may have gone on
    kept = apply_label(df, horizon_s=600)
    assert ("c", 2) not in set(zip(kept["sid"], kept["seq"], strict=True))
    assert set(kept["converted"]) == {0, 1}


def test_taobao_sessions_split_at_the_gap_with_carts_and_purchases(tmp_path: Path) -> None:
    f = tmp_path / "user-behavior.csv"
    gap = SESSION_GAP_MS // 1000
    f.write_text(
        "user_id,item_id,category_id,behavior,ts\n"
        f"1,10,5,pv,1000\n1,10,5,cart,1010\n1,11,5,fav,1020\n1,10,5,buy,1030\n"
        f"1,12,6,pv,{1030 + gap + 1}\n2,13,7,pv,1005\n"
    )
    sessions = {s.sid: s for s in load_taobao(f)}
    assert set(sessions) == {"tb-1-0", "tb-1-1", "tb-2-0"}
    first = sessions["tb-1-0"]
    assert [e["type"] for e in first.events] == ["page_view", "add_to_cart", "custom", "purchase"]
    assert first.converted and not sessions["tb-1-1"].converted
    assert (
        first.extra["user_id"] == "1"
        and first.extra["observed_until_ms"] == (1030 + gap + 1) * 1000
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,category_id,behavior,ts\n1,2,3,look,5\n")
    try:
        load_taobao(bad)
    except ValueError as exc:
        assert "bad.csv:2" in str(exc) and "behavior" in str(exc)
    else:
        raise AssertionError("an unknown behaviour must be refused")


def test_top_drivers_are_the_largest_positive_contributions_in_words() -> None:
    contrib = np.zeros(len(FEATURE_NAMES))
    contrib[FEATURE_NAMES.index("form_errors")] = 0.9
    contrib[FEATURE_NAMES.index("page_dwell_s")] = 0.4
    contrib[FEATURE_NAMES.index("n_events")] = -2.0  # lowered the risk: never a reason
    contrib[FEATURE_NAMES.index("gap_s")] = 0.001  # noise
    row = np.zeros(len(FEATURE_NAMES))
    row[FEATURE_NAMES.index("form_errors")] = 3
    drivers = top_drivers(contrib, row)
    assert [d.feature for d in drivers] == ["form_errors", "page_dwell_s"]
    assert drivers[0].words == WORDS["form_errors"] == "form errors"
    assert drivers[0].text() == "form errors 3 (+0.90)"
    assert drivers[1].text() == "time on this page 0 (+0.40)"  # low values push too


def test_decisions_carry_the_models_drivers_when_explained() -> None:
    from training.simulator import scripted

    scorer = Scorer.bundled()
    host = SessionHost()
    events = scripted("struggling", "x", 1_732_300_000_000)
    from actors.core.events import validate_event

    evs = [validate_event(e, now_ms=e["ts"]) for e in events]
    results = []
    for ev in evs:
        results += host.process(
            [("s-1", "demo", ["analytics"], [ev])], scorer, None, scorer.explain
        )
    decisions = [d for r in results for d in r.decisions]
    assert decisions, "the scripted struggling visitor gets help"
    d = decisions[0]
    assert d.drivers and all(x.push > 0 and x.words for x in d.drivers)
    assert d.to_wire()["drivers"][0]["feature"] == d.drivers[0].feature
    # Without an explainer (the shards' hot path) nothing is computed.
    host2 = SessionHost()
    plain = [r for ev in evs for r in host2.process([("s-2", "demo", ["analytics"], [ev])], scorer)]
    assert all(not d.drivers for r in plain for d in r.decisions)


def test_replay_runs_interleaved_sessions_in_event_time_with_the_policys_time_rules(
    tmp_path: Path,
) -> None:
    import csv
    import json

    from actors.core.events import validate_event
    from actors.core.policy import PolicyConfig
    from training.replay import CSV_COLUMNS, replay, write
    from training.simulator import scripted

    t0 = 1_732_300_000_000
    sessions = []
    for i, kind in enumerate(("struggling", "struggling", "calm")):
        # The second struggling visitor starts 2 s after the first: their events interleave.
        evs = [validate_event(e, now_ms=e["ts"]) for e in scripted(kind, f"s{i}", t0 + 2000 * i)]
        sessions.append(SessionEvents(f"s{i}", evs, False, "test", evs[0]["ts"]))
    policy = PolicyConfig(
        min_signals=1, budget=1.0, holdout=0.0, cooldown_s=5.0, risk_threshold=0.95
    )
    result = replay(sessions, Scorer.bundled(), policy=policy)
    summary = write(result, tmp_path)
    with (tmp_path / "events.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == sum(len(s.events) for s in sessions)
    # Interleaved: the rows follow the events' timestamps across sessions.
    by_sid = {s.sid: {e["seq"]: e["ts"] for e in s.events} for s in sessions}
    times = [by_sid[r["sid"]][int(r["seq"])] for r in rows]
    assert times == sorted(times) and len({r["sid"] for r in rows[:10]}) > 1
    decided = [r for r in rows if r["decision"]]
    assert decided and all(r["reasons"].startswith("trigger:") for r in decided)
    for sid in ("s0", "s1"):
        ts = [by_sid[sid][int(r["seq"])] for r in decided if r["sid"] == sid]
        assert ts and all(b - a >= 5000 for a, b in zip(ts, ts[1:], strict=False))
    assert not [r for r in decided if r["sid"] == "s2"]  # the calm visitor: no help
    assert summary["sessions"] == 3 and summary["sessions_offered_help"] == 2
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
