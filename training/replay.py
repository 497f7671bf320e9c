"""Replay recorded traffic offline through exactly the code the shards run.

What it is for: a site operator replays their own logs (or the public data
sets, ``lifeline import``) before switching Lifeline on, and sees whom it
would have helped: every event goes through :class:`actors.core.host.SessionHost`
(session, features, the scorer, the policy with its holdout and the site's
budget), one event at a time in the order of the events' own timestamps
across all sessions, as live traffic would arrive. Every time rule
(cooldown, idle, the budget's running level) runs on those timestamps.

Output (:func:`write`): ``events.csv`` (``sid,seq,type,risk,decision,holdout,reasons``,
one row per event; ``decision`` is the intervention kind or empty) and
``summary.json`` (sessions, sessions offered help and their share, the same
split by whether the session converted, and by the simulator's ground
truth "struggling" where the sessions carry it).

Limits: the visitor's reaction to help is not simulated (recorded visitors
never saw it; ``training.closed_loop`` does that on the simulator); every
session is replayed with analytics and personalisation consent unless told
otherwise; one host, so the budget is the whole site's (live, each shard
keeps its own slice).
"""

from __future__ import annotations

import csv
import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.core.detectors import DetectorConfig
from actors.core.host import SessionHost
from actors.core.policy import Decision, PolicyConfig
from actors.core.profile import Profile, history_of, summary_of, update
from training.dataset import converted_of
from training.loaders import SessionEvents

CSV_COLUMNS = ("sid", "seq", "type", "risk", "decision", "holdout", "reasons")
DEFAULT_CONSENT = ("analytics", "personalization")


@dataclass
class Replayed:
    """What a replay produced: one row per event and the decisions, per session."""

    rows: list[tuple[str, int, str, float, str, bool, str]] = field(default_factory=list)
    decisions: dict[str, list[Decision]] = field(default_factory=dict)
    sessions: dict[str, SessionEvents] = field(default_factory=dict)
    budget: dict[str, float] | None = None


def reasons_text(d: Decision) -> str:
    """A decision's reasons on one line: its strong signals, then what drove the model."""
    signals = [f"{r.signal} {r.strength:.2f}" for r in d.reasons if r.signal != "exit_risk"]
    drivers = [x.text() for x in d.drivers]
    parts = [f"trigger: {d.trigger}"]
    if signals:
        parts.append("signals: " + ", ".join(signals))
    if drivers:
        parts.append("model: " + ", ".join(drivers))
    return "; ".join(parts)


def replay(
    sessions: Sequence[SessionEvents],
    scorer: Any,
    *,
    site: str = "default",
    policy: PolicyConfig | None = None,
    detectors: DetectorConfig | None = None,
    consent: Sequence[str] = DEFAULT_CONSENT,
) -> Replayed:
    """Run ``sessions`` through a :class:`SessionHost`, events merged by timestamp.

    ``scorer`` is a :class:`actors.model.scoring.Scorer` (called on feature
    rows, with ``explain`` for the drivers of each decision). Sessions with a
    ``user_id`` (Taobao's) are one visitor's visits, as the shards see them: a
    session's first event comes with a Visit carrying that visitor's profile
    (with personalisation consent), and its last event merges it into the
    profile (with analytics consent): the same functions as live
    (actors/core/profile.py), a session's end standing for its retirement.
    """
    rules = (detectors or DetectorConfig(), policy or PolicyConfig())
    host = SessionHost(rules=lambda _site: rules)
    segment = scorer.segments.nearest if getattr(scorer, "segments", None) is not None else None
    out = Replayed(sessions={s.sid: s for s in sessions})
    # A k-way merge by (ts, session order, seq): each session stays in seq order.
    streams = [
        [(ev["ts"], i, ev["seq"], s.sid, ev) for ev in s.events] for i, s in enumerate(sessions)
    ]
    consent_list = list(consent)
    visitors = {s.sid: str(s.extra["user_id"]) for s in sessions if s.extra.get("user_id")}
    ends = {s.sid: (s.events[0]["seq"], s.events[-1]["seq"]) for s in sessions if s.events}
    profiles: dict[str, Profile] = {}
    personal = "personalization" in consent_list
    for _ts, _i, _seq, sid, ev in heapq.merge(*streams):
        vid = visitors.get(sid)
        if vid is not None and ev["seq"] == ends[sid][0]:
            history = history_of(profiles.get(vid), ev["ts"]) if personal else None
            host.visit(sid, vid, history)
        (result,) = host.process([(sid, site, consent_list, [ev])], scorer, segment, scorer.explain)
        decision = result.decisions[0] if result.decisions else None
        if decision is not None:
            out.decisions.setdefault(sid, []).append(decision)
        if vid is not None and ev["seq"] == ends[sid][1] and "analytics" in consent_list:
            ended = host.get(sid)
            if ended is not None:
                profiles[vid] = update(profiles.get(vid), summary_of(ended))
        out.rows.append(
            (
                sid,
                ev["seq"],
                ev["type"],
                round(result.scores[0], 4) if result.scores else float("nan"),
                decision.kind if decision else "",
                bool(decision.holdout) if decision else False,
                reasons_text(decision) if decision else "",
            )
        )
    budget = host.budgets.get(site)
    out.budget = budget.state() if budget is not None else None
    return out


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summary(r: Replayed) -> dict[str, Any]:
    """Sessions, those offered help (shown or holdout) and their share, by conversion and struggle."""
    groups: dict[str, list[str]] = {"all": list(r.sessions)}
    for sid, s in r.sessions.items():
        conv = s.converted if s.converted is not None else converted_of(s.events)
        groups.setdefault("converted" if conv else "not_converted", []).append(sid)
        if "struggling" in s.extra:
            groups.setdefault("struggling" if s.extra["struggling"] else "calm", []).append(sid)
    out: dict[str, Any] = {}
    for name, sids in groups.items():
        offered = [sid for sid in sids if sid in r.decisions]
        shown = [sid for sid in offered if not r.decisions[sid][0].holdout]
        out[name] = {
            "sessions": len(sids),
            "offered_help": len(offered),
            "offered_share": _share(len(offered), len(sids)),
            "shown": len(shown),
            "decisions": sum(len(r.decisions[sid]) for sid in offered),
        }
    by_kind: dict[str, int] = {}
    for ds in r.decisions.values():
        for d in ds:
            by_kind[d.kind] = by_kind.get(d.kind, 0) + 1
    result: dict[str, Any] = {
        "sessions": out["all"]["sessions"],
        "sessions_offered_help": out["all"]["offered_help"],
        "offered_share": out["all"]["offered_share"],
        "by_outcome": {k: v for k, v in out.items() if k in ("converted", "not_converted")},
        "decisions_by_kind": dict(sorted(by_kind.items())),
        "events": len(r.rows),
        "budget": r.budget,
    }
    if "struggling" in out or "calm" in out:
        result["by_struggle"] = {k: v for k, v in out.items() if k in ("struggling", "calm")}
        struggling = set(groups.get("struggling", []))
        result["offered_to_struggling_share"] = _share(
            sum(1 for sid in r.decisions if sid in struggling), len(r.decisions)
        )
    return result


def write(r: Replayed, out_dir: Path) -> dict[str, Any]:
    """Write ``events.csv`` and ``summary.json`` into ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "events.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for sid, seq, etype, risk, kind, holdout, reasons in r.rows:
            w.writerow((sid, seq, etype, risk, kind, int(holdout) if kind else "", reasons))
    s = summary(r)
    (out_dir / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    return s
