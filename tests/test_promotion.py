"""The promotion guard's verdicts (training/promotion.py) and where the registry keeps them."""

from __future__ import annotations

import pytest
import redis

from training.dataset import from_journeys, rows_frame
from training.promotion import (
    NO_LIVE_MODEL,
    NOT_COMPARABLE,
    NOT_WORSE,
    WORSE,
    Model,
    NoRows,
    check,
    overlap_notes,
)
from training.registry import ModelRegistry, UnknownVersion
from training.simulator import simulate
from training.train import XGBParams, train_and_evaluate

FAST = XGBParams(max_depth=3, eta=0.2, num_boost_round=30, early_stopping_rounds=5)


@pytest.fixture(scope="module")
def rows():
    return rows_frame(from_journeys(simulate(80, seed=5)))


@pytest.fixture(scope="module")
def model(rows) -> Model:
    run = train_and_evaluate(rows, name="guard", data={"source": "sim"}, params=FAST, bootstrap=0)
    return Model(run.xgb_model.to_bytes(), run.meta(), "v0001-aaaaaaaa")


def _never():
    raise AssertionError("the rows are not needed for this verdict")


def test_nothing_to_compare_with_passes_without_reading_rows(model: Model) -> None:
    c = check(model, None, _never)
    assert c.verdict == NO_LIVE_MODEL and c.passes and c.figures == {}
    stale = Model(model.raw, {**model.meta, "feature_schema": "0" * 16}, "v0000-old")
    c = check(model, stale, _never)
    assert c.verdict == NO_LIVE_MODEL and c.passes and "another feature schema" in c.reasons[0]


def test_models_that_cannot_be_compared_are_refused(model: Model) -> None:
    other_schema = Model(model.raw, {**model.meta, "feature_schema": "0" * 16}, "v0002-x")
    c = check(other_schema, model, _never)
    assert c.verdict == NOT_COMPARABLE and not c.passes
    other_label = Model(model.raw, {**model.meta, "label_definition": "no_purchase"}, "v0002-y")
    c = check(other_label, model, _never)
    assert c.verdict == NOT_COMPARABLE and "not comparable" in c.reasons[0]
    longer = Model(model.raw, {**model.meta, "horizon_s": 1200}, "v0002-z")
    assert check(longer, model, _never).verdict == NOT_COMPARABLE

    def no_rows():
        raise NoRows("--source live gave no sessions")

    c = check(Model(model.raw, model.meta, "v0002-w"), model, no_rows)
    assert c.verdict == NOT_COMPARABLE and "no held-back rows" in c.reasons[0]
    assert "gave no sessions" in c.reasons[0]


def test_figures_on_the_same_rows_decide(model: Model, rows) -> None:
    twin = Model(model.raw, model.meta, "v0002-bbbbbbbb")
    c = check(twin, model, lambda: (rows, "sim"), test_frac=0.25)
    assert c.verdict == NOT_WORSE and c.passes
    assert c.figures[twin.version] == c.figures[model.version]  # same booster, same rows
    assert c.held_back["source"] == "sim" and c.held_back["sessions"] == 20
    # Against itself with a negative tolerance the same figures count as worse.
    c = check(twin, model, lambda: (rows, "sim"), auc_tolerance=-0.01, brier_tolerance=-0.01)
    assert c.verdict == WORSE and not c.passes and len(c.reasons) == 2
    rec = c.record("refused")
    assert rec["decision"] == "refused" and rec["verdict"] == WORSE
    assert set(rec["figures"]) == {twin.version, model.version}
    assert rec["tolerance"] == {"roc_auc": -0.01, "brier": -0.01}


def test_overlap_is_noted_for_the_same_time_ordered_source(model: Model) -> None:
    live = Model(
        model.raw,
        {**model.meta, "data": {"source": "redis"}, "split": {"test_from_ms": 2_000}},
        "v0001-live",
    )
    notes = overlap_notes([live], "live", 1_000)
    assert len(notes) == 1 and "v0001-live" in notes[0] and "optimistic" in notes[0]
    assert overlap_notes([live], "live", 3_000) == []
    assert overlap_notes([live], "taobao", 1_000) == []


def test_registry_keeps_the_guards_decisions(redis_url: str, prefix: str, model: Model) -> None:
    reg = ModelRegistry(redis.Redis.from_url(redis_url), prefix)
    v1 = reg.save(model.raw, model.meta)
    v2 = reg.save(model.raw, model.meta)
    reg.promote(v1, check={"decision": "promoted", "verdict": NO_LIVE_MODEL})
    reg.record_refusal(v2, {"decision": "refused", "verdict": WORSE})
    assert reg.live() == v1  # a refusal moves nothing
    refused, promoted = reg.history()
    assert refused == {
        "version": v2,
        "previous": v1,
        "at_ms": refused["at_ms"],
        "refused": True,
        "check": {"decision": "refused", "verdict": WORSE},
    }
    assert promoted["version"] == v1 and promoted["check"]["decision"] == "promoted"
    assert "refused" not in promoted
    with pytest.raises(UnknownVersion):
        reg.record_refusal("v0099-nope", {})
