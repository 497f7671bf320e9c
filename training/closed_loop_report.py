"""The closed-loop study's report: ``report.md`` with PNG plots, from the study's ``results.json``.

What it is for: ``python -m training.closed_loop`` writes it, to show on
known truth whether the uplift the outcome report gives can be trusted
(does its 95 % interval cover the true effect?) and how many sessions a
site needs before that interval excludes zero. Everything in it comes from
the results dict (:func:`training.closed_loop.main` builds it), so the
report can be rebuilt from ``results.json`` alone (:func:`write_report`).

Plots: ``intervals.png`` (each run's interval against its true effect,
runs sorted by their estimate, one panel per study) and ``trace.png`` (the
larger runs: the interval as sessions offered help accumulate, against the
planned sample size).

Limits: Agg backend, 100 dpi.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from training.outcomes_report import pct, points

_COVERED, _MISSED, _TRUE = "#1f77b4", "#d62728", "#2ca02c"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_intervals(studies: list[dict[str, Any]], path: Path) -> str:
    """One panel per study: every run's interval (sorted by estimate), its true effect, zero."""
    plt = _plt()
    fig, axes = plt.subplots(len(studies), 1, figsize=(9.0, 3.4 * len(studies)), squeeze=False)
    for ax, study in zip(axes[:, 0], studies, strict=True):
        runs = sorted(
            (r for r in study["runs"] if r["estimate"]["uplift"] is not None),
            key=lambda r: r["estimate"]["uplift"],
        )
        for x, r in enumerate(runs):
            e = r["estimate"]
            color = _COVERED if r["covered"] else _MISSED
            ax.plot([x, x], [100 * e["low"], 100 * e["high"]], color=color, lw=1.6)
            ax.plot(x, 100 * e["uplift"], "o", color=color, ms=3)
            ax.plot(x, 100 * r["true_effect"], "_", color=_TRUE, ms=9, mew=2)
        ax.axhline(0.0, color="#555555", lw=0.8)
        s = study["summary"]
        ax.set_title(
            f"{study['title']}: {s['runs_with_both_arms']} runs, the 95 % interval covers the "
            f"true effect in {pct(s['coverage'], 0)} (red: missed)",
            loc="left",
            fontsize=10,
        )
        ax.set_ylabel("uplift, points")
        ax.set_xticks([])
        ax.set_xlabel("runs, sorted by their estimate; green tick: the run's true effect")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path.name


def plot_trace(check: dict[str, Any], path: Path) -> str:
    """The larger runs: each one's interval as sessions offered help come in."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(check["runs"]):
        pts = [g for g in r["trace"] if g["uplift"] is not None]
        k = [int(g["key"]) for g in pts]
        c = colors[i % len(colors)]
        ax.fill_between(
            k, [100 * g["low"] for g in pts], [100 * g["high"] for g in pts], color=c, alpha=0.12
        )
        ax.plot(k, [100 * g["uplift"] for g in pts], color=c, lw=1.2, label=f"seed {r['seed']}")
    # The first points, with a handful of holdout sessions, span most of [-100, 100]:
    # the scale follows the intervals from a quarter of the planned sessions on.
    later = [
        g
        for r in check["runs"]
        for g in r["trace"]
        if g["uplift"] is not None and int(g["key"]) >= check["planned_offered"] / 4
    ]
    if later:
        ax.set_ylim(min(100 * g["low"] for g in later) - 1, max(100 * g["high"] for g in later) + 1)
    ax.set_xlim(left=0)
    ax.axhline(0.0, color="#555555", lw=0.8)
    ax.axhline(100 * check["mean_true_effect"], color=_TRUE, lw=1.2, ls="--", label="true effect")
    ax.axvline(check["planned_offered"], color="#555555", lw=1.0, ls=":")
    ax.text(
        check["planned_offered"],
        ax.get_ylim()[1],
        " sessions_needed",
        va="top",
        fontsize=8,
        color="#555555",
    )
    ax.set_xlabel("sessions offered help so far (treated + holdout)")
    ax.set_ylabel("uplift and 95 % interval, points")
    ax.set_title(f"{check['title']}: the interval as sessions come in", loc="left", fontsize=10)
    ax.legend(fontsize=8, ncol=3, loc="lower right")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _study_table(studies: list[dict[str, Any]]) -> list[str]:
    out = [
        "| study | holdout | budget | sessions per run | offered help per run (treated + holdout) "
        "| true effect (mean) | estimate (mean) | interval width (mean) | **coverage** "
        "| intervals excluding zero |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in studies:
        s, p = st["summary"], st["policy"]
        out.append(
            f"| {st['title']} | {pct(p['holdout'], 0)} | {pct(p['budget'], 0)} "
            f"| {st['sessions']:,} | {s['mean_offered']:.0f} ({s['mean_treated_n']:.0f} + "
            f"{s['mean_holdout_n']:.0f}) | {points(s['mean_true_effect'])} "
            f"| {points(s['mean_estimate'])} | {100 * s['mean_width']:.1f} pts "
            f"| **{pct(s['coverage'], 0)}** ({round(s['coverage'] * s['runs_with_both_arms'])}"
            f" of {s['runs_with_both_arms']}) | {pct(s['excludes_zero'], 0)} |"
        )
    return out


def _detail_table(studies: list[dict[str, Any]]) -> list[str]:
    out = [
        "| study | treated conversion | holdout conversion | mean p of those offered "
        "| struggling at the first decision | still there when help shows "
        "| ex-ante effect (mean p' - p) | its coverage | decisions after a dismissal "
        "| events per run | seconds per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in studies:
        s = st["summary"]
        out.append(
            f"| {st['title']} | {pct(s['treated_rate'])} | {pct(s['holdout_rate'])} "
            f"| {pct(s['mean_p_offered'])} | {pct(s['struggling_share'])} "
            f"| {pct(s['seen_share'])} | {points(s['mean_ex_ante_effect'])} "
            f"| {pct(s['coverage_ex_ante'], 0)} | {s['decisions_after_dismissal']} "
            f"| {s['events_per_run']:,.0f} | {s['seconds_per_run']:.1f} |"
        )
    return out


def _needed_lines(data: dict[str, Any]) -> list[str]:
    rows = data["needed"]
    out = [
        "| holdout | true effect | | conversion without help | sessions offered help "
        "| all sessions of the site |",
        "|---|---|---|---|---|---|",
    ]
    for n in rows:
        out.append(
            f"| {pct(n['holdout'], 0)} | {points(n['effect'])} | {n.get('label', '')} "
            f"| {pct(n['base_rate'])} "
            f"| {n['offered_sessions']:,} | {n['site_sessions']:,} |"
        )
    return out


def markdown(data: dict[str, Any], plots: dict[str, str]) -> str:
    eff = data["effects"]
    studies = data["studies"]
    default = studies[0]
    lines = [
        "# Closed loop: the uplift estimator on known truth",
        "",
        f"    {data['command']}",
        "",
        f"{data['seconds'] / 60:.1f} minutes on {data['workers']} processes; model "
        f"`{data['model']}` (the bundled one); `training/closed_loop.py` explains the loop.",
        "",
        "## What was run",
        "",
        "Simulated visitors (training/simulator.py, its default mix of ten archetypes) go event "
        "by event, interleaved by time across sessions (a new session every "
        f"{data['mean_gap_ms'] / 1000:g} s on average: a busy site), through `SessionHost.process`, "
        "the engine the shards run, with the bundled model and the policy below (holdout and "
        "budget included). Help that is shown (not holdout) goes back to its visitor, who "
        "answers it with `intervention_shown` and then `intervention_accepted` or "
        "`intervention_dismissed` (or nothing) into the same session, and whose chance to buy "
        f"moves once, at the first help seen: **{points(eff['struggling'])}** for a visitor whose "
        f"struggle episode had begun (the simulator's ground truth, not the detectors), "
        f"**{points(eff['calm'])}** for one not struggling. The same uniform draw decides the "
        "purchase with and without help, so only visitors between the two probabilities "
        "change course: those who now buy go on to a purchase, those who no longer buy leave. "
        "Holdout sessions go on exactly as written. Outcomes are read by the outcome report's "
        "own join (`training.outcomes`), the uplift and its interval by `training.uplift`.",
        "",
        "**True effect** of a run: over the sessions offered help (treated and holdout), the "
        "mean of P(buys with help) - P(buys without) given the outcome the simulator drew "
        "without help (`expected_effect`): computed from the simulator's probabilities, never "
        "from the estimator.",
        "",
        "## Coverage",
        "",
        *_study_table(studies),
        "",
        f"![intervals]({plots['intervals']})",
        "",
        "Why a second study with a larger holdout: with the default policy (help for at most "
        "10 % of sessions, a tenth of those held out) a run of this size has only "
        f"~{default['summary']['mean_holdout_n']:.0f} holdout sessions, so its interval is "
        f"~{100 * default['summary']['mean_width']:.0f} points wide and would cover almost any "
        "effect of a few points: a weak test. With half the sessions held out the intervals are "
        "narrower, so a biased estimate or a wrong true effect would show as missed runs. Both "
        "measure the same estimator on the same kind of traffic.",
        "",
        *_detail_table(studies),
        "",
        "*Ex-ante effect* is the plain mean of p' - p over the sessions offered help. It is not "
        "what treated-against-holdout conversion estimates: the policy picks visitors by "
        "behaviour that already tells who will leave (the exit-risk model's job), so a visitor "
        "it picks gains (p' - p)/(1 - p) when they would not have bought and nothing when they "
        "would have; the table shows how far the two differ here, and how often the intervals "
        "cover the ex-ante figure.",
        "",
        "*Decisions after a dismissal* counts decisions the policy made in a session after its "
        "visitor dismissed help (the policy's rule is that a dismissal ends further help; the "
        "visitor answers no later help either).",
        "",
        "## Sessions a site needs",
        "",
        "From `training.uplift.sessions_needed` (80 % power, 95 % interval), at the conversion "
        "the studies' holdouts measured together among the sessions offered help, for the true "
        "effect the studies measured and for a few others; all sessions of the site = sessions "
        "offered help / the share offered help "
        f"({pct(default['summary']['offered_share'])} under the default budget).",
        "",
        *_needed_lines(data),
        "",
    ]
    check = data.get("check")
    if check:
        firsts = check["first_excluding"]
        lines += [
            f"**Checked with {len(check['runs'])} larger runs** of {check['sessions']:,} sessions "
            f"each ({check['title']}): `sessions_needed` plans "
            f"{check['planned_offered']:,} sessions offered help; at that point "
            f"{check['excluded_at_planned']} of {len(check['runs'])} intervals exclude zero "
            "(80 % expected). Sessions offered help from which on each run's interval excludes "
            "zero for good: "
            + ", ".join("not by the end" if f is None else f"{f:,}" for f in firsts)
            + ". Their true effect: "
            f"{points(check['mean_true_effect'])}; their estimates at the end: "
            + ", ".join(points(r["estimate"]["uplift"]) for r in check["runs"])
            + ".",
            "",
            f"![the interval as sessions come in]({plots['trace']})",
            "",
        ]
    lines += [
        "## Limits",
        "",
        "* The effect sizes are an assumption (help to a stuck visitor: +5 points on a ~20 % "
        "chance to buy), not a measurement; the table above gives other sizes.",
        "* The effect comes from the first help seen and does not depend on its kind or on "
        "whether it was accepted; reactions are drawn independently of it. A visitor whose "
        "outcome flips finishes with a short plain ending (training/simulator.py "
        "`continue_journey`).",
        "* One host: the budget is the whole site's; live, each shard keeps its slice.",
        "* Sessions are independent apart from the budget they share, as the estimator "
        "assumes; real visitors come back, and a visitor's sessions are not independent.",
        "",
    ]
    return "\n".join(lines)


def write_report(data: dict[str, Any], out: Path) -> Path:
    """``report.md``, ``intervals.png``, ``trace.png`` (with a check) and ``results.json`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    plots = {"intervals": plot_intervals(data["studies"], out / "intervals.png")}
    if data.get("check"):
        plots["trace"] = plot_trace(data["check"], out / "trace.png")
    path = out / "report.md"
    path.write_text(markdown(data, plots))
    return path
