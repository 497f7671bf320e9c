"""Evaluation report: Markdown plus PNG plots for one train-and-evaluate run.

What it is for: the evidence that an exit-risk model is good (or not), in a
form a reviewer can read in the repository: ``report.md`` with the metrics
of the booster and of both baselines measured on the same test rows, and
five small plots (ROC, precision-recall, calibration, ROC AUC by number of
events seen, feature importance).

Limits: plots are drawn with matplotlib's Agg backend at 80 dpi to keep
committed PNGs small (~20-40 kB each); calibration uses 10 equal-width bins.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from training.train import MODELS, POLICY_THRESHOLD, RunResult

PREFIX_BUCKETS: tuple[tuple[int, int, str], ...] = (
    (1, 1, "1"),
    (2, 2, "2"),
    (3, 4, "3-4"),
    (5, 9, "5-9"),
    (10, 19, "10-19"),
    (20, 49, "20-49"),
    (50, 10**9, "50+"),
)
_LABELS = {"xgboost": "XGBoost", "logreg": "logistic regression", "events_so_far": "events so far"}
_COLORS = {"xgboost": "#d62728", "logreg": "#1f77b4", "events_so_far": "#7f7f7f"}


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
        frac, mean_p = calibration_curve(y, run.predictions[k], n_bins=10, strategy="uniform")
        ax.plot(
            mean_p,
            frac,
            "o-",
            ms=3,
            color=_COLORS[k],
            label=f"{_LABELS[k]} (Brier {run.metrics[k]['brier']:.3f})",
        )
    ax.plot([0, 1], [0, 1], ":", color="#aaa")
    ax.axvline(POLICY_THRESHOLD, ls="--", lw=0.8, color="#999")
    ax.set(xlabel="predicted exit risk", ylabel="observed exit rate", title=f"Calibration: {title}")
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


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def metrics_table(run: RunResult) -> str:
    """The headline table: one line per model, same test rows."""
    lines = [
        "| model | ROC AUC (95% CI) | PR AUC | PR AUC (purchase) | F1 @ 0.75 | precision @ 0.75 | recall @ 0.75 | Brier |",
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
    by_prefix = auc_by_prefix(run.split.test, run.predictions)
    meta = run.meta()
    lines = [
        f"# Exit-risk evaluation: {title}",
        "",
        "Label: 1 = the session ended without a purchase (exit). One row per event, "
        "computed by `actors.session.Session.apply` on the recorded events; rows from "
        "a session's purchase on are excluded. Sessions are split by start time "
        "(oldest train, then validation for early stopping, newest test).",
        "",
    ]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    if version:
        lines += [f"Registered as model version `{version}`.", ""]
    lines += [
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
    lines += [
        "## Test metrics (same rows for every model)",
        "",
        metrics_table(run),
        "",
        f"Base rate of the exit label on the test rows: {_fmt(run.metrics['xgboost']['base_rate'])}. "
        "PR AUC is for the exit class, so it starts at the base rate; PR AUC (purchase) ranks the "
        "other way round and starts at one minus the base rate. F1, precision and recall (of the exit class) "
        f"use the policy threshold {POLICY_THRESHOLD}; the ROC AUC interval is a 95% bootstrap over test sessions.",
        "",
        "## ROC AUC by number of events seen",
        "",
        "| events seen | rows | exit rate | XGBoost | logistic regression | events so far |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in by_prefix.iterrows():
        lines.append(
            f"| {r['events_seen']} | {r['rows']} | {_fmt(r['exit_rate'])} | {_fmt(r['xgboost'])} "
            f"| {_fmt(r['logreg'])} | {_fmt(r['events_so_far'])} |"
        )
    lines += ["", "## Model", ""]
    lines += [
        f"- feature schema `{meta['feature_schema']}`, {len(meta['feature_names'])} features",
        f"- trees kept by early stopping: {meta['best_iteration'] + 1} (of at most {run.params.num_boost_round})",
        f"- class balance: scale_pos_weight {meta['scale_pos_weight']:.4f}, then the prior correction "
        "(base score shifted by -log(scale_pos_weight)) so the output is a calibrated probability",
        f"- hyperparameters: `{json.dumps(meta['params'], sort_keys=True)}`",
        "",
        "Top features by total gain:",
        "",
    ]
    for name, gain in feature_importance(run, 10):
        lines.append(f"- `{name}`: {gain:.1f}")
    if segments:
        lines += [
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
    lines += ["", "## Plots", ""]
    lines += [f"![{f[:-4]}]({f})" for f in files]
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "metrics.json").write_text(
        json.dumps(
            {"metrics": meta["metrics"], "split": split, "data": run.data}, indent=1, default=str
        )
        + "\n"
    )
    return path
