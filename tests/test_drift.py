"""Population stability index per feature (training/drift.py): pure, no Redis or Ray."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from training.drift import (
    EPSILON,
    MAJOR,
    MODERATE,
    Reference,
    bin_shares,
    drift_json,
    drift_markdown,
    drift_table,
    psi,
    reference_of,
    status,
)

FEATURES = ["count", "duration", "flag", "constant"]


def frame(n: int, seed: int, *, shift: float = 0.0, flag_rate: float = 0.2) -> pd.DataFrame:
    """Rows like a session's: a mostly-zero count, a skewed duration, a flag, a constant."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "count": rng.poisson(0.7 + shift, n).astype(float),
            "duration": rng.lognormal(2.0 + shift, 1.0, n),
            "flag": (rng.random(n) < flag_rate).astype(float),
            "constant": np.zeros(n),
        }
    )


def test_identical_and_same_distribution_are_stable() -> None:
    ref_rows = frame(20_000, seed=1)
    ref = reference_of(ref_rows, FEATURES)
    same = drift_table(ref, ref_rows)
    assert same["psi"].abs().max() < 1e-4  # only the rounding of the stored shares
    fresh = drift_table(ref, frame(5_000, seed=2))  # another sample of the same distribution
    assert fresh["psi"].max() < 0.02, fresh
    assert set(fresh["status"]) == {"stable"}


def test_a_shifted_distribution_is_a_major_shift() -> None:
    ref = reference_of(frame(20_000, seed=1), FEATURES)
    shifted = frame(5_000, seed=3, shift=1.0, flag_rate=0.6)
    table = drift_table(ref, shifted)
    by = dict(zip(table["feature"], table["psi"], strict=True))
    assert by["duration"] > MAJOR and by["count"] > MAJOR and by["flag"] > MAJOR
    assert by["constant"] < 1e-9  # still zero everywhere
    # Sorted largest first, each with its status and the means behind it.
    assert list(table["psi"]) == sorted(table["psi"], reverse=True)
    assert table.loc[0, "status"] == "major"
    row = table.set_index("feature").loc["duration"]
    assert row["live_mean"] > row["ref_mean"] * 2


def test_a_feature_constant_in_training_still_shows_a_change() -> None:
    ref_rows = frame(2_000, seed=1)
    ref = reference_of(ref_rows, FEATURES)
    bins = ref.features["constant"]
    assert bins.edges == (0.0,) and bins.shares == (1.0, 0.0)
    live = ref_rows.copy()
    live.loc[: len(live) // 3, "constant"] = 2.0  # a third of live rows leave the constant
    value = drift_table(ref, live).set_index("feature").loc["constant", "psi"]
    assert math.isfinite(value) and value > MAJOR


def test_empty_bins_are_floored_and_formula_is_psi() -> None:
    # The textbook formula on two share vectors, with empty bins floored at EPSILON.
    expected = [0.5, 0.5, 0.0]
    actual = [0.25, 0.5, 0.25]
    want = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.25 - EPSILON) * math.log(0.25 / EPSILON)
    assert psi(expected, actual) == pytest.approx(want)
    assert psi(actual, actual) == 0.0
    # Right-closed bins: (-inf, 0], (0, 1], (1, inf).
    assert list(bin_shares(np.array([-1.0, 0.0, 0.5, 1.0, 7.0]), [0.0, 1.0])) == [0.4, 0.4, 0.2]
    assert status(0.05) == "stable" and status(MODERATE) == "moderate" and status(MAJOR) == "major"
    assert status(float("nan")) == "unknown"


def test_reference_round_trips_through_json_and_reports() -> None:
    ref_rows = frame(3_000, seed=4)
    ref = reference_of(ref_rows, FEATURES)
    stored = json.loads(json.dumps(ref.to_dict()))
    again = Reference.from_dict(stored)
    assert again == ref and again.rows == 3_000
    live = frame(1_000, seed=5, shift=0.5)
    table = drift_table(again, live)
    assert table.equals(drift_table(ref, live))
    entry = drift_json(table, reference="training rows", compared="live", live_rows=len(live))
    assert json.loads(json.dumps(entry)) == entry
    assert list(entry["psi"]) == list(table["feature"])  # largest first
    assert entry["thresholds"] == {"moderate": 0.1, "major": 0.25}
    assert entry["max_psi"] == pytest.approx(table["psi"].max(), abs=1e-5)
    md = drift_markdown(table, reference="training rows", compared="live", live_rows=len(live))
    assert md.startswith("## Drift") and "| `duration` |" in md and "1000 rows" in md
    with pytest.raises(ValueError, match="format"):
        Reference.from_dict({"format": "other"})
    with pytest.raises(ValueError, match="no live rows"):
        drift_table(ref, live.iloc[:0])
    # A live frame without a feature (another schema) is compared on what it has.
    assert set(drift_table(ref, live.drop(columns=["flag"]))["feature"]) == {
        "count",
        "duration",
        "constant",
    }


def test_large_references_are_summarised_from_evenly_spaced_rows() -> None:
    big = frame(120_000, seed=6)
    ref = reference_of(big, FEATURES)
    assert ref.rows == 120_000
    assert drift_table(ref, big)["psi"].max() < 1e-3
