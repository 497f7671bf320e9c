"""Feature drift: population stability index (PSI) of each feature, live rows against a reference.

What it is for: telling whether the traffic a model scores now still looks
like the traffic it learned from. At training time :func:`reference_of`
summarises the training rows per feature (bin edges from the training
rows' quantiles, the share of rows in each bin, the mean) small enough to
keep in the model's metadata (``meta["drift_reference"]``), so that drift
can be checked later without the raw training data. :func:`drift_table`
puts other rows (the live event log's) into the same bins and computes,
per feature,

    PSI = sum over bins of (live_share - ref_share) * ln(live_share / ref_share)

Reading it (the credit-scoring conventions, rules of thumb rather than
tests): below 0.1 the distribution has not changed much; 0.1 to 0.25 it
has changed moderately, worth a look; above 0.25 it has shifted a lot, and
a model trained on the reference rows may no longer be right for it.

Bins: the reference's deciles (and its minimum and maximum) as edges, with
repeated edges merged, so a count that is mostly zero gets a bin of its own
for the zeros. Bins are closed on the right: ``(-inf, min], (min, q1], ...,
(q9, max], (max, inf)``. The last bin is empty in the reference and catches
live values above anything seen in training; a feature that was constant in
training has two bins, its value and above it, so live values that leave
the constant show up. Empty bins are floored at ``EPSILON`` (1e-4) on both
sides so the logarithm stays finite (an empty reference bin that fills up
live then contributes a large, finite amount).

Limits: values below the reference's minimum fall into its first bin
(the features here are counts, durations and flags: never below 0 in
practice); PSI measures a change of each feature's marginal distribution,
not of their relations, nor of the label; a small live sample (a few
hundred rows) has noisy PSI of its own. Pure: numpy and pandas only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_FORMAT = "lifeline-drift-reference/1"
QUANTILES: tuple[float, ...] = tuple(i / 10 for i in range(11))  # min, deciles, max
MAX_REFERENCE_ROWS = 50_000  # larger references are summarised from evenly spaced rows
EPSILON = 1e-4  # floor of a bin's share, so that ln(live / ref) stays finite
MODERATE = 0.1  # PSI at or above: a moderate change, worth a look
MAJOR = 0.25  # PSI at or above: a major shift


@dataclass(frozen=True)
class FeatureBins:
    """One feature of a reference: right-closed bin edges and the reference's share per bin.

    ``shares`` has ``len(edges) + 1`` entries: ``(-inf, edges[0]]``, then
    ``(edges[i-1], edges[i]]``, then ``(edges[-1], inf)``.
    """

    edges: tuple[float, ...]
    shares: tuple[float, ...]
    mean: float


@dataclass(frozen=True)
class Reference:
    """Per-feature bins and shares of a reference rows frame (a model's training rows).

    ``rows``: how many rows the reference had.
    """

    rows: int
    features: dict[str, FeatureBins]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in a model's metadata as ``drift_reference``."""
        return {
            "format": REFERENCE_FORMAT,
            "rows": self.rows,
            "bins": "right-closed: (-inf, e0], (e0, e1], ..., (e_last, inf)",
            "features": {
                name: {"edges": list(b.edges), "shares": list(b.shares), "mean": b.mean}
                for name, b in self.features.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        """Read :meth:`to_dict`'s form back; refuses another format."""
        if d.get("format") != REFERENCE_FORMAT:
            raise ValueError(
                f"drift reference format {d.get('format')!r}; expected {REFERENCE_FORMAT!r}"
            )
        feats = {
            name: FeatureBins(tuple(f["edges"]), tuple(f["shares"]), float(f["mean"]))
            for name, f in d["features"].items()
        }
        return cls(int(d["rows"]), feats)


def _values(df: pd.DataFrame, name: str) -> np.ndarray:
    v = df[name].to_numpy(dtype=np.float64)
    return v[np.isfinite(v)]


def bin_shares(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The share of ``values`` in each right-closed bin of ``edges`` (``len(edges) + 1`` bins)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(len(values), 1)


def feature_bins(values: np.ndarray) -> FeatureBins:
    """Bins of one reference feature from its quantiles (see the module doc)."""
    if len(values) == 0:
        raise ValueError("no finite reference values: cannot bin the feature")
    edges = np.unique(np.quantile(values, QUANTILES))
    shares = bin_shares(values, edges)
    return FeatureBins(
        tuple(float(e) for e in edges),
        tuple(round(float(s), 6) for s in shares),
        round(float(values.mean()), 6),
    )


def reference_of(df: pd.DataFrame, features: Iterable[str]) -> Reference:
    """Summarise the reference rows (a model's training rows) per feature.

    Of more than ``MAX_REFERENCE_ROWS`` rows, that many evenly spaced ones
    are summarised (deterministic; a bin's share is then off by ~0.002 at
    most, far below what PSI reacts to, and it keeps this at ~0.2 s). A
    feature without a finite value is left out (there is nothing to bin).
    """
    if len(df) == 0:
        raise ValueError("an empty rows frame cannot be a drift reference")
    n = len(df)
    if n > MAX_REFERENCE_ROWS:
        df = df.iloc[np.linspace(0, n - 1, MAX_REFERENCE_ROWS).astype(np.int64)]
    values = {f: _values(df, f) for f in features}
    return Reference(n, {f: feature_bins(v) for f, v in values.items() if len(v)})


def psi(ref_shares: Sequence[float], live_shares: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same bins (module doc)."""
    e = np.clip(np.asarray(ref_shares, dtype=np.float64), EPSILON, None)
    a = np.clip(np.asarray(live_shares, dtype=np.float64), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def status(value: float) -> str:
    """``stable`` below 0.1, ``moderate`` to 0.25, ``major`` from 0.25 (module doc)."""
    if not math.isfinite(value):
        return "unknown"
    return "major" if value >= MAJOR else "moderate" if value >= MODERATE else "stable"


def drift_table(reference: Reference, live: pd.DataFrame) -> pd.DataFrame:
    """PSI per feature of ``live`` against ``reference``, largest first.

    Columns: ``feature``, ``psi``, ``status``, ``ref_mean``, ``live_mean``.
    Features of the reference that ``live`` lacks are left out (a model of
    another feature schema); an empty ``live`` is refused.
    """
    if len(live) == 0:
        raise ValueError("no live rows to compare with the reference")
    rows = []
    for name, b in reference.features.items():
        if name not in live.columns:
            continue
        v = _values(live, name)
        value = psi(b.shares, bin_shares(v, b.edges)) if len(v) else float("nan")
        rows.append(
            {
                "feature": name,
                "psi": value,
                "status": status(value),
                "ref_mean": b.mean,
                "live_mean": float(v.mean()) if len(v) else float("nan"),
            }
        )
    table = pd.DataFrame(rows, columns=["feature", "psi", "status", "ref_mean", "live_mean"])
    return table.sort_values(
        ["psi", "feature"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)


def _counts(table: pd.DataFrame) -> dict[str, int]:
    return {s: int((table["status"] == s).sum()) for s in ("major", "moderate", "stable")}


def drift_json(
    table: pd.DataFrame, *, reference: str, compared: str, live_rows: int
) -> dict[str, Any]:
    """The drift check as a JSON entry for a model's metadata (``meta["drift"]``)."""
    return {
        "reference": reference,
        "compared": compared,
        "live_rows": live_rows,
        "thresholds": {"moderate": MODERATE, "major": MAJOR},
        "max_psi": round(float(table["psi"].max()), 5) if len(table) else None,
        "counts": _counts(table),
        "psi": {f: round(float(p), 5) for f, p in zip(table["feature"], table["psi"], strict=True)},
    }


def drift_markdown(
    table: pd.DataFrame, *, reference: str, compared: str, live_rows: int, top: int = 15
) -> str:
    """The "Drift" section of a report: what was compared, and the ``top`` features by PSI."""
    c = _counts(table)
    lines = [
        "## Drift (population stability index per feature)",
        "",
        f"Reference: {reference}. Compared: {compared} ({live_rows} rows). Bins: the "
        "reference's deciles; PSI below 0.1 = stable, 0.1 to 0.25 = moderate change, "
        "0.25 and above = major shift (rules of thumb; see `training/drift.py`).",
        "",
        f"{c['major']} features with a major shift, {c['moderate']} moderate, "
        f"{c['stable']} stable. The {min(top, len(table))} largest:",
        "",
        "| feature | PSI | status | reference mean | live mean |",
        "|---|---|---|---|---|",
    ]
    for _, r in table.head(top).iterrows():
        lines.append(
            f"| `{r['feature']}` | {r['psi']:.3f} | {r['status']} | {r['ref_mean']:.3g} "
            f"| {r['live_mean']:.3g} |"
        )
    return "\n".join(lines) + "\n"
