"""The outcome report: ``outcomes.md`` with PNG plots, and ``outcomes.json``, from :func:`training.outcomes.aggregate`.

What it is for: ``lifeline report outcomes`` writes it, so an operator can
see whether the help Lifeline offers changes conversion: treated against
holdout conversion with intervals, by intervention kind, site, segment,
model and day, and what visitors did with the help. Everything in it comes
from the JSON (the same dicts the console's Outcomes page reads), so the
report can be rebuilt from ``outcomes.json`` alone (:func:`write_report`).

Plots: ``uplift.png`` (uplift in percentage points with its interval, one
row per group, a panel per breakdown), ``daily.png`` (treated and holdout
conversion per day with Wilson intervals, and the sessions behind them),
``reactions.png`` (accepted, dismissed, ignored, unseen per kind). A group
without treated or holdout sessions says "no data" instead of a point.

Limits: Agg backend, 100 dpi; a breakdown with more than ``MAX_ROWS``
groups plots its largest ones (the tables list them all).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from training.outcomes import DIMENSIONS, REACTIONS
from training.uplift import sessions_needed, wilson

MAX_ROWS = 12  # groups per breakdown in the plots
FEW = 10  # an arm with fewer sessions than this is drawn pale: its interval is mostly width
EFFECTS = (0.02, 0.05)  # uplifts the sample-size line speaks of
_TITLES = {
    "kind": "intervention kind",
    "site": "site",
    "segment": "segment",
    "model": "model version",
    "day": "day (UTC)",
}
_UP, _DOWN, _UNSURE = "#2ca02c", "#d62728", "#555555"
_TREATED, _HOLDOUT = "#1f77b4", "#ff7f0e"
_REACTION_COLORS = {
    "accepted": "#2ca02c",
    "dismissed": "#d62728",
    "ignored": "#9e9e9e",
    "unseen": "#dcdcdc",
}


# -- numbers as words ---------------------------------------------------------------------------
def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def points(x: float | None) -> str:
    """A difference of rates in percentage points, signed."""
    return "n/a" if x is None else f"{100 * x:+.1f} pts"


def no_data(g: dict[str, Any]) -> str | None:
    """Why a group has no uplift, or None when it has one."""
    if g["treated_n"] == 0 and g["holdout_n"] == 0:
        return "no data"
    if g["holdout_n"] == 0:
        return "no data: no holdout sessions"
    if g["treated_n"] == 0:
        return "no data: no treated sessions"
    return None


def uplift_text(g: dict[str, Any]) -> str:
    missing = no_data(g)
    if missing:
        return missing
    return f"{points(g['uplift'])} ({100 * g['low']:+.1f} to {100 * g['high']:+.1f})"


def arm_text(conversions: int, n: int, rate: float | None) -> str:
    return f"{conversions:,} / {n:,} ({pct(rate)})" if n else "0 sessions"


def verdict(g: dict[str, Any]) -> str:
    """What the totals say, in one sentence."""
    missing = no_data(g)
    if missing:
        return f"{missing[0].upper()}{missing[1:]}: conversion cannot be compared yet."
    level = f"{100 * g['level']:.0f}%"
    if g["excludes_zero"] and g["uplift"] > 0:
        return f"Sessions offered help converted more than holdout sessions; the {level} interval excludes zero."
    if g["excludes_zero"]:
        return f"Sessions offered help converted *less* than holdout sessions; the {level} interval excludes zero."
    return (
        f"The {level} interval includes zero: these sessions cannot tell yet whether the help "
        "raises conversion or lowers it."
    )


def sample_size_text(g: dict[str, Any]) -> str:
    """How many sessions with a decision it takes to see an uplift of EFFECTS, at this base rate."""
    n = g["sessions"]
    if not n or not g["holdout_n"] or g["holdout_n"] == n:
        return ""
    share = g["holdout_n"] / n
    base = g["holdout_rate"]
    parts = [
        f"{points(e)}, about {sessions_needed(base, e, share, g['level']):,}"
        for e in EFFECTS
        if 0 < base + e < 1
    ]
    if not parts:
        return ""
    return (
        "Sessions with a decision it takes for a true uplift to show as an interval that excludes "
        f"zero 80% of the time, at the holdout's conversion of {pct(base)} and its "
        f"{pct(share, 0)} share: {'; '.join(parts)}. This report has {n:,}."
    )


# -- plots --------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _no_data(plt: Any, path: Path, title: str) -> str:
    """A plot with nothing to show says so, rather than drawing empty axes."""
    fig, ax = plt.subplots(figsize=(6.0, 1.4))
    ax.set_axis_off()
    ax.set_title(title, loc="left", fontsize=10)
    ax.text(0.5, 0.4, "no data", ha="center", va="center", color=_UNSURE, style="italic")
    return _save(plt, fig, path)


def _label(g: dict[str, Any], width: int = 22) -> str:
    key = g["key"] if len(g["key"]) <= width else g["key"][: width - 1] + "…"
    return f"{key}\n{g['treated_n']:,} treated · {g['holdout_n']:,} holdout"


def plot_uplift(data: dict[str, Any], path: Path) -> str:
    """One panel per breakdown (and the totals): uplift and its interval per group."""
    plt = _plt()
    panels = [("all sessions", [data["totals"]])] + [
        (_TITLES[d], data["by"][d][:MAX_ROWS]) for d in DIMENSIONS if d != "day"
    ]
    heights = [max(1, len(groups)) for _, groups in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(8.5, 1.3 + 0.62 * sum(heights) + 0.35 * len(panels)),
        sharex=True,
        gridspec_kw={"height_ratios": heights},
        layout="constrained",
    )
    level = f"{100 * data['level']:.0f}%"
    for ax, (title, groups) in zip(axes, panels, strict=True):
        ax.axvline(0, color="#999", lw=1.2, zorder=0)
        if not groups:
            ax.text(0, 0, "no data", ha="center", va="center", color=_UNSURE, style="italic")
            ax.set_yticks([])
            ax.set_ylim(-0.6, 0.6)
        for i, g in enumerate(groups):
            y = -i
            missing = no_data(g)
            if missing:
                ax.text(0, y, f"  {missing}", ha="left", va="center", color=_UNSURE, style="italic")
                continue
            up, lo, hi = 100 * g["uplift"], 100 * g["low"], 100 * g["high"]
            color = _UNSURE if not g["excludes_zero"] else (_UP if up > 0 else _DOWN)
            alpha = 0.35 if min(g["treated_n"], g["holdout_n"]) < FEW else 1.0
            ax.plot([lo, hi], [y, y], color=color, lw=2.5, solid_capstyle="butt", alpha=alpha)
            ax.plot([lo, lo], [y - 0.18, y + 0.18], color=color, lw=1.5, alpha=alpha)
            ax.plot([hi, hi], [y - 0.18, y + 0.18], color=color, lw=1.5, alpha=alpha)
            ax.plot(up, y, "o", color=color, ms=7, alpha=alpha)
            ax.text(
                1.01,
                y,
                f"{pct(g['treated_rate'])} vs {pct(g['holdout_rate'])}",
                transform=ax.get_yaxis_transform(),
                va="center",
                fontsize=8,
                color="#333",
            )
            ax.annotate(
                f"{up:+.1f}" if abs(up) >= 0.05 else "0.0",
                (up, y),
                xytext=(0, 7),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color=color,
            )
        if groups:
            ax.set_yticks([-i for i in range(len(groups))])
            ax.set_yticklabels([_label(g) for g in groups], fontsize=8)
            ax.set_ylim(-len(groups) + 0.4, 0.6)
        ax.set_title(f"by {title}" if title != "all sessions" else title, loc="left", fontsize=10)
        ax.grid(axis="x", color="#eee")
    axes[-1].set_xlabel("uplift, percentage points")
    lo = min([-5.0] + [100 * g["low"] for _, gs in panels for g in gs if g["low"] is not None])
    hi = max([5.0] + [100 * g["high"] for _, gs in panels for g in gs if g["high"] is not None])
    axes[-1].set_xlim(lo - 6, hi + 6)
    fig.suptitle(
        f"Does the help change conversion? Uplift: treated minus holdout conversion, {level} "
        "interval\ngreen / red: the interval excludes zero (more / less conversion); grey: no "
        f"evidence either way;\npale: fewer than {FEW} sessions in an arm; right: treated vs "
        "holdout conversion",
        x=0.01,
        ha="left",
        fontsize=9.5,
    )
    return _save(plt, fig, path)


def plot_daily(data: dict[str, Any], path: Path) -> str:
    """Conversion of treated and holdout sessions per day, with the sessions behind each point."""
    plt = _plt()
    days = data["by"]["day"]
    if not days:
        return _no_data(plt, path, "Conversion per day, treated and holdout")
    fig, (ax, bx) = plt.subplots(
        2,
        1,
        figsize=(max(6.0, 1.0 + 0.55 * len(days)), 5.2),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1.3]},
        layout="constrained",
    )
    x = list(range(len(days)))
    for arm, color, dx in (("treated", _TREATED, -0.08), ("holdout", _HOLDOUT, 0.08)):
        xs, ys, err_lo, err_hi = [], [], [], []
        for i, g in enumerate(days):
            n, c = g[f"{arm}_n"], g[f"{arm}_conversions"]
            if not n:
                continue
            lo, hi = wilson(c, n, data["level"])
            rate = c / n
            xs.append(i + dx)
            ys.append(100 * rate)
            # max: at a rate of 0 or 1 the interval's end may round past the rate itself
            err_lo.append(max(0.0, 100 * (rate - lo)))
            err_hi.append(max(0.0, 100 * (hi - rate)))
        ax.errorbar(
            xs,
            ys,
            yerr=[err_lo, err_hi],
            fmt="o-" if len(xs) > 1 else "o",
            color=color,
            capsize=3,
            label=f"{arm} sessions",
        )
        width = 0.38
        bx.bar(
            [i + (-width / 2 if arm == "treated" else width / 2) for i in x],
            [g[f"{arm}_n"] for g in days],
            width=width,
            color=color,
        )
    ax.set_ylabel("converted after the first decision (%)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="y", color="#eee")
    fig.suptitle(
        f"Conversion per day, treated and holdout ({100 * data['level']:.0f}% Wilson intervals)",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    bx.set_ylabel("sessions")
    bx.set_title("sessions with a decision", loc="left", fontsize=9)
    bx.set_xticks(x)
    bx.set_xticklabels([g["key"] for g in days], rotation=30 if len(days) > 6 else 0, fontsize=8)
    bx.grid(axis="y", color="#eee")
    return _save(plt, fig, path)


def plot_reactions(data: dict[str, Any], path: Path) -> str:
    """What treated visitors did with the help, per kind: shares of accepted ... unseen."""
    plt = _plt()
    groups = [data["totals"] | {"key": "all kinds"}] + data["by"]["kind"][:MAX_ROWS]
    fig, ax = plt.subplots(figsize=(8.5, 1.0 + 0.5 * len(groups)))
    for i, g in enumerate(groups):
        total = sum(g["reactions"].values())
        left = 0.0
        if not total:
            ax.text(0.01, -i, "no data: no treated sessions", va="center", style="italic")
            continue
        for name in REACTIONS:
            share = g["reactions"][name] / total
            ax.barh(-i, share, left=left, color=_REACTION_COLORS[name], edgecolor="white")
            if share >= 0.06:
                ax.text(
                    left + share / 2,
                    -i,
                    f"{g['reactions'][name]:,}",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
            left += share
    ax.set_yticks([-i for i in range(len(groups))])
    ax.set_yticklabels(
        [f"{g['key']}\n{sum(g['reactions'].values()):,} treated" for g in groups], fontsize=8
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(-len(groups) + 0.5, 0.5)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    handles = [plt.Rectangle((0, 0), 1, 1, color=_REACTION_COLORS[n]) for n in REACTIONS]
    ax.legend(
        handles,
        REACTIONS,
        ncol=4,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        fontsize=8,
        frameon=False,
    )
    ax.set_xlabel("share of treated sessions (numbers: sessions)")
    return _save(plt, fig, path)


# -- Markdown -----------------------------------------------------------------------------------
def _table(dim: str, groups: list[dict[str, Any]]) -> list[str]:
    if not groups:
        return ["no data", ""]
    head = (
        f"| {dim} | sessions | treated: converted / n | holdout: converted / n | uplift "
        "(interval) | accepted | dismissed | ignored | unseen | chatted: converted / n "
        "| chats resolved by the assistant | chats handed off |"
    )
    lines = [head, "|" + "---|" * 12]
    for g in groups:
        r, ch = g["reactions"], g["chats"]
        lines.append(
            f"| {g['key']} | {g['sessions']:,} "
            f"| {arm_text(g['treated_conversions'], g['treated_n'], g['treated_rate'])} "
            f"| {arm_text(g['holdout_conversions'], g['holdout_n'], g['holdout_rate'])} "
            f"| {uplift_text(g)} | {r['accepted']} | {r['dismissed']} | {r['ignored']} "
            f"| {r['unseen']} | {arm_text(ch['converted'], ch['sessions'], ch['rate'])} "
            f"| {ch['resolved_by_assistant']} | {ch['handed_off']} |"
        )
    return [*lines, ""]


def _goals(g: dict[str, Any]) -> list[str]:
    if not g["goals"]:
        return ["No session converted after a decision.", ""]
    lines = ["| goal | treated sessions | holdout sessions |", "|---|---|---|"]
    lines += [f"| {k} | {v['treated']} | {v['holdout']} |" for k, v in g["goals"].items()]
    return [*lines, ""]


def _source(src: dict[str, Any]) -> list[str]:
    parts = []
    if src.get("since_ms") is not None:
        since = datetime.fromtimestamp(src["since_ms"] / 1000.0, tz=timezone.utc)
        parts.append(f"sessions whose first decision came after {since:%Y-%m-%d %H:%M} UTC")
    if src.get("site"):
        parts.append(f"site `{src['site']}`")
    if src.get("prefix"):
        parts.append(f"key prefix `{src['prefix']}`")
    if "decisions" in src:
        parts.append(f"{src['decisions']:,} decisions read")
    if src.get("sessions_expired"):
        parts.append(f"{src['sessions_expired']:,} sessions left out (records expired)")
    return [f"Data: {'; '.join(parts)}.", ""] if parts else []


def markdown(data: dict[str, Any], plots: dict[str, str], command: str | None = None) -> str:
    t = data["totals"]
    level = f"{100 * data['level']:.0f}%"
    lines = ["# Outcomes: conversion of sessions offered help against the holdout", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += _source(data.get("source", {}))
    lines += [
        f"**{t['sessions']:,} sessions** got a decision: {t['treated_n']:,} were offered help "
        f"(treated), {t['holdout_n']:,} were in the holdout (decided, not shown). Converted after "
        f"the first decision: treated {arm_text(t['treated_conversions'], t['treated_n'], t['treated_rate'])}, "
        f"holdout {arm_text(t['holdout_conversions'], t['holdout_n'], t['holdout_rate'])}. "
        f"**Uplift {uplift_text(t)}**, {level} interval.",
        "",
        verdict(t),
        "",
    ]
    needed = sample_size_text(t)
    if needed:
        lines += [needed, ""]
    for name, caption in (
        ("uplift", "Uplift per group"),
        ("daily", "Conversion per day"),
        ("reactions", "What visitors did with the help"),
    ):
        if name in plots:
            lines += [f"![{caption}]({plots[name]})", ""]
    lines += ["## Conversions by goal", "", *_goals(t)]
    for dim in DIMENSIONS:
        lines += [f"## By {_TITLES[dim]}", "", *_table(dim, data["by"][dim])]
    lines += [
        "## How to read this",
        "",
        "A session is *treated* when its help was sent to the page, *holdout* when it was "
        "decided and recorded but not shown (a fixed share of sessions, drawn by session id). "
        "Each session counts once, in the group of its first decision. *Converted*: a purchase "
        "or one of the site's goals after that decision. *Uplift*: treated minus holdout "
        f"conversion, with Newcombe's {level} interval (training/uplift.py); a small group has "
        "a wide interval, and an interval that includes zero means no evidence either way. "
        "With many groups, some intervals exclude zero by chance alone (about one group in "
        f"{1 / (1 - data['level']):.0f} where the help changes nothing): trust a group's result "
        "when it holds over more days. "
        "Reactions count treated sessions by the most that happened: accepted, dismissed, "
        "ignored (shown, no answer), unseen (the page never confirmed showing it). *Chatted*: "
        "treated sessions whose visitor opened the help chat from an offer, and how many of "
        "them converted (compare with the holdout's rate; a chat's visitors chose to ask, so "
        "the comparison is not a randomised one). The numbers "
        "are in `outcomes.json` (schema: training/outcomes.py).",
        "",
    ]
    return "\n".join(lines)


def write_report(data: dict[str, Any], out: Path, command: str | None = None) -> Path:
    """Write ``out/outcomes.json``, the plots and ``out/outcomes.md``; returns the Markdown's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "outcomes.json").write_text(json.dumps(data, indent=1) + "\n")
    plots = {
        "uplift": plot_uplift(data, out / "uplift.png"),
        "daily": plot_daily(data, out / "daily.png"),
        "reactions": plot_reactions(data, out / "reactions.png"),
    }
    path = out / "outcomes.md"
    path.write_text(markdown(data, plots, command))
    return path
