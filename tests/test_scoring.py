"""Scoring goes through XGBoost's C API directly: same scores as inplace_predict, no garbage."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from actors.core.features import N_FEATURES
from actors.model.scoring import Scorer


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.bundled()


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_scores_equal_inplace_predict(scorer, rows):
    rng = np.random.default_rng(rows)
    x = rng.random((rows, N_FEATURES), dtype=np.float32) * rng.integers(1, 50, N_FEATURES)
    x[0, 3] = np.nan  # missing values are handled as XGBoost handles them
    expected = scorer.booster.inplace_predict(x, validate_features=False)
    got = scorer(x.tolist())
    assert got.shape == (rows,)
    np.testing.assert_array_equal(got, expected)


def test_rows_of_ints_and_floats_score_as_numpy_reads_them(scorer):
    """Rows are packed to float32 without NumPy: the same values, even past float32's range."""
    rng = np.random.default_rng(5)
    rows = [
        [int(v) if j % 3 == 0 else float(v) for j, v in enumerate(r)]
        for r in (rng.random((9, N_FEATURES)) * 400).tolist()
    ]
    rows[1][2] = 0.1 + 1e-9  # not exact in float32: rounded the same way
    expected = scorer.booster.inplace_predict(
        np.asarray(rows, dtype=np.float32), validate_features=False
    )
    np.testing.assert_array_equal(scorer(rows), expected)
    rows[4][5] = 1e300  # NumPy makes this inf; struct would refuse it
    with np.errstate(over="ignore"):
        expected = scorer.booster.inplace_predict(
            np.asarray(rows, dtype=np.float32), validate_features=False
        )
    np.testing.assert_array_equal(scorer(rows), expected)
    assert scorer(np.asarray(rows[:3], dtype=np.float32)).shape == (3,)


def test_an_empty_batch_scores_nothing(scorer):
    assert scorer([]).shape == (0,)


def test_scoring_leaves_no_cyclic_garbage(scorer):
    """The Python wrapper left 25 objects in reference cycles per call: long GC pauses."""
    rows = np.random.default_rng(0).random((8, N_FEATURES)).tolist()
    scorer(rows)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(200):
            scorer(rows)
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()
