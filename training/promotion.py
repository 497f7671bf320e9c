"""The promotion guard: a candidate model goes live only if it is not worse than the live one.

What it is for: ``lifeline promote VERSION`` and ``lifeline train
--promote`` measure the candidate and the live model on the *same*
held-back rows with the same function (``training.train.evaluate_booster``,
the figures of every report) and refuse when the candidate is worse:

* its ROC AUC is more than ``auc_tolerance`` (default 0.005) below the
  live model's (it ranks visitors worse), or
* its Brier score is more than ``brier_tolerance`` (default 0.005) above
  the live model's (its probabilities, which the policy thresholds, are
  further from what happened).

The held-back rows are the test part of the split every training run
makes (``training.train.source_split``: the newest ``test_frac`` of the
sessions; for data with users, such as Taobao, the users hashed into that
share): for ``train --promote``, the candidate's own test rows, which it
never learnt from;
for ``lifeline promote VERSION``, the live event log's most recent
sessions (or another ``--source``), i.e. the traffic the model is about to
score. Both models are measured with their own label definition, so two
models that predict different things (``label_definition``, ``horizon_s``)
are not compared: the guard says so and refuses.

Nothing to compare with passes: the first promotion (the bundled demo
model, trained on other traffic, is not a yardstick), and a live pointer at
a model of another feature schema (the shards refused it). A candidate the
guard cannot measure (another schema, another label, no held-back rows)
is refused like a worse one; ``--force`` promotes anyway, and the record
says so.

Limits: the figures come from one held-back sample, so differences within
the tolerances (and, on a few hundred sessions, somewhat beyond them) are
noise; there is no significance test. A model that learnt from some of the
held-back sessions looks better than it is there (:func:`overlap_notes`
says when the metadata shows that). Each check fits
``evaluate_booster``'s baselines too, which it does not need (seconds on
large logs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from actors.core.features import FEATURE_SCHEMA_HASH
from training.labels import DEFAULT_HORIZON_S, EXIT_SOON, NO_PURCHASE
from training.train import evaluate_booster, load_booster

AUC_TOLERANCE = 0.005
BRIER_TOLERANCE = 0.005
FIGURES = ("roc_auc", "pr_auc", "brier", "ece")
NO_LIVE_MODEL = "no_live_model"  # nothing to compare with: passes
NOT_WORSE = "not_worse"  # passes
WORSE = "worse"  # refused unless forced
NOT_COMPARABLE = "not_comparable"  # refused unless forced
LIVE_SOURCES = ("live", "redis")


@dataclass
class Model:
    """A model to compare: its bytes, metadata and version."""

    raw: bytes
    meta: dict[str, Any]
    version: str

    def label(self) -> tuple[str, float]:
        """What it predicts: label definition and horizon (0 for ``no_purchase``, older models')."""
        definition = str(self.meta.get("label_definition", NO_PURCHASE))
        if definition != EXIT_SOON:
            return definition, 0.0
        return definition, float(self.meta.get("horizon_s", DEFAULT_HORIZON_S))


@dataclass
class Check:
    """The guard's verdict on one candidate, with both models' figures on the same rows."""

    candidate: str
    live: str | None
    verdict: str
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, dict[str, float]] = field(default_factory=dict)  # version -> figures
    held_back: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        return self.verdict in (NO_LIVE_MODEL, NOT_WORSE)

    def record(self, decision: str) -> dict[str, Any]:
        """The entry kept in the registry's history: the decision, the verdict and the figures."""
        return {
            "decision": decision,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "candidate": self.candidate,
            "live": self.live,
            "figures": self.figures,
            "held_back": self.held_back,
            "tolerance": self.tolerance,
            "notes": self.notes,
        }

    def table(self) -> str:
        """Both models' figures, one line each, for the terminal."""
        lines = [f"  {'model':<28}{'ROC AUC':>9}{'PR AUC':>9}{'Brier':>9}{'ECE':>8}"]
        for version, f in self.figures.items():
            role = "candidate" if version == self.candidate else "live"
            lines.append(
                f"  {version + ' (' + role + ')':<28}{f['roc_auc']:>9.4f}{f['pr_auc']:>9.4f}"
                f"{f['brier']:>9.4f}{f['ece']:>8.4f}"
            )
        return "\n".join(lines)


def figures_on(df: pd.DataFrame, model: Model, test_frac: float) -> tuple[dict[str, float], Any]:
    """A model's figures on the newest ``test_frac`` of ``df``'s sessions, and the run behind them."""
    run = evaluate_booster(
        df,
        load_booster(model.raw),
        model.meta,
        name=f"promotion-check-{model.version}",
        test_frac=test_frac,
        bootstrap=0,
    )
    m = run.metrics["xgboost"]
    return {k: float(m.get(k, math.nan)) for k in FIGURES}, run


def _worse(cand: dict[str, float], live: dict[str, float], auc_tol: float, brier_tol: float):
    reasons = []
    if cand["roc_auc"] < live["roc_auc"] - auc_tol:
        reasons.append(
            f"ROC AUC {cand['roc_auc']:.4f} is {live['roc_auc'] - cand['roc_auc']:.4f} below the "
            f"live model's {live['roc_auc']:.4f} (tolerance {auc_tol:g})"
        )
    if cand["brier"] > live["brier"] + brier_tol:
        reasons.append(
            f"Brier score {cand['brier']:.4f} is {cand['brier'] - live['brier']:.4f} above the "
            f"live model's {live['brier']:.4f} (tolerance {brier_tol:g})"
        )
    return reasons


def overlap_notes(models: list[Model], held_source: str, held_from_ms: int) -> list[str]:
    """Say which model's training data, by its metadata, reaches into the held-back sessions.

    Only for time-ordered data of the same source (the live log), where
    ``meta["split"]["test_from_ms"]`` is when the model's own held-back part began.
    """
    notes = []
    for m in models:
        src = str(m.meta.get("data", {}).get("source", ""))
        test_from = m.meta.get("split", {}).get("test_from_ms")
        same = src == held_source or (src in LIVE_SOURCES and held_source in LIVE_SOURCES)
        if same and isinstance(test_from, int) and test_from > held_from_ms:
            notes.append(
                f"{m.version} learnt from sessions that started before {test_from}, after the "
                f"held-back rows begin ({held_from_ms}): its figures here are optimistic"
            )
    return notes


class NoRows(Exception):
    """The held-back rows could not be had (no data, too few sessions); the message says why."""


def check(
    candidate: Model,
    live: Model | None,
    rows: Callable[[], tuple[pd.DataFrame, str]],
    *,
    test_frac: float = 0.2,
    auc_tolerance: float = AUC_TOLERANCE,
    brier_tolerance: float = BRIER_TOLERANCE,
) -> Check:
    """Compare ``candidate`` with ``live`` on the newest ``test_frac`` of the rows (module doc).

    ``live`` None means no model was ever promoted. ``rows()`` returns a
    rows frame and the name of its source; it is called only when there is
    something to compare, and may raise :class:`NoRows`. A live model of
    another feature schema than this code's is not serving (the shards
    refused it), so it is no yardstick either; a candidate of another
    schema (promoted with ``--force``) cannot be measured here.
    """
    tol = {"roc_auc": auc_tolerance, "brier": brier_tolerance}
    if live is None:
        return Check(
            candidate.version, None, NO_LIVE_MODEL, ["no model is live yet"], tolerance=tol
        )
    if live.meta.get("feature_schema") != FEATURE_SCHEMA_HASH:
        why = f"the live model {live.version} has another feature schema; the shards refused it"
        return Check(candidate.version, live.version, NO_LIVE_MODEL, [why], tolerance=tol)
    out = Check(candidate.version, live.version, NOT_COMPARABLE, tolerance=tol)
    if candidate.meta.get("feature_schema") != FEATURE_SCHEMA_HASH:
        out.reasons.append("the candidate has another feature schema: it cannot score these rows")
        return out
    if candidate.label() != live.label():
        (c_def, c_hor), (l_def, l_hor) = candidate.label(), live.label()
        out.reasons.append(
            f"the candidate predicts {c_def} (horizon {c_hor:g} s), the live model {l_def} "
            f"(horizon {l_hor:g} s): their figures are not comparable"
        )
        return out
    try:
        df, source = rows()
        cand_fig, run = figures_on(df, candidate, test_frac)
        live_fig, _ = figures_on(df, live, test_frac)
    except (NoRows, ValueError) as exc:  # ValueError: too few sessions or labels to split
        out.reasons.append(f"no held-back rows to compare on: {exc}")
        return out
    test = run.split.test
    held_from = int(test["start_ms"].min()) if len(test) else 0
    out.figures = {candidate.version: cand_fig, live.version: live_fig}
    out.held_back = {
        "source": source,
        "test_frac": test_frac,
        "sessions": int(test["sid"].nunique()),
        "rows": len(test),
        "from_ms": held_from,
        "label_rate": round(float(test["label"].mean()), 4) if len(test) else None,
    }
    out.notes = overlap_notes([candidate, live], source, held_from)
    if not all(math.isfinite(cand_fig[k]) and math.isfinite(live_fig[k]) for k in tol):
        out.reasons.append("the held-back rows hold one class only: ROC AUC is undefined")
        return out
    out.reasons = _worse(cand_fig, live_fig, auc_tolerance, brier_tolerance)
    out.verdict = WORSE if out.reasons else NOT_WORSE
    if not out.reasons:
        out.reasons.append(
            f"ROC AUC {cand_fig['roc_auc']:.4f} vs {live_fig['roc_auc']:.4f}, Brier "
            f"{cand_fig['brier']:.4f} vs {live_fig['brier']:.4f}: not worse beyond the tolerances"
        )
    return out


PROMOTED, FORCED, REFUSED = "promoted", "forced", "refused"


@dataclass
class Promotion:
    """What a guarded promotion did: ``decision`` is promoted, forced or refused."""

    version: str
    previous: str | None  # the live version before
    decision: str
    check: Check

    @property
    def promoted(self) -> bool:
        return self.decision != REFUSED

    def lines(self) -> list[str]:
        """The check and the decision, for the terminal and the report."""
        c = self.check
        lines = [
            f"promotion check of {self.version} against {self.previous or 'no live model'}: "
            + c.verdict.replace("_", " ")
        ]
        if c.held_back:
            h = c.held_back
            lines.append(
                f"  held back: the newest {100 * h['test_frac']:g} % of {h['source']} sessions, "
                f"{h['sessions']} sessions, {h['rows']} rows"
            )
            lines.append(c.table())
        lines += [f"  {x}" for x in c.reasons + c.notes]
        if self.decision == REFUSED:
            lines.append(
                f"refused: {self.version} is not promoted, {self.previous} stays live "
                "(--force promotes it anyway)"
            )
        else:
            lines.append(
                f"{'promoted' if c.passes else 'promoted (forced)'} {self.version} "
                f"(was {self.previous or 'the bundled model'}); running shards switch to it "
                "between batches"
            )
        return lines

    def summary(self) -> dict[str, Any]:
        """For the console and the audit log: the decision, the previous version, the figures."""
        return {
            "version": self.version,
            "previous": self.previous,
            **self.check.record(self.decision),
        }


def promote_guarded(
    reg: Any,
    version: str,
    rows: Callable[[], tuple[pd.DataFrame, str]],
    *,
    force: bool = False,
    test_frac: float = 0.2,
    auc_tolerance: float = AUC_TOLERANCE,
    brier_tolerance: float = BRIER_TOLERANCE,
) -> Promotion:
    """Promote ``version`` in the registry ``reg`` unless the guard refuses; record either way.

    What ``lifeline promote`` and the console's promote and roll-back do.
    Without ``force``, a model of another feature schema than this code's
    raises :class:`training.registry.SchemaMismatch` before anything is
    measured; with it, a refusal becomes a promotion whose record says
    ``forced``. ``rows`` as for :func:`check`.
    """
    raw, meta = reg.load(version)
    if not force and meta.get("feature_schema") != FEATURE_SCHEMA_HASH:
        reg.promote(version, expected_schema=FEATURE_SCHEMA_HASH)  # raises SchemaMismatch
    live_version = reg.live()
    live = Model(*reg.load(live_version), live_version) if live_version else None
    result = check(
        Model(raw, meta, version),
        live,
        rows,
        test_frac=test_frac,
        auc_tolerance=auc_tolerance,
        brier_tolerance=brier_tolerance,
    )
    if result.passes or force:
        decision = PROMOTED if result.passes else FORCED
        reg.promote(
            version,
            expected_schema=None if force else FEATURE_SCHEMA_HASH,
            check=result.record(decision),
        )
    else:
        decision = REFUSED
        reg.record_refusal(version, result.record(decision))
    return Promotion(version, live_version, decision, result)


def live_rows(r: Any, prefix: str) -> tuple[pd.DataFrame, str]:
    """The live event log's sessions as rows (``rows`` for :func:`check`); :class:`NoRows` if empty.

    Replayed in this process (``training.dataset.rows_frame``): seconds for
    a few thousand sessions, which a console request waits for.
    """
    import time

    from training.dataset import export_redis, rows_frame

    sessions = export_redis(r, prefix, read_at_ms=int(time.time() * 1000))
    if not sessions:
        raise NoRows("the live event log has no sessions")
    return rows_frame(sessions), "live"
