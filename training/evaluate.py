"""Evaluation report: Markdown plus PNG plots for one train-and-evaluate run.

What it is for: the evidence that an exit-risk model is good (or not), in a
form a reviewer can read in the repository: ``report.md`` with the metrics
of the booster and of both baselines measured on the same test rows, and
five small plots (ROC, precision-recall, calibration, ROC AUC by number of
events seen, feature importance).

Scores: every model outputs the class-balanced exit risk the policy
thresholds (see ``training.train``). ROC and PR AUC do not depend on that
scale; F1 / precision / recall are taken at the policy threshold on the
score; the Brier score and the calibration plot use the calibrated
probability recovered from it, ``sigmoid(logit(score) + logit(base_rate))``.

Limits: plots are drawn with matplotlib's Agg backend at 80 dpi to keep
committed PNGs small (~20-40 kB each); calibration uses 10 equal-width bins.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from training.labels import describe
from training.train import (
    CALIBRATION_FORMULA,
    MODELS,
    POLICY_THRESHOLD,
    SCORE_BALANCED,
    RunResult,
    calibrated,
)

PREFIX_BUCKETS: tuple[tuple[int, int, str], ...] = (
    (1, 1, "1"),
    (2, 2, "2"),
    (3, 4, "3-4"),
    (5, 9, "5-9"),
    (10, 19, "10-19"),
    (20, 49, "20-49"),
    (50, 10**9, "50+"),
)
_LABELS = {
    "xgboost": "XGBoost",
    "logreg": "logistic regression",
    "logreg_counts": "logistic regression on counts",
    "events_so_far": "events so far",
}
_COLORS = {
    "xgboost": "#d62728",
    "logreg": "#1f77b4",
    "logreg_counts": "#2ca02c",
    "events_so_far": "#7f7f7f",
}


def auc_by_prefix(test: pd.DataFrame, preds: dict[str, np.ndarray]) -> pd.DataFrame:
    """ROC AUC of each model over rows grouped by how many events had been seen."""
    out = []
    n = test["prefix_len"].to_numpy()
    y = test["label"].to_numpy()
    for lo, hi, name in PREFIX_BUCKETS:
        m = (n >= lo) & (n <= hi)
        row: dict[str, Any] = {
            "events_seen": name,
            "rows": int(m.sum()),
            "exit_rate": float(y[m].mean()) if m.any() else math.nan,
        }
        for k, p in preds.items():
            row[k] = (
                float(roc_auc_score(y[m], p[m]))
                if m.any() and len(np.unique(y[m])) == 2
                else math.nan
            )
        out.append(row)
    return pd.DataFrame(out)


def feature_importance(run: RunResult, top: int = 20) -> list[tuple[str, float]]:
    """Total gain per feature of the booster, largest first (features never split on are absent)."""
    scores = run.xgb_model.booster.get_score(importance_type="total_gain")
    return sorted(scores.items(), key=lambda kv: -kv[1])[:top]


def _plots(run: RunResult, out: Path, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = run.split.test["label"].to_numpy()
    files = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        files.append(name)

    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    for k in MODELS:
        fpr, tpr, _ = roc_curve(y, run.predictions[k])
        ax.plot(fpr, tpr, color=_COLORS[k], label=f"{_LABELS[k]} ({run.metrics[k]['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="#aaa")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    for k in MODELS:
        prec, rec, _ = precision_recall_curve(y, run.predictions[k])
        ax.plot(rec, prec, color=_COLORS[k], label=f"{_LABELS[k]} ({run.metrics[k]['pr_auc']:.3f})")
    ax.axhline(float(y.mean()), ls=":", color="#aaa", label=f"base rate {y.mean():.3f}")
    ax.set(xlabel="recall (exit)", ylabel="precision (exit)", title=f"Precision-recall: {title}")
    ax.legend(loc="lower left", fontsize=8)
    save(fig, "pr.png")

    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    for k in MODELS:
        # On the calibrated probability recovered from the (class-balanced) score.
        frac, mean_p = calibration_curve(y, run.calibrated(k), n_bins=10, strategy="uniform")
        ax.plot(
            mean_p,
            frac,
            "o-",
            ms=3,
            color=_COLORS[k],
            label=f"{_LABELS[k]} (Brier {run.metrics[k]['brier']:.3f})",
        )
    ax.plot([0, 1], [0, 1], ":", color="#aaa")
    # Where the policy threshold on the score falls on the probability scale (booster).
    cut = float(calibrated(np.array([POLICY_THRESHOLD]), run.base_rates["xgboost"], run.score)[0])
    ax.axvline(cut, ls="--", lw=0.8, color="#999")
    xlabel = "predicted exit probability"
    if run.score == SCORE_BALANCED:
        xlabel += " (recovered from the score)"
    ax.set(xlabel=xlabel, ylabel="observed exit rate", title=f"Calibration: {title}")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "calibration.png")

    table = auc_by_prefix(run.split.test, run.predictions)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs = np.arange(len(table))
    for k in MODELS:
        ax.plot(xs, table[k], "o-", ms=3, color=_COLORS[k], label=_LABELS[k])
    ax.set_xticks(xs, table["events_seen"])
    ax.axhline(0.5, ls=":", color="#aaa")
    ax.set(xlabel="events seen so far", ylabel="ROC AUC", title=f"AUC by events seen: {title}")
    ax.legend(fontsize=8)
    save(fig, "auc_by_events.png")

    if run.by_source:
        save(_reliability_figure(run, plt), "reliability_by_source.png")

    imp = feature_importance(run, 15)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    if imp:
        names = [n for n, _ in imp][::-1]
        vals = np.array([v for _, v in imp][::-1])
        ax.barh(names, vals / vals.sum(), color=_COLORS["xgboost"])
    ax.set(xlabel="share of total gain", title=f"XGBoost feature importance: {title}")
    ax.tick_params(axis="y", labelsize=7)
    save(fig, "importance.png")
    return files


def _reliability_figure(run: RunResult, plt: Any) -> Any:
    """One reliability diagram per source: observed exit rate against predicted, with row counts.

    Bins with fewer than 20 rows are left out of the curve (they still count in the ECE).
    """
    sources = list(run.by_source)
    fig, axes = plt.subplots(1, len(sources), figsize=(3.4 * len(sources), 3.4), squeeze=False)
    test = run.split.test
    for ax, src in zip(axes[0], sources, strict=True):
        m = (test["source"] == src).to_numpy()
        y = test["label"].to_numpy()[m]
        for k in ("xgboost", "logreg"):
            p = run.calibrated(k)[m]
            bins = np.minimum((p * 10).astype(int), 9)
            xs, ys, ns = [], [], []
            for b in np.unique(bins):
                sel = bins == b
                if sel.sum() < 20:  # a handful of rows says nothing about calibration
                    continue
                xs.append(p[sel].mean())
                ys.append(y[sel].mean())
                ns.append(int(sel.sum()))
            ece = run.by_source[src][k]["ece"]
            ax.plot(xs, ys, "o-", ms=3, color=_COLORS[k], label=f"{_LABELS[k]} (ECE {ece:.3f})")
            if k == "xgboost":
                for x, yy, n in zip(xs, ys, ns, strict=True):
                    ax.annotate(
                        str(n),
                        (x, yy),
                        fontsize=6,
                        color="#555",
                        xytext=(2, -8),
                        textcoords="offset points",
                    )
        ax.plot([0, 1], [0, 1], ":", color="#aaa")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="predicted exit probability",
            ylabel="observed exit rate",
            title=f"{src} ({int(m.sum())} test rows)",
        )
        ax.legend(loc="lower right", fontsize=7)
    return fig


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def metrics_table(run: RunResult) -> str:
    """The headline table: one line per model, same test rows."""
    t = f"{POLICY_THRESHOLD:g}"
    lines = [
        f"| model | ROC AUC (95% CI) | PR AUC | PR AUC (purchase) | F1 @ {t} | precision @ {t} "
        f"| recall @ {t} | Brier |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in MODELS:
        m = run.metrics[k]
        ci = ""
        if "roc_auc_ci_low" in m:
            ci = f" ({_fmt(m['roc_auc_ci_low'])}-{_fmt(m['roc_auc_ci_high'])})"
        lines.append(
            f"| {_LABELS[k]} | {_fmt(m['roc_auc'])}{ci} | {_fmt(m['pr_auc'])} | {_fmt(m['pr_auc_purchase'])} "
            f"| {_fmt(m['f1_at_threshold'])} "
            f"| {_fmt(m['precision_at_threshold'])} | {_fmt(m['recall_at_threshold'])} | {_fmt(m['brier'])} |"
        )
    return "\n".join(lines)


def write_report(
    run: RunResult,
    out_dir: Path,
    *,
    title: str,
    command: str = "",
    segments: dict[str, Any] | None = None,
    version: str | None = None,
) -> Path:
    """Write ``out_dir/report.md``, the plots and ``metrics.json``; return the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _plots(run, out, title)
    split = run.split.describe()
    meta = run.meta()
    lines = _report_intro(title, command, version, run.label, run.horizon_s)
    lines += _report_data(run, split)
    lines += _report_metrics(run)
    lines += _report_by_source(run)
    lines += _report_by_prefix(run)
    lines += _report_model(run, meta)
    if segments:
        lines += _report_segments(segments)
    lines += ["", "## Plots", ""]
    lines += [f"![{f[:-4]}]({f})" for f in files]
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    _write_metrics_json(out, run, meta, split)
    return path


def report_plots(report: Path) -> dict[str, bytes]:
    """The PNG plots a report written by :func:`write_report` shows: file name -> bytes.

    Read from the report's own image links, not the folder, which may hold
    plots of an earlier run (one with more sources, say).
    """
    text = report.read_text(encoding="utf-8")
    names = dict.fromkeys(re.findall(r"!\[[^\]]*\]\(([A-Za-z0-9_-]+\.png)\)", text))
    return {n: (report.parent / n).read_bytes() for n in names if (report.parent / n).is_file()}


def _report_intro(
    title: str, command: str, version: str | None, label: str, horizon_s: float
) -> list[str]:
    """The report's title, what its label means, and how it was made."""
    lines = [
        f"# Exit-risk evaluation: {title}",
        "",
        f"Label: {describe(label, horizon_s)}. One row per event, "
        "computed by `actors.core.session.Session.apply` on the recorded events; rows from "
        "a session's purchase on are excluded, and so are rows whose label the recording "
        "cannot tell (a session cut off by the end of the data). Each source is split on its "
        "own: by user where the data has users (test users are new to the model), else by "
        "session start time (oldest train, then validation for early stopping, newest test).",
        "",
    ]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    if version:
        lines += [f"Registered as model version `{version}`.", ""]
    return lines


def _report_data(run: RunResult, split: dict[str, Any]) -> list[str]:
    """The "Data" section: each part of the split, and where the data came from."""
    lines = [
        "## Data",
        "",
        "| part | sessions | rows | exit rate (rows) | exit rate (sessions) |",
        "|---|---|---|---|---|",
    ]
    for part in ("train", "valid", "test"):
        p = split[part]
        lines.append(
            f"| {part} | {p['sessions']} | {p['rows']} | {_fmt(p['exit_rate_rows'])} | {_fmt(p['exit_rate_sessions'])} |"
        )
    lines += ["", f"Source: `{json.dumps(run.data, sort_keys=True)}`", ""]
    return lines


def _score_text(run: RunResult) -> str:
    """What the models' scores are (class-balanced or calibrated) and how each metric reads them."""
    if run.score == SCORE_BALANCED:
        cut = calibrated(np.array([POLICY_THRESHOLD]), run.base_rates["xgboost"])[0]
        score_text = (
            "Scores: every model outputs the class-balanced exit risk (trained with the classes "
            "re-weighted to equal total weight, no prior correction): 0.5 = the exit odds of an "
            f"average training row, {POLICY_THRESHOLD} = three times those odds. The policy "
            f"thresholds this score, so F1, precision and recall are taken on it at {POLICY_THRESHOLD}. "
            "The Brier score and the calibration plot use the calibrated probability recovered "
            f"from the score, `{CALIBRATION_FORMULA}`, with each model's training base rate "
            f"(XGBoost: {_fmt(run.base_rates['xgboost'])}; baselines, fitted on train + validation: "
            f"{_fmt(run.base_rates['logreg'])}); for XGBoost the threshold {POLICY_THRESHOLD} is "
            f"a probability of {_fmt(float(cut))}. ROC AUC and PR AUC are the same on either scale."
        )
    else:
        score_text = (
            "Scores: calibrated probabilities of the label (no class re-weighting); every metric "
            f"uses them as they are, and F1, precision and recall are at the policy's default "
            f"risk floor, {POLICY_THRESHOLD:g}."
        )
    return score_text


def _report_metrics(run: RunResult) -> list[str]:
    """The "Test metrics" section: the table of every model on the same test rows."""
    score_text = _score_text(run)
    return [
        "## Test metrics (same rows for every model)",
        "",
        metrics_table(run),
        "",
        score_text,
        "",
        f"Base rate of the exit label on the test rows: {_fmt(run.metrics['xgboost']['base_rate'])}. "
        "PR AUC is for the exit class, so it starts at the base rate; PR AUC (purchase) ranks the "
        "other way round and starts at one minus the base rate. F1, precision and recall are of the "
        "exit class; the ROC AUC interval is a 95% bootstrap over test sessions.",
    ]


def _ci(m: dict[str, Any], key: str) -> str:
    low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return f" ({_fmt(low)}-{_fmt(high)})" if low is not None else ""


def _report_by_source(run: RunResult) -> list[str]:
    """Each source's held-back rows on their own: discrimination and calibration."""
    if not run.by_source:
        return []
    lines = [
        "",
        "## By source (each source's held-back rows on their own)",
        "",
        "| source | rows | exit rate | model | ROC AUC (95% CI) | ECE (95% CI) | Brier |",
        "|---|---|---|---|---|---|---|",
    ]
    for src, models in run.by_source.items():
        for k in MODELS:
            m = models[k]
            lines.append(
                f"| {src} | {m['rows']} | {_fmt(m['base_rate'])} | {_LABELS[k]} "
                f"| {_fmt(m['roc_auc'])}{_ci(m, 'roc_auc')} | {_fmt(m['ece'])}{_ci(m, 'ece')} "
                f"| {_fmt(m['brier'])} |"
            )
    lines += [
        "",
        "ECE: expected calibration error, the row-weighted gap between predicted and observed "
        "exit rate over 10 equal-width bins; intervals are 95% bootstraps over test sessions "
        "(the ECE's is biased upwards: resampling adds noise to every bin).",
    ]
    return lines


def _report_by_prefix(run: RunResult) -> list[str]:
    """The ROC AUC section by how many events of the session had been seen."""
    by_prefix = auc_by_prefix(run.split.test, run.predictions)
    lines = [
        "",
        "## ROC AUC by number of events seen",
        "",
        "| events seen | rows | exit rate | " + " | ".join(_LABELS[k] for k in MODELS) + " |",
        "|---|---|---|" + "---|" * len(MODELS),
    ]
    for _, r in by_prefix.iterrows():
        lines.append(
            f"| {r['events_seen']} | {r['rows']} | {_fmt(r['exit_rate'])} | "
            + " | ".join(_fmt(r[k]) for k in MODELS)
            + " |"
        )
    return lines


def _report_model(run: RunResult, meta: dict[str, Any]) -> list[str]:
    """The "Model" section: schema, trees, score, hyperparameters and the top features."""
    lines = [
        "",
        "## Model",
        "",
        f"- feature schema `{meta['feature_schema']}`, {len(meta['feature_names'])} features",
        f"- trees kept by early stopping: {meta['best_iteration'] + 1} (of at most {run.params.num_boost_round})",
        f"- output: `{meta['score']}` score; class balance: scale_pos_weight "
        f"{meta['scale_pos_weight']:.4f}, training base rate {meta['base_rate']:.4f}"
        + (
            f"; calibrated probability: `{CALIBRATION_FORMULA}`"
            if run.score == SCORE_BALANCED
            else ""
        ),
        f"- hyperparameters: `{json.dumps(meta['params'], sort_keys=True)}`",
        "",
        "Top features by total gain:",
        "",
    ]
    for name, gain in feature_importance(run, 10):
        lines.append(f"- `{name}`: {gain:.1f}")
    return lines


def _report_segments(segments: dict[str, Any]) -> list[str]:
    """The "Segments" section: the k-means segments with their sizes and exit rates."""
    lines = [
        "",
        "## Segments",
        "",
        f"K-means over {len(segments['features'])} session features, k = {segments['k']} "
        f"chosen by the largest mean silhouette over k = {', '.join(segments['scores'])} "
        f"(scores {json.dumps(segments['scores'])}).",
        "",
        "| segment | sessions | exit rate |",
        "|---|---|---|",
    ]
    for name, size, er in zip(
        segments["names"], segments["sizes"], segments["exit_rate"], strict=True
    ):
        lines.append(f"| {name} | {size} | {_fmt(er)} |")
    return lines


def _write_metrics_json(
    out: Path, run: RunResult, meta: dict[str, Any], split: dict[str, Any]
) -> None:
    """``metrics.json``: the numbers of the report, for tools."""
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "score": meta["score"],
                "base_rate": meta["base_rate"],
                "calibration": meta.get("calibration"),
                "label": meta["label"],
                "metrics": meta["metrics"],
                "metrics_by_source": meta["metrics_by_source"],
                "split": split,
                "data": run.data,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )


# -- the shipped model against the policy threshold ----------------------------------------------
def scripted_scores(scorer: Any, start_ms: int = 1_732_300_000_000) -> dict[str, pd.DataFrame]:
    """Per-event scores of each ``training.simulator.scripted`` journey under ``scorer``."""
    from actors.core.events import validate_event
    from actors.core.session import Session
    from training.simulator import SCRIPTED_KINDS, scripted

    out = {}
    for kind in SCRIPTED_KINDS:
        events = scripted(kind, f"s-{kind}", start_ms)
        session = Session(f"s-{kind}")
        rows = [session.apply(validate_event(e, now_ms=e["ts"])) for e in events]
        out[kind] = pd.DataFrame(
            {
                "event": range(1, len(events) + 1),
                "type": [e["type"] for e in events],
                "score": np.asarray(scorer(rows), dtype=np.float64),
            }
        )
    return out


LABEL_CANDIDATES: tuple[tuple[str, float], ...] = (
    ("exit_soon", 120.0),
    ("exit_soon", 300.0),
    ("exit_soon", 600.0),
    ("no_purchase", 0.0),
)


def label_comparison(df: pd.DataFrame, params: Any = None) -> str:
    """A report section: each candidate label trained and measured on the same split, per source.

    For each definition and source: the label's base rate on the held-back
    rows, how far the booster's calibrated probabilities spread (10th to
    90th percentile: a threshold on a probability that barely moves means
    little), ROC AUC and ECE. This is the evidence behind the chosen label.
    """
    from training.labels import describe
    from training.train import train_and_evaluate

    lines = [
        "## The label: measured, then chosen",
        "",
        "Each candidate trained on the same rows and split (same booster settings); "
        "figures on each source's held-back rows.",
        "",
        "| label | source | exit rate | risk p10-p90 | XGBoost ROC AUC | ECE |",
        "|---|---|---|---|---|---|",
    ]
    for definition, horizon in LABEL_CANDIDATES:
        run = train_and_evaluate(
            df, name=definition, params=params, bootstrap=0, label=definition, horizon_s=horizon
        )
        name = describe(definition, horizon).split(" (")[0].replace("1 = ", "")
        test = run.split.test
        for src, models in run.by_source.items():
            m = models["xgboost"]
            p = run.predictions["xgboost"][(test["source"] == src).to_numpy()]
            lo, hi = np.percentile(p, [10, 90])
            lines.append(
                f"| {name} | {src} | {_fmt(m['base_rate'])} | {lo:.2f}-{hi:.2f} "
                f"| {_fmt(m['roc_auc'])} | {_fmt(m['ece'])} |"
            )
    return "\n".join(lines) + "\n"


def held_back(sessions: list, test_frac: float = 0.2) -> list:
    """The sessions a model trained with :func:`training.train.source_split` never saw.

    Users in the test part by the same hash where the data has users, else
    the newest ``test_frac`` of sessions by start time.
    """
    from training.train import _user_part

    if sessions and "user_id" in sessions[0].extra:
        part = _user_part(pd.Series([s.extra["user_id"] for s in sessions]), test_frac, 0.15)
        return [s for s, k in zip(sessions, part, strict=True) if k == 2]
    ordered = sorted(sessions, key=lambda s: (s.start_ms, s.sid))
    return ordered[len(ordered) - max(1, int(round(len(ordered) * test_frac))) :]


def _wilson_text(k: int, n: int) -> str:
    from training.uplift import wilson

    if not n:
        return "n/a"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} % ({100 * lo:.1f}-{100 * hi:.1f})"


def _replay_lines(name: str, summary: dict[str, Any]) -> list[str]:
    """One table row per group of a replay summary: sessions offered help, with a Wilson interval."""
    rows = [("all sessions", summary["sessions"], summary["sessions_offered_help"])]
    for key, title in (("converted", "buyers"), ("not_converted", "non-buyers")):
        part = summary["by_outcome"].get(key)
        if part:
            rows.append((title, part["sessions"], part["offered_help"]))
    for key in ("struggling", "calm"):
        part = summary.get("by_struggle", {}).get(key)
        if part:
            rows.append((f"{key} (simulator truth)", part["sessions"], part["offered_help"]))
    return [f"| {name} | {title} | {n} | {_wilson_text(k, n)} |" for title, n, k in rows]


def write_bundled_report(
    out_dir: Path, scorer: Any = None, *, journeys: int = 3000, seed: int = 3
) -> Path:
    """``out_dir/report.md``: the shipped model's held-back figures and whom its policy helps.

    Replays (``training.replay``, the default rules and budget) run on data
    the model did not train on: the simulator with another seed, Taobao's
    test users, Diginetica's newest sessions.
    """
    from actors.model.scoring import Scorer
    from training.dataset import from_journeys
    from training.loaders import load_diginetica, load_taobao
    from training.replay import replay, summary
    from training.simulator import simulate

    scorer = scorer or Scorer.bundled()
    meta = scorer.meta
    lines = [
        "# Whom to help: the shipped exit-risk model and its policy on held-back data",
        "",
        f"Model `{scorer.version}`, {meta['best_iteration'] + 1} trees; label: {meta.get('label')}; "
        f"score `{meta.get('score')}` (a calibrated probability). Reproduce with "
        '`python -c "from pathlib import Path; from training.evaluate import write_bundled_report '
        "as w; w(Path('reports/bundled'))\"` (rebuild the model first: training/README.md).",
        "",
        "## Exit risk on each source's held-back rows (same rows for every model)",
        "",
        "| source | model | ROC AUC (95% CI) | ECE (95% CI) | Brier |",
        "|---|---|---|---|---|",
    ]
    for src, models in meta.get("metrics_by_source", {}).items():
        for k in MODELS:
            m = models.get(k)
            if m is None:
                continue
            lines.append(
                f"| {src} | {_LABELS.get(k, k)} | {_fmt(m['roc_auc'])}{_ci(m, 'roc_auc')} "
                f"| {_fmt(m.get('ece', math.nan))}{_ci(m, 'ece')} | {_fmt(m['brier'])} |"
            )
    runs = {
        f"simulator (seed {seed})": from_journeys(simulate(journeys, seed=seed)),
        "Taobao (test users)": held_back(load_taobao()),
        "Diginetica (newest 20 %)": held_back(load_diginetica()),
    }
    lines += [
        "",
        "## Replayed with the default rules and a 10 % budget: sessions offered help",
        "",
        "Every event in time order through `SessionHost` (the shards' code), the budget "
        "included; intervals are Wilson 95 %. Buyers: sessions with a purchase (offered help "
        "before it).",
        "",
        "| data | sessions | n | offered help (95% CI) |",
        "|---|---|---|---|",
    ]
    extra = []
    for name, sessions in runs.items():
        s = summary(replay(sessions, scorer))
        lines += _replay_lines(name, s)
        if "offered_to_struggling_share" in s:
            extra.append(
                f"- {name}: {100 * s['offered_to_struggling_share']:.1f} % of the sessions offered "
                "help were struggling (simulator truth: a struggle episode was written into the journey)"
            )
        extra.append(f"- {name}: decisions by kind {json.dumps(s['decisions_by_kind'])}")
    lines += ["", *extra, ""]
    lines += ["## Scripted journeys (`training.simulator.scripted`), risk after every event", ""]
    for kind, df in scripted_scores(scorer).items():
        lines += [
            f"**{kind}**: max {_fmt(df['score'].max())}",
            "",
            "| event | " + " | ".join(str(e) for e in df["event"]) + " |",
            "|---|" + "---|" * len(df),
            "| type | " + " | ".join(df["type"]) + " |",
            "| risk | " + " | ".join(f"{v:.2f}" for v in df["score"]) + " |",
            "",
        ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
