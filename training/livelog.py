"""What a training run on the live event log learnt from: sessions, rows, conversions, answers to help.

What it is for: ``lifeline train --source live`` trains on what the live
system recorded, outcomes included: a ``purchase`` event is a conversion
(the label), and the visitors' answers to help (``intervention_shown``,
``intervention_accepted``, ``intervention_dismissed`` events, sent by the
client) are in the log and drive the ``iv_*`` features of every row after
them. :func:`summarise` counts them for the report and the model's
metadata, so a reader sees how much the model saw and of what.

Limits: descriptive only. The conversion rate of sessions that accepted
help is not an effect of help (who accepts is not random); the uplift of
help is measured against the holdout (``training/uplift.py``). Sessions
still going on when the log was read count as not converted so far; the
label leaves out the rows whose outcome is not known yet
(``training.labels``, with ``observed_until_ms`` = the time of the read).
Pure: pandas only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from training.loaders import SessionEvents

ANSWERS = ("intervention_shown", "intervention_accepted", "intervention_dismissed")


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summarise(sessions: Sequence[SessionEvents], rows: pd.DataFrame) -> dict[str, Any]:
    """Counts of the log's sessions, events, rows, conversions and answers to help.

    ``rows`` is the rows frame replayed from ``sessions`` (training.dataset).
    """
    converted = [s for s in sessions if s.converted]
    with_answer = {
        a: {s.sid for s in sessions for e in s.events if e["type"] == a} for a in ANSWERS
    }
    accepted = with_answer["intervention_accepted"]
    conv_ids = {s.sid for s in converted}
    sites: dict[str, int] = {}
    for s in sessions:
        site = str(s.extra.get("site", "default"))
        sites[site] = sites.get(site, 0) + 1
    iv_rows = {c: int((rows[c] > 0).sum()) for c in ("iv_shown", "iv_accepted", "iv_dismissed")}
    return {
        "sessions": len(sessions),
        "events": sum(len(s.events) for s in sessions),
        "rows": len(rows),
        "converted_sessions": len(converted),
        "conversion_rate": _rate(len(converted), len(sessions)),
        "sessions_by_site": dict(sorted(sites.items())),
        "sessions_shown_help": len(with_answer["intervention_shown"]),
        "sessions_accepted_help": len(accepted),
        "sessions_dismissed_help": len(with_answer["intervention_dismissed"]),
        "conversion_rate_accepted": _rate(len(accepted & conv_ids), len(accepted)),
        "rows_after_help": iv_rows,
    }


def markdown(summary: dict[str, Any]) -> str:
    """The "Live event log" section of a training report."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    s = summary
    sites = ", ".join(f"{k} {v}" for k, v in s["sessions_by_site"].items())
    iv = s["rows_after_help"]
    return "\n".join(
        [
            "## Live event log",
            "",
            f"{s['sessions']} sessions ({sites}), {s['events']} events, {s['rows']} rows "
            "(one per event before a purchase). "
            f"Converted (a `purchase` event): {s['converted_sessions']} sessions, "
            f"{pct(s['conversion_rate'])}.",
            "",
            f"Help: shown in {s['sessions_shown_help']} sessions, accepted in "
            f"{s['sessions_accepted_help']}, dismissed in {s['sessions_dismissed_help']} "
            f"(conversion of the sessions that accepted: {pct(s['conversion_rate_accepted'])}; "
            "descriptive, not an effect of help). Rows after help was shown / accepted / "
            f"dismissed: {iv['iv_shown']} / {iv['iv_accepted']} / {iv['iv_dismissed']}: the "
            "`iv_*` features carry the answers.",
            "",
        ]
    )
