"""Keep scikit-learn out of a shard's process: it is a third of what a shard restart waits for.

``import xgboost`` imports scikit-learn when it is installed, only to offer
xgboost's scikit-learn estimators, and with it SciPy and pandas. Shards use
none of it (they call XGBoost's C prediction function; actors/model/scoring.py),
yet every shard process paid for it at start: ~2.6 s of CPU of the ~3.6 s
that ``import actors.shard.actor`` took, measured, and a restarted shard (a
crash, a lost node: tests/test_multinode.py) serves nothing until its
process has imported. Marking the package absent makes xgboost fall back to
its own stand-ins (its documented behaviour without scikit-learn).

Only in a Ray worker process that has not imported scikit-learn already (the
shard's own): drivers, tests, training and Serve replicas are untouched.
Imported by actors/shard/actor.py before anything imports xgboost.
"""

from __future__ import annotations

import sys


def keep_sklearn_out() -> bool:
    """Mark scikit-learn absent in this process if it is a Ray worker; whether it did."""
    import ray._private.worker as ray_worker

    if "sklearn" in sys.modules or ray_worker.global_worker.mode != ray_worker.WORKER_MODE:
        return False
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` now fails fast
    return True


keep_sklearn_out()
