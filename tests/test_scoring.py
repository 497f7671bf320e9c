"""Scoring goes through XGBoost's C API directly: same scores as inplace_predict, no garbage."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from actors.features import N_FEATURES
from actors.scoring import Scorer


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
