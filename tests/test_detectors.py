"""Struggle detectors against hand-computed cases."""

from __future__ import annotations

import pytest

from actors.core.detectors import DetectorConfig, decay, is_rage_step, is_thrash

CFG = DetectorConfig()


def test_rage_step_needs_time_and_distance():
    assert is_rage_step(0, 100, 100, 1000, 118, 124, CFG)  # 1000 ms, 30 px: both at the limit
    assert not is_rage_step(0, 100, 100, 1001, 100, 100, CFG)  # too slow
    assert not is_rage_step(0, 100, 100, 200, 131, 100, CFG)  # 31 px away


def test_rage_step_29_7px_is_inside():
    assert is_rage_step(0, 0, 0, 10, 21, 21, CFG) is True  # hypot(21, 21) = 29.7


@pytest.mark.parametrize(
    ("turns", "thrash"),
    [
        ([0, 50, 100, 150, 200], True),  # 5 changes in 200 ms: more than 4 within 225
        ([0, 50, 100, 150, 226], False),  # the fifth is 226 ms after the first
        ([0, 50, 100, 150], False),  # only 4
        ([500, 0, 50, 100, 150, 200, 900], True),  # order does not matter: 0..200 holds 5 changes
        ([0, 60, 120, 180, 240], False),  # 5 changes, but spread over 240 ms
        ([], False),
    ],
)
def test_thrash(turns, thrash):
    assert is_thrash(turns, CFG) is thrash


def test_thrash_threshold_is_configurable():
    assert is_thrash([0, 100, 200], DetectorConfig(thrash_turns=2, thrash_window_ms=200))
    assert not is_thrash([0, 100, 201], DetectorConfig(thrash_turns=2, thrash_window_ms=200))


def test_decay_halves_per_half_life():
    assert decay(4.0, 60_000, 60.0) == pytest.approx(2.0)
    assert decay(4.0, 0, 60.0) == 4.0
    assert decay(1.0, 120_000, 60.0) == pytest.approx(0.25)


def test_config_from_mapping_rejects_unknown_keys():
    assert DetectorConfig.from_mapping({"rage_clicks": 4}).rage_clicks == 4
    with pytest.raises(ValueError, match="rage_clikcs"):
        DetectorConfig.from_mapping({"rage_clikcs": 4})
