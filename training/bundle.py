"""The bundled demo model: what the shards score with before anyone has trained a model.

``build_bundled_model`` loads the real Taobao and Diginetica sessions
(``../shared/data``), simulates journeys (the only source of struggle
events), replays all of them through the live session code, trains an
XGBoost exit-risk model and writes ``bundled.ubj`` (``Booster.save_raw("ubj")``)
and ``bundled.json`` (the same metadata the registry stores, plus the
segment centroids). The shards load ``actors/model/bundled/bundled.ubj``
when the registry has no live model.

The model's output is a calibrated probability: that the visitor leaves
within ten minutes without converting (``training.labels``). Segments are
fitted on the simulated sessions only: the real data holds page views and
carts, and its one-page visits would crowd out every other segment.

Limits: the real data are two small public samples of other shops; train on
recorded traffic (``lifeline train --source redis``) for a real site. Runs
locally without Ray in about a minute on 2 cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from training.dataset import from_journeys, rows_frame
from training.loaders import default_data_dir, load_diginetica, load_taobao
from training.simulator import simulate
from training.train import XGBParams, train_and_evaluate

BUNDLED_PARAMS = XGBParams(max_depth=5, eta=0.08, num_boost_round=400, early_stopping_rounds=30)


def build_bundled_model(
    out_dir: Path,
    n_journeys: int = 6000,
    seed: int = 7,
    data_dir: Path | None = None,
    real_limit: int | None = None,
    bootstrap: int = 100,
) -> dict:
    """Load, simulate, replay, train; write ``out_dir/bundled.{ubj,json}``; return the metadata.

    ``real_limit``: at most this many sessions of each real data set (quick builds in tests);
    ``bootstrap``: resamples of the test sessions for the intervals in the metadata (0: none).
    """
    from training.segments import fit_segments  # local: keeps import of this module light

    t0 = time.monotonic()
    root = data_dir or default_data_dir()
    real = load_taobao(
        root / "taobao" / "user-behavior.csv", limit_sessions=real_limit
    ) + load_diginetica(root / "diginetica", limit_sessions=real_limit)
    simulated = from_journeys(simulate(n_journeys, seed=seed))
    df = rows_frame(real + simulated)
    run = train_and_evaluate(
        df,
        name="bundled",
        data={
            "source": "mix",
            "files": [
                "taobao/user-behavior.csv",
                "diginetica/train-item-views.csv",
                "diginetica/train-purchases.csv",
            ],
            "journeys": n_journeys,
            "seed": seed,
            "rows": len(df),
            "sessions": len(real) + len(simulated),
        },
        params=BUNDLED_PARAMS,
        bootstrap=bootstrap,
    )
    meta: dict[str, Any] = run.meta()
    meta["segments"] = fit_segments(df[df["source"] == "simulator"], seed=seed).to_dict()
    meta["version"] = f"bundled-mix-sim{n_journeys}-s{seed}"
    meta["build_seconds"] = round(time.monotonic() - t0, 2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bundled.ubj").write_bytes(run.xgb_model.to_bytes())
    (out_dir / "bundled.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta
