"""What a visitor's memory across visits is worth, measured on real click data with users (Taobao).

The Taobao sample is the only data here with users across sessions (a new
session after 30 minutes without an event; 2,283 of its 41,148 users have two
or more). Every visitor's sessions are replayed in time order through the live
code: :class:`actors.core.session.Session` for each session, then
:func:`actors.core.profile.summary_of` and :func:`actors.core.profile.update`
for their profile, exactly as the shards build it when a session ends.

1. **Recommendations** (:func:`recommender_eval`): for each visitor with two
   sessions or more, their last session is held out; the session kNN is fitted
   on every other session (the earlier sessions of held-out visitors included, as
   the live event log would hold them). For each of the held-out session's first
   ``first_clicks`` clicks (consecutive repeats collapsed), Recall@20 of the
   next click from the visit's clicks so far, with and without the profile's
   items before them (``history_items``, as :class:`serve.apps.recommender.RecommenderService`
   does), against popularity and the profile's own items (most recent first,
   then popularity). 95 % intervals: percentile bootstrap over visitors.
2. **Profile size** (:func:`profile_sizes`): the packed profile of every
   visitor after all their sessions: median, 99th percentile and max bytes.
3. **Exit-risk model** (:func:`model_eval`): the training rows
   (:func:`training.dataset.rows_frame`, exit-soon labels) with and without the
   returning features of :data:`actors.core.features.RETURNING_FEATURES`,
   XGBoost with the project's parameters, visitors split 80/20, against a
   logistic regression on the same base features; ROC AUC and PR AUC on the
   held-out visitors, and on their returning visits alone, with 95 % bootstrap
   intervals over visitors.

``python -m training.returning_eval [--json out.json]`` (or
``loadtests/recsys_eval.py --returning``) prints Markdown tables. Limits: a
two-hour window, so "returning" means within two hours; visitors whose first
session began before the window look new.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actors.core.features import RETURNING_FEATURES
from actors.core.profile import Profile, pack, returning_features, summary_of, update
from actors.core.session import Session
from serve.apps.recommender import SessionKNN
from training.loaders import SessionEvents, load_taobao
from training.recommender_data import items_from_events

CUTOFF = 20
BOOTSTRAP = 1000


def _collapse(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i in items:
        if not out or out[-1] != i:
            out.append(i)
    return out


def by_visitor(sessions: Sequence[SessionEvents]) -> dict[str, list[SessionEvents]]:
    """Each visitor's sessions in time order."""
    out: dict[str, list[SessionEvents]] = {}
    for s in sorted(sessions, key=lambda s: (s.start_ms, s.sid)):
        out.setdefault(str(s.extra["user_id"]), []).append(s)
    return out


def replayed(s: SessionEvents) -> Session:
    """The session as the shard holds it when it ends (the same code, event by event)."""
    session = Session(s.sid, "taobao")
    for ev in s.events:
        session.apply(ev)
    return session


def profiles_before(visits: Sequence[SessionEvents]) -> list[Profile | None]:
    """The visitor's profile as each of their sessions starts (None before the first)."""
    out: list[Profile | None] = []
    profile: Profile | None = None
    for s in visits:
        out.append(profile)
        profile = update(profile, summary_of(replayed(s)))
    return out


def _ci(per_visitor: list[tuple[int, int]], rng: np.random.Generator) -> tuple[float, float, float]:
    """(recall, low, high): hits / predictions, bootstrapped over visitors (95 %)."""
    arr = np.asarray(per_visitor, dtype=np.float64)
    value = arr[:, 0].sum() / arr[:, 1].sum()
    idx = rng.integers(0, len(arr), size=(BOOTSTRAP, len(arr)))
    boot = arr[idx, 0].sum(axis=1) / arr[idx, 1].sum(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(value), float(low), float(high)


def recommender_eval(
    visitors: dict[str, list[SessionEvents]], first_clicks: int = 3, seed: int = 7
) -> dict[str, Any]:
    """Recall@20 of a returning visitor's first clicks of a new session, with and without history."""
    test: list[tuple[list[str], list[str]]] = []  # (profile items before, the session's clicks)
    train: list[list[str]] = []
    for visits in visitors.values():
        items = [_collapse(items_from_events(s.events)) for s in visits]
        if len(visits) >= 2 and items[-1]:
            profile = profiles_before(visits)[-1]
            test.append((list(profile.items) if profile else [], items[-1]))
            train += [i for i in items[:-1] if i]
        else:
            train += [i for i in items if i]
    model = SessionKNN.fit(train)
    popular = model.popular[:CUTOFF]

    def blend(prefix: list[str]) -> list[str]:
        return [i for i, _ in model.recommend(prefix, (), k=CUTOFF, exclude=prefix[-1:])]

    methods = {
        "popularity": lambda hist, prefix: popular,
        "session kNN, no history": lambda hist, prefix: blend(prefix),
        "session kNN, with the profile's items": lambda hist, prefix: [
            i for i, _ in model.recommend(hist + prefix, (), k=CUTOFF, exclude=prefix[-1:])
        ],
        "the profile's items first, then session kNN with them": lambda hist, prefix: list(
            dict.fromkeys(
                [
                    *(i for i in reversed(hist) if i not in prefix[-1:]),
                    *(
                        i
                        for i, _ in model.recommend(
                            hist + prefix, (), k=CUTOFF, exclude=prefix[-1:]
                        )
                    ),
                ]
            )
        )[:CUTOFF],
        "the profile's items, then popularity": lambda hist, prefix: list(
            dict.fromkeys([*reversed(hist), *popular])
        )[:CUTOFF],
    }
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    for name, predict in methods.items():
        by_pos: dict[str, list[tuple[int, int]]] = {"first click": [], "first clicks": []}
        for hist, clicks in test:
            hits = n = 0
            first_hit = 0
            for pos, target in enumerate(clicks[:first_clicks]):
                hit = int(target in predict(hist, clicks[:pos])[:CUTOFF])
                hits += hit
                n += 1
                if pos == 0:
                    first_hit = hit
            by_pos["first click"].append((first_hit, 1))
            by_pos["first clicks"].append((hits, n))
        results[name] = {k: _ci(v, rng) for k, v in by_pos.items()}
    return {
        "test_sessions": len(test),
        "with_history": sum(1 for h, _ in test if h),
        "train_sessions": len(train),
        "items": model.items,
        "first_clicks": first_clicks,
        "results": results,
    }


def profile_sizes(visitors: dict[str, list[SessionEvents]]) -> dict[str, Any]:
    """Bytes of each visitor's packed profile after all their sessions."""
    sizes = []
    for visits in visitors.values():
        profile: Profile | None = None
        for s in visits:
            profile = update(profile, summary_of(replayed(s)))
        assert profile is not None
        sizes.append(len(pack(profile)))
    arr = np.asarray(sizes)
    multi = np.asarray([n for n, v in zip(sizes, visitors.values(), strict=True) if len(v) > 1])
    return {
        "visitors": len(arr),
        "median": float(np.median(arr)),
        "p99": float(np.percentile(arr, 99)),
        "max": int(arr.max()),
        "returning_median": float(np.median(multi)) if len(multi) else 0.0,
        "returning_max": int(multi.max()) if len(multi) else 0,
    }


def model_eval(
    sessions: Sequence[SessionEvents], visitors: dict[str, list[SessionEvents]], seed: int = 7
) -> dict[str, Any]:
    """Held-out ROC/PR AUC of the exit-risk model with and without the returning features."""
    import xgboost as xgb
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score

    from actors.core.features import FEATURE_NAMES
    from training.dataset import rows_frame
    from training.labels import exit_labels
    from training.train import XGBParams

    df = rows_frame(sessions)
    y = exit_labels(df)
    returning: dict[str, list[float]] = {}
    for visits in visitors.values():
        for s, p in zip(visits, profiles_before(visits), strict=True):
            returning[s.sid] = returning_features(p, s.start_ms)
    ret = np.asarray([returning[sid] for sid in df["sid"]], dtype=np.float64)
    keep = (y == 0) | (y == 1)
    base = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)[keep]
    ret, y = ret[keep], y[keep].astype(int)
    groups = df["group"].to_numpy()[keep]
    test = np.asarray([zlib.crc32(f"split:{g}".encode()) % 5 == 0 for g in groups])
    is_returning = ret[:, RETURNING_FEATURES.index("visits_before")] > 0
    valid = np.asarray([zlib.crc32(f"split:{g}".encode()) % 5 == 1 for g in groups])
    fit = ~test & ~valid
    params = XGBParams(seed=seed)

    def fit_xgb(x: np.ndarray) -> np.ndarray:
        """The project's booster parameters, early-stopped on visitors of the training side."""
        booster = xgb.train(
            params.booster_params(),
            xgb.DMatrix(x[fit], label=y[fit]),
            num_boost_round=params.num_boost_round,
            evals=[(xgb.DMatrix(x[valid], label=y[valid]), "valid")],
            early_stopping_rounds=params.early_stopping_rounds,
            verbose_eval=False,
        )
        return booster.predict(
            xgb.DMatrix(x[test]), iteration_range=(0, booster.best_iteration + 1)
        )

    def fit_logistic(x: np.ndarray) -> np.ndarray:
        mu, sd = x[~test].mean(axis=0), x[~test].std(axis=0) + 1e-9
        model = LogisticRegression(max_iter=2000)
        model.fit((x[~test] - mu) / sd, y[~test])  # training and validation visitors
        return model.predict_proba((x[test] - mu) / sd)[:, 1]

    with_ret = np.hstack([base, ret])
    preds = {
        "logistic regression, session features": fit_logistic(base),
        "XGBoost, session features": fit_xgb(base),
        "XGBoost, session + returning features": fit_xgb(with_ret),
    }
    yt, gt, rt = y[test], groups[test], is_returning[test]
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(gt, return_inverse=True)
    members = [np.flatnonzero(inv == i) for i in range(len(uniq))]
    boots = [
        np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        for _ in range(200)
    ]

    def metrics(p: np.ndarray, mask: np.ndarray) -> dict[str, list[float]]:
        out = {}
        for name, fn in (("roc_auc", roc_auc_score), ("pr_auc", average_precision_score)):
            value = fn(yt[mask], p[mask])
            vals = []
            for b in boots:
                b = b[mask[b]]
                if len(set(yt[b])) == 2:
                    vals.append(fn(yt[b], p[b]))
            lo, hi = np.percentile(vals, [2.5, 97.5])
            out[name] = [round(float(value), 4), round(float(lo), 4), round(float(hi), 4)]
        return out

    every = np.ones(len(yt), dtype=bool)
    return {
        "rows_train": int((~test).sum()),
        "rows_test": int(test.sum()),
        "positives_test": float(yt.mean()),
        "rows_test_returning": int(rt.sum()),
        "results": {
            name: {"all": metrics(p, every), "returning": metrics(p, rt)}
            for name, p in preds.items()
        },
    }


def fmt(value: tuple[float, float, float] | list[float]) -> str:
    v, lo, hi = value
    return f"{v:.4f} [{lo:.4f}, {hi:.4f}]"


def report(rec: dict[str, Any], sizes: dict[str, Any], model: dict[str, Any] | None) -> str:
    """Markdown for BENCHMARKS.md."""
    lines = [
        f"**Taobao, returning visitors**: each visitor's last session held out "
        f"({rec['test_sessions']} sessions of visitors with 2+ sessions, {rec['with_history']} "
        f"with a non-empty profile); kNN fitted on {rec['train_sessions']} sessions, "
        f"{rec['items']} items. Recall@20 [95 % bootstrap interval over visitors].",
        "",
        f"| method | first click of the visit | first {rec['first_clicks']} clicks |",
        "|---|---|---|",
    ]
    for name, r in rec["results"].items():
        lines.append(f"| {name} | {fmt(r['first click'])} | {fmt(r['first clicks'])} |")
    lines += [
        "",
        f"**Profile size** (packed, bytes) over {sizes['visitors']} Taobao visitors replayed: "
        f"median {sizes['median']:.0f}, p99 {sizes['p99']:.0f}, max {sizes['max']}; "
        f"visitors with 2+ sessions: median {sizes['returning_median']:.0f}, "
        f"max {sizes['returning_max']}.",
    ]
    if model is not None:
        lines += [
            "",
            f"**Exit-risk model with returning features** (Taobao, exit-soon labels, visitors split "
            f"80/20: {model['rows_train']} training rows, {model['rows_test']} held-out rows, "
            f"{model['rows_test_returning']} of them in returning visits; positive share "
            f"{model['positives_test']:.3f}). [95 % bootstrap over visitors]",
            "",
            "| model | ROC AUC, all | PR AUC, all | ROC AUC, returning visits | PR AUC, returning visits |",
            "|---|---|---|---|---|",
        ]
        for name, r in model["results"].items():
            a, ret = r["all"], r["returning"]
            lines.append(
                f"| {name} | {fmt(a['roc_auc'])} | {fmt(a['pr_auc'])} | "
                f"{fmt(ret['roc_auc'])} | {fmt(ret['pr_auc'])} |"
            )
    return "\n".join(lines)


def run(data: Path | None = None, with_model: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    sessions = load_taobao(data / "taobao" / "user-behavior.csv" if data else None)
    visitors = by_visitor(sessions)
    out: dict[str, Any] = {
        "recommender": recommender_eval(visitors),
        "sizes": profile_sizes(visitors),
    }
    out["model"] = model_eval(sessions, visitors) if with_model else None
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.returning_eval")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--no-model", action="store_true", help="skip the exit-risk model comparison")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    out = run(a.data, not a.no_model)
    print(report(out["recommender"], out["sizes"], out["model"]))
    print(f"\n({out['seconds']} s)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
