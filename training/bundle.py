"""The bundled demo model: what the shards score with before anyone has trained a model.

``build_bundled_model`` simulates journeys, replays them through the live
session code, trains a small XGBoost exit-risk model and writes
``bundled.ubj`` (``Booster.save_raw("ubj")``) and ``bundled.json`` (the same
metadata the registry stores, plus the segment centroids). The shards load
``actors/model/bundled/bundled.ubj`` when the registry has no live model.

The model's output is the class-balanced exit risk (``meta["score"] ==
"balanced"``): 0.5 = the exit odds of an average training row, the policy's
0.75 = three times those odds. The calibrated probability is
``sigmoid(logit(score) + logit(meta["base_rate"]))`` (``training.train.calibrated``).

Limits: trained on synthetic traffic only, so its scores mean "looks like the
simulator's abandoning journeys"; train on recorded traffic (``lifeline
train --source redis``) for a real site. 6,000 journeys (~300k rows) because
the scores of short, specific journeys are noisy with fewer; runs locally
without Ray in ~25 s on 2 cores (replay ~half of it), well under a minute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from training.dataset import from_journeys, rows_frame
from training.simulator import simulate
from training.train import XGBParams, train_and_evaluate

BUNDLED_PARAMS = XGBParams(max_depth=4, eta=0.1, num_boost_round=300, early_stopping_rounds=25)


def build_bundled_model(out_dir: Path, n_journeys: int = 6000, seed: int = 7) -> dict:
    """Simulate, replay, train; write ``out_dir/bundled.{ubj,json}``; return the metadata."""
    from training.segments import fit_segments  # local: keeps import of this module light

    t0 = time.monotonic()
    sessions = from_journeys(simulate(n_journeys, seed=seed))
    df = rows_frame(sessions)
    run = train_and_evaluate(
        df,
        name="bundled",
        data={
            "source": "simulator",
            "journeys": n_journeys,
            "seed": seed,
            "rows": len(df),
            "sessions": len(sessions),
        },
        params=BUNDLED_PARAMS,
        bootstrap=0,
    )
    meta: dict[str, Any] = run.meta()
    meta["segments"] = fit_segments(df, seed=seed).to_dict()
    meta["version"] = f"bundled-sim{n_journeys}-s{seed}"
    meta["build_seconds"] = round(time.monotonic() - t0, 2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bundled.ubj").write_bytes(run.xgb_model.to_bytes())
    (out_dir / "bundled.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta
