"""Exit-risk model training: time-ordered split, XGBoost, baselines and their metrics.

What it is for: turning a rows frame (``training.dataset``) into an XGBoost
booster the shards can load, plus the figures that say whether it is any
good, with simple baselines measured in the same run on the same split:

* ``xgboost``: the model the live path uses;
* ``logreg``: logistic regression on the same features (log1p-scaled, standardised);
* ``logreg_counts``: logistic regression on the prefix's counts only (events,
  pages, clicks, form errors, cart adds...: ``COUNT_FEATURES``);
* ``events_so_far``: logistic regression on the number of events seen so far only.

Decisions, and why:

* Split by time, by session: sessions are ordered by start time; the last
  ``test_frac`` are the test set, the ``valid_frac`` before them drive early
  stopping. No session is in two parts, and the model never sees the future.
* The score is a calibrated probability of the label (``training.labels``:
  by default, the visitor leaves within ten minutes without converting).
  Nothing is re-weighted by class, so the booster's output is that
  probability and the policy's thresholds are in its unit. Sources are
  weighted by the square root of their size (``source_weights``): the
  simulator makes as many rows as asked, and should not outvote real behaviour. Models from
  before (``"score": "balanced"``) are still read: :func:`calibrated`
  recovers their probability.
* Split per source: where the data has users (Taobao), by a hash of the user,
  so the test users are new to the model, as a new site's visitors are;
  elsewhere by session start time. The parts of all sources are put together.
* Rows: one per event before the purchase (see ``training.dataset``), the
  label is 1 when the session ends without a conversion.

Limits: metrics are per event (every prefix of every test session is a
row), so long sessions weigh more, as they do in live scoring; the ROC AUC
interval is a session-level bootstrap and only describes sampling noise of
the test set.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from actors.core.features import COUNTERS, FEATURE_NAMES, FEATURE_SCHEMA_HASH
from actors.core.policy import DEFAULT_POLICY
from training.drift import reference_of
from training.labels import DEFAULT_HORIZON_S, EXIT_SOON, NO_PURCHASE, apply_label, describe
from training.progress import Progress

POLICY_THRESHOLD = DEFAULT_POLICY.risk_threshold  # the policy's default floor on the exit risk
SCORE_BALANCED = "balanced"  # output = class-balanced exit risk (see the module docstring)
SCORE_CALIBRATED = "calibrated"  # output = calibrated probability (no re-weighting)
CALIBRATION_FORMULA = "p = sigmoid(logit(score) + logit(base_rate))"
FEATURES: list[str] = list(FEATURE_NAMES)
# The prefix's plain counts: what the "logistic regression on prefix counts" baseline sees.
COUNT_FEATURES: list[str] = list(dict.fromkeys(["n_events", "n_pages", *COUNTERS]))
MODELS = ("xgboost", "logreg", "logreg_counts", "events_so_far")
BASELINES = MODELS[1:]


@dataclass
class XGBParams:
    """Hyperparameters of the exit-risk booster (recorded with every model)."""

    max_depth: int = 5
    eta: float = 0.08
    num_boost_round: int = 400
    early_stopping_rounds: int = 30
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 5.0
    reg_lambda: float = 1.0
    nthread: int = 2
    seed: int = 0
    balance_classes: bool = False  # True: class-balanced score (older models); False: calibrated
    source_weights: bool = True  # each data source gets the same total weight

    def booster_params(self) -> dict[str, Any]:
        return {
            "objective": "binary:logistic",
            "eval_metric": ["aucpr", "logloss"],  # early stopping follows the last one
            "tree_method": "hist",
            "max_depth": self.max_depth,
            "eta": self.eta,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "nthread": self.nthread,
            "seed": self.seed,
        }


@dataclass
class Split:
    """A time-ordered, session-disjoint train / validation / test split of a rows frame."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    test_from_ms: int
    valid_from_ms: int

    def describe(self) -> dict[str, Any]:
        def part(df: pd.DataFrame) -> dict[str, Any]:
            return {
                "sessions": int(df["sid"].nunique()),
                "rows": len(df),
                "exit_rate_rows": round(float(df["label"].mean()), 4) if len(df) else None,
                "exit_rate_sessions": round(float(df.groupby("sid")["label"].first().mean()), 4)
                if len(df)
                else None,
            }

        return {
            "train": part(self.train),
            "valid": part(self.valid),
            "test": part(self.test),
            "valid_from_ms": self.valid_from_ms,
            "test_from_ms": self.test_from_ms,
        }


def time_split(df: pd.DataFrame, test_frac: float = 0.2, valid_frac: float = 0.15) -> Split:
    """Split by session start time: oldest sessions train, then validation, newest test."""
    if "label" not in df or (df["label"] < 0).any():
        raise ValueError("rows without a purchase label cannot train an exit-risk model")
    starts = df.groupby("sid", sort=False)["start_ms"].first().reset_index()
    starts = starts.sort_values(["start_ms", "sid"], kind="stable")
    n = len(starts)
    n_test = max(1, int(round(n * test_frac)))
    n_valid = max(1, int(round(n * valid_frac)))
    if n - n_test - n_valid < 2:
        raise ValueError(f"only {n} sessions: too few for a train/validation/test split")
    order = starts["sid"].tolist()
    train_ids = set(order[: n - n_test - n_valid])
    valid_ids = set(order[n - n_test - n_valid : n - n_test])
    part = df["sid"].map(lambda s: 0 if s in train_ids else (1 if s in valid_ids else 2))
    return Split(
        df[part == 0].reset_index(drop=True),
        df[part == 1].reset_index(drop=True),
        df[part == 2].reset_index(drop=True),
        int(starts["start_ms"].iloc[n - n_test]),
        int(starts["start_ms"].iloc[n - n_test - n_valid]),
    )


def _user_part(groups: pd.Series, test_frac: float, valid_frac: float) -> np.ndarray:
    """0 / 1 / 2 (train / validation / test) by a stable hash of each row's group (user)."""
    h = groups.map(lambda g: zlib.crc32(f"split:{g}".encode()) % 10_000 / 10_000).to_numpy()
    return np.where(h < 1 - test_frac - valid_frac, 0, np.where(h < 1 - test_frac, 1, 2))


def source_split(df: pd.DataFrame, test_frac: float = 0.2, valid_frac: float = 0.15) -> Split:
    """Split each source on its own and put the parts together.

    A source with users (rows whose ``group`` is not their session) is split
    by user, so no user is in two parts and the test users are new; any
    other by session start time (:func:`time_split`). The returned times
    are those of the last time-split source (0 when none).
    """
    if "source" not in df or df["source"].nunique() <= 1 and (df["group"] == df["sid"]).all():
        return time_split(df, test_frac, valid_frac)
    parts: list[list[pd.DataFrame]] = [[], [], []]
    test_from = valid_from = 0
    for _src, rows in df.groupby("source", sort=True):
        if (rows["group"] != rows["sid"]).any():
            part = _user_part(rows["group"], test_frac, valid_frac)
            for i in range(3):
                parts[i].append(rows[part == i])
        else:
            sp = time_split(rows, test_frac, valid_frac)
            for i, d in enumerate((sp.train, sp.valid, sp.test)):
                parts[i].append(d)
            test_from, valid_from = sp.test_from_ms, sp.valid_from_ms
    train, valid, test = (pd.concat(p, ignore_index=True) for p in parts)
    return Split(train, valid, test, test_from, valid_from)


def source_weight(df: pd.DataFrame) -> np.ndarray:
    """Row weights that move each source halfway (geometrically) to an equal share (mean 1).

    A source's total weight goes with the square root of its rows: the
    simulator, which makes as many rows as asked, does not outvote real
    behaviour, and the smallest real sample (Diginetica, ~10,000 rows) is
    not blown up to a third of the model's attention either.
    """
    if "source" not in df or len(df) == 0:
        return np.ones(len(df))
    counts = df["source"].map(df["source"].value_counts()).to_numpy(dtype=np.float64)
    w = 1.0 / np.sqrt(counts)
    return w * (len(w) / w.sum())


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE: the row-weighted mean gap between mean score and exit rate over 10 equal-width bins."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(idx):
        m = idx == b
        total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / len(y))


def bootstrap_ece_ci(
    df: pd.DataFrame, p: np.ndarray, n_boot: int = 200, seed: int = 0
) -> tuple[float, float]:
    """95% interval of the ECE, resampling whole sessions."""
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(df["sid"])
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    y = df["label"].to_numpy()
    eces = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniques), len(uniques))
        idx = np.concatenate([order[bounds[i] : bounds[i + 1]] for i in pick])
        eces.append(expected_calibration_error(y[idx], p[idx]))
    lo, hi = np.percentile(eces, [2.5, 97.5])
    return float(lo), float(hi)


def _x(df: pd.DataFrame) -> np.ndarray:
    return df[FEATURES].to_numpy(dtype=np.float32)


def _balance(y: np.ndarray) -> float:
    pos = float((y == 1).sum())
    neg = float((y == 0).sum())
    if pos == 0 or neg == 0:
        raise ValueError("the training rows hold only one class; cannot learn exit risk")
    return neg / pos


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1.0 - p))


def calibrated(score: np.ndarray, base_rate: float, kind: str = SCORE_BALANCED) -> np.ndarray:
    """The calibrated exit probability behind a score: ``sigmoid(logit(score) + logit(base_rate))``.

    ``base_rate`` is the share of exit rows the model was trained on (``meta["base_rate"]``);
    a ``"calibrated"`` score is returned as it is.
    """
    score = np.asarray(score, dtype=np.float64)
    if kind != SCORE_BALANCED:
        return score
    return 1.0 / (1.0 + np.exp(-(_logit(score) + _logit(base_rate))))


def balanced(p: np.ndarray, base_rate: float) -> np.ndarray:
    """The inverse of :func:`calibrated`: a calibrated probability as a class-balanced score."""
    return 1.0 / (1.0 + np.exp(-(_logit(p) - _logit(base_rate))))


@dataclass
class TrainedXGB:
    """A trained booster (its output: a class-balanced exit risk) and how it was obtained."""

    booster: xgb.Booster
    best_iteration: int
    scale_pos_weight: float
    eval_history: dict[str, list[float]] = field(default_factory=dict)
    base_rate: float = 0.5  # share of exit rows in its training rows
    score: str = SCORE_BALANCED  # what the output means: "balanced" or "calibrated"

    def predict_calibrated(self, X: np.ndarray) -> np.ndarray:
        return calibrated(self.predict(X), self.base_rate, self.score)

    def predict(self, X: np.ndarray) -> np.ndarray:
        # In-place prediction, as the shards score (DMatrix per call is ~40x slower). The
        # shards call its C function directly to leave no garbage; one call here does not care.
        return np.asarray(self.booster.inplace_predict(X), dtype=np.float64)

    def to_bytes(self) -> bytes:
        return bytes(self.booster.save_raw("ubj"))


class _ProgressCallback(xgb.callback.TrainingCallback):
    """Advances a progress bar once per boosting round."""

    def __init__(self, bar: Progress) -> None:
        super().__init__()
        self.bar = bar

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.bar.update()
        return False  # never asks training to stop; early stopping does that


def fit_xgb(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    params: XGBParams | None = None,
    *,
    progress: bool = False,
) -> TrainedXGB:
    """Train with early stopping on the validation rows; the booster outputs the balanced score.

    With ``balance_classes`` off nothing is re-weighted and the output is a
    calibrated probability (``score`` = ``"calibrated"``).
    """
    params = params or XGBParams()
    ytr = train["label"].to_numpy()
    yva = valid["label"].to_numpy()
    spw = _balance(ytr) if params.balance_classes else 1.0
    wtr = np.where(ytr == 1, spw, 1.0)
    wva = np.where(yva == 1, spw, 1.0)
    if params.source_weights:
        wtr, wva = wtr * source_weight(train), wva * source_weight(valid)
    dtrain = xgb.DMatrix(_x(train), label=ytr, weight=wtr, feature_names=FEATURES)
    dvalid = xgb.DMatrix(_x(valid), label=yva, weight=wva, feature_names=FEATURES)
    history: dict[str, dict[str, list[float]]] = {}
    bar = Progress(params.num_boost_round, "boosting", enabled=progress)
    booster = xgb.train(
        params.booster_params(),
        dtrain,
        num_boost_round=params.num_boost_round,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=params.early_stopping_rounds,
        evals_result=history,
        verbose_eval=False,
        callbacks=[_ProgressCallback(bar)],
    )
    bar.close()
    best = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
    booster = booster[: best + 1]  # ship only the trees early stopping kept
    # No prior correction: the class-balanced log-odds are the live score.
    return TrainedXGB(
        booster,
        best,
        spw,
        {k: list(v) for k, v in history.get("valid", {}).items()},
        base_rate=float(ytr.mean()),
        score=SCORE_BALANCED if params.balance_classes else SCORE_CALIBRATED,
    )


def load_booster(model_bytes: bytes) -> xgb.Booster:
    """A booster from registry / bundle bytes (``save_raw("ubj")``)."""
    b = xgb.Booster()
    b.load_model(bytearray(model_bytes))
    return b


def _log1p_pos(X: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(X, 0.0, None))


def fit_logreg(
    train: pd.DataFrame,
    balance_classes: bool = False,
    source_weights: bool = True,
    columns: list[str] | None = None,
) -> Any:
    """Logistic regression on the same features (or ``columns``), weighted like the booster.

    The fitted pipeline picks its columns from a rows frame: call
    ``predict_proba`` on the frame, not on a matrix.
    """
    y = train["label"].to_numpy()
    _balance(y)  # both classes present
    model = make_pipeline(
        FunctionTransformer(_columns, kw_args={"names": columns or FEATURES}),
        FunctionTransformer(_log1p_pos),  # counts and durations are heavy-tailed
        StandardScaler(),
        LogisticRegression(
            C=1.0, max_iter=2000, class_weight="balanced" if balance_classes else None
        ),
    )
    w = source_weight(train) if source_weights else None
    model.fit(train, y, logisticregression__sample_weight=w)
    return model


def _columns(df: pd.DataFrame, names: list[str]) -> np.ndarray:
    return df[names].to_numpy(dtype=np.float32)


def fit_events_so_far(
    train: pd.DataFrame, balance_classes: bool = False, source_weights: bool = True
) -> LogisticRegression:
    """The simplest credible baseline: exit risk from the number of events seen so far."""
    model = LogisticRegression(max_iter=1000, class_weight="balanced" if balance_classes else None)
    model.fit(
        np.log1p(train[["prefix_len"]].to_numpy(dtype=np.float64)),
        train["label"].to_numpy(),
        sample_weight=source_weight(train) if source_weights else None,
    )
    return model


def predict_events_so_far(model: LogisticRegression, df: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(np.log1p(df[["prefix_len"]].to_numpy(dtype=np.float64)))[:, 1]


def metrics(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float = POLICY_THRESHOLD,
    p_calibrated: np.ndarray | None = None,
) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision, exit class and purchase class), F1 / precision /
    recall of the exit class at ``threshold``, Brier score.

    ``p`` is the score the policy thresholds (ranks and the threshold use it);
    the Brier score uses ``p_calibrated``, the calibrated probability behind
    it (default: ``p`` itself).
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pc = p if p_calibrated is None else np.asarray(p_calibrated, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    two = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if two else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if two else float("nan"),
        # The same for the other class (a purchase), informative when exits dominate.
        "pr_auc_purchase": float(average_precision_score(1 - y, 1.0 - p)) if two else float("nan"),
        "f1_at_threshold": float(f1_score(y, pred, zero_division=0)),
        "precision_at_threshold": float(precision_score(y, pred, zero_division=0)),
        "recall_at_threshold": float(recall_score(y, pred, zero_division=0)),
        "brier": float(brier_score_loss(y, pc)),
        "ece": expected_calibration_error(y, pc),
        "threshold": threshold,
        "base_rate": float(y.mean()) if len(y) else float("nan"),
        "rows": int(len(y)),
    }


def bootstrap_auc_ci(
    df: pd.DataFrame, p: np.ndarray, n_boot: int = 200, seed: int = 0
) -> tuple[float, float]:
    """95% interval of the ROC AUC, resampling whole test sessions."""
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(df["sid"])
    y = df["label"].to_numpy()
    idx_by_session = pd.Series(np.arange(len(df))).groupby(codes).apply(np.asarray).tolist()
    aucs = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniques), len(uniques))
        idx = np.concatenate([idx_by_session[i] for i in pick])
        if len(np.unique(y[idx])) == 2:
            aucs.append(roc_auc_score(y[idx], p[idx]))
    if not aucs:
        return float("nan"), float("nan")
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class RunResult:
    """Everything one train-and-evaluate run produced (models, test predictions, metrics).

    ``predictions`` are each model's scores as the policy would see them
    (class-balanced unless the run was not balanced); :meth:`calibrated`
    turns them back into calibrated probabilities with the model's
    training base rate (``base_rates``).
    """

    name: str
    split: Split
    xgb_model: TrainedXGB
    baselines: dict[str, Any]  # name -> fitted baseline (see BASELINES)
    predictions: dict[str, np.ndarray]  # model name -> test-set scores
    metrics: dict[str, dict[str, float]]
    params: XGBParams
    data: dict[str, Any]
    base_rates: dict[str, float] = field(default_factory=dict)  # model -> training exit share
    score: str = SCORE_BALANCED
    # source -> model -> metrics on that source's test rows (the same as ``metrics`` for one source)
    by_source: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    label: str = EXIT_SOON
    horizon_s: float = DEFAULT_HORIZON_S

    def calibrated(self, model: str) -> np.ndarray:
        """The test-set calibrated probabilities of ``model`` (recovered from its scores)."""
        return calibrated(self.predictions[model], self.base_rates[model], self.score)

    def meta(self) -> dict[str, Any]:
        """Registry metadata for the booster of this run."""
        meta = {
            "feature_schema": FEATURE_SCHEMA_HASH,
            "feature_names": FEATURES,
            "kind": "exit_risk",
            "label": describe(self.label, self.horizon_s),
            "label_definition": self.label,
            "horizon_s": self.horizon_s,
            "threshold": POLICY_THRESHOLD,
            "score": self.xgb_model.score,
            "base_rate": round(self.xgb_model.base_rate, 6),
            "metrics": {k: {m: _round(v) for m, v in d.items()} for k, d in self.metrics.items()},
            "metrics_by_source": {
                src: {k: {m: _round(v) for m, v in d.items()} for k, d in models.items()}
                for src, models in self.by_source.items()
            },
            "params": asdict(self.params),
            "best_iteration": self.xgb_model.best_iteration,
            "scale_pos_weight": round(self.xgb_model.scale_pos_weight, 6),
            "split": self.split.describe(),
            "data": self.data,
            "run": self.name,
            # What the training rows looked like, to check live traffic against (training/drift.py).
            "drift_reference": reference_of(self.split.train, FEATURES).to_dict(),
        }
        if self.xgb_model.score == SCORE_BALANCED:
            meta["score_note"] = (
                "class-balanced exit risk: 0.5 = the exit odds of an average training row, "
                "0.75 = three times those odds; calibrated probability: " + CALIBRATION_FORMULA
            )
            meta["calibration"] = CALIBRATION_FORMULA
        return meta


def _round(v: Any) -> Any:
    return round(v, 5) if isinstance(v, float) and math.isfinite(v) else v


def _measure(
    test: pd.DataFrame,
    preds: dict[str, np.ndarray],
    base_rates: dict[str, float],
    score: str,
    bootstrap: int,
) -> dict[str, dict[str, float]]:
    y = test["label"].to_numpy()
    results = {}
    for k, p in preds.items():
        m = metrics(y, p, p_calibrated=calibrated(p, base_rates[k], score))
        m["train_base_rate"] = float(base_rates[k])
        if bootstrap:
            m["roc_auc_ci_low"], m["roc_auc_ci_high"] = bootstrap_auc_ci(test, p, bootstrap)
            m["ece_ci_low"], m["ece_ci_high"] = bootstrap_ece_ci(
                test, calibrated(p, base_rates[k], score), bootstrap
            )
        results[k] = m
    return results


def _measure_by_source(
    test: pd.DataFrame,
    preds: dict[str, np.ndarray],
    base_rates: dict[str, float],
    score: str,
    bootstrap: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`_measure` on each source's test rows on their own."""
    if "source" not in test:
        return {}
    out = {}
    for src in sorted(test["source"].unique()):
        m = (test["source"] == src).to_numpy()
        rows = test[m].reset_index(drop=True)
        out[str(src)] = _measure(
            rows, {k: p[m] for k, p in preds.items()}, base_rates, score, bootstrap
        )
    return out


def _baselines(
    split: Split, balance: bool, source_weights: bool = True
) -> tuple[dict[str, Any], float]:
    """The baselines of :data:`BASELINES`, fitted, and the exit share of their training rows."""
    # The baselines have no early stopping, so they may learn from validation rows too.
    base_train = pd.concat([split.train, split.valid], ignore_index=True)
    fitted = {
        "logreg": fit_logreg(base_train, balance, source_weights),
        "logreg_counts": fit_logreg(base_train, balance, source_weights, COUNT_FEATURES),
        "events_so_far": fit_events_so_far(base_train, balance, source_weights),
    }
    return fitted, float(base_train["label"].mean())


def _baseline_predictions(fitted: dict[str, Any], df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        k: predict_events_so_far(m, df) if k == "events_so_far" else m.predict_proba(df)[:, 1]
        for k, m in fitted.items()
    }


def train_and_evaluate(
    df: pd.DataFrame,
    *,
    name: str,
    data: dict[str, Any] | None = None,
    params: XGBParams | None = None,
    test_frac: float = 0.2,
    valid_frac: float = 0.15,
    bootstrap: int = 200,
    progress: bool = False,
    label: str = EXIT_SOON,
    horizon_s: float = DEFAULT_HORIZON_S,
) -> RunResult:
    """Label, split per source, fit the booster and both baselines, measure all three on the test rows.

    ``df`` is a rows frame as :mod:`training.dataset` builds it (``label`` =
    the session outcome); ``label`` and ``horizon_s`` choose what the model
    predicts (:mod:`training.labels`).
    """
    params = params or XGBParams()
    df = apply_label(df, label, horizon_s)
    split = source_split(df, test_frac, valid_frac)
    model = fit_xgb(split.train, split.valid, params, progress=progress)
    fitted, base_rate = _baselines(split, params.balance_classes, params.source_weights)
    return _measured(
        name, split, model, fitted, base_rate, params, data, bootstrap, label, horizon_s
    )


def _measured(
    name: str,
    split: Split,
    model: TrainedXGB,
    fitted: dict[str, Any],
    base_rate: float,
    params: XGBParams,
    data: dict[str, Any] | None,
    bootstrap: int,
    label: str,
    horizon_s: float,
    calibrate_baselines: bool = False,
) -> RunResult:
    """The booster and the baselines measured on the test rows, overall and per source.

    ``calibrate_baselines``: the baselines' balanced scores are turned into
    calibrated probabilities (to compare with an older, prior-corrected booster).
    """
    preds = {"xgboost": model.predict(_x(split.test)), **_baseline_predictions(fitted, split.test)}
    if calibrate_baselines:
        for k in BASELINES:
            preds[k] = calibrated(preds[k], base_rate)
    rates = {"xgboost": model.base_rate, **dict.fromkeys(BASELINES, base_rate)}
    results = _measure(split.test, preds, rates, model.score, bootstrap)
    by_source = _measure_by_source(split.test, preds, rates, model.score, bootstrap)
    return RunResult(
        name,
        split,
        model,
        fitted,
        preds,
        results,
        params,
        dict(data or {}),
        rates,
        model.score,
        by_source,
        label,
        horizon_s,
    )


def evaluate_booster(
    df: pd.DataFrame,
    booster: xgb.Booster,
    meta: dict[str, Any],
    *,
    name: str,
    data: dict[str, Any] | None = None,
    test_frac: float = 0.2,
    valid_frac: float = 0.15,
    bootstrap: int = 200,
) -> RunResult:
    """Measure an existing booster on the test part of ``df``, next to freshly fitted baselines.

    The split is the same time-ordered one :func:`train_and_evaluate` uses;
    the baselines learn from its train and validation parts. If the booster
    was trained on rows that fall in this test part, its figures are
    optimistic: evaluate on data recorded after its training data.

    A booster's score is read from ``meta["score"]``: ``"balanced"`` (with
    ``meta["base_rate"]``) or, for models from before that field existed,
    a calibrated probability. The baselines' scores are put on the same
    scale, so F1 at the threshold compares like with like.
    """
    label = str(meta.get("label_definition", NO_PURCHASE))
    horizon = float(meta.get("horizon_s", DEFAULT_HORIZON_S))
    split = source_split(apply_label(df, label, horizon), test_frac, valid_frac)
    balance = bool(meta.get("params", {}).get("balance_classes", True))
    weights = bool(meta.get("params", {}).get("source_weights", False))
    fitted, base_rate = _baselines(split, balance, weights)
    kind = SCORE_BALANCED if meta.get("score") == SCORE_BALANCED else SCORE_CALIBRATED
    spw = float(meta.get("scale_pos_weight", 1.0))
    if "base_rate" in meta:
        model_base_rate = float(meta["base_rate"])
    elif "scale_pos_weight" in meta:  # older models: negatives / positives of their training rows
        model_base_rate = 1.0 / (1.0 + spw)
    else:
        model_base_rate = float(split.train["label"].mean())
    model = TrainedXGB(
        booster, booster.num_boosted_rounds() - 1, spw, base_rate=model_base_rate, score=kind
    )
    known = {f.name for f in XGBParams.__dataclass_fields__.values()}
    params = XGBParams(**{k: v for k, v in meta.get("params", {}).items() if k in known})
    # An older, prior-corrected booster outputs a calibrated probability while its
    # baselines were fitted balanced: they are put on its scale.
    return _measured(
        name,
        split,
        model,
        fitted,
        base_rate,
        params,
        data,
        bootstrap,
        label,
        horizon,
        calibrate_baselines=kind == SCORE_CALIBRATED and balance,
    )
