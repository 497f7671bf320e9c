"""How shards are started or found (cluster/shard_actors.py), and what a shard process imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.shard_actors import (
    PLACED_MEMORY,
    Placement,
    next_index,
    shard_index,
    shard_name,
    spread,
)

ROOT = Path(__file__).resolve().parent.parent


def test_names_and_numbers_round_trip_and_numbers_are_never_reused():
    assert shard_name(3) == "lifeline-shard-3"
    assert shard_index(shard_name(12, "-ab12cd")) == 12
    # After removing shard 1 of 0..3, the next is 4, not 3 (a name in use) or 1.
    assert next_index(["lifeline-shard-0", "lifeline-shard-2", "lifeline-shard-3"]) == 4
    assert next_index([]) == 0
    with pytest.raises(ValueError):
        shard_index("something-else-0")


def test_local_shards_end_with_the_driver_and_joined_ones_are_detached_and_spread():
    assert Placement().options("lifeline-shard-0") == {"name": "lifeline-shard-0", "lifetime": None}
    joined = Placement(detached=True, namespace="lifeline").options("lifeline-shard-0")
    assert joined["lifetime"] == "detached" and joined["namespace"] == "lifeline"
    assert joined["get_if_exists"] is True and joined["memory"] == PLACED_MEMORY > 0
    # Round robin over the working nodes, soft (Ray moves a shard off a lost node).
    nodes = [c * 56 for c in "abc"]  # node ids are 56 hex digits
    picks = [spread(i, nodes) for i in range(5)]
    assert [p.node_id for p in picks] == [nodes[i] for i in (0, 1, 2, 0, 1)]
    assert all(p.soft for p in picks)
    assert spread(0, []) == "SPREAD"
    assert Placement().find("lifeline-shard-0") is None  # a local run never adopts


def test_a_shard_process_does_not_import_scikit_learn():
    """xgboost would import it (with SciPy's stats and pandas): seconds of every shard restart.

    In a process of its own that Ray would see as a worker (the mode a shard's
    process has when it imports the actor's module); a driver is untouched.
    """
    probe = (
        "import sys, ray._private.worker as w\n"
        "w.global_worker.mode = w.WORKER_MODE if sys.argv[1] == 'worker' else w.SCRIPT_MODE\n"
        "import actors.shard.actor, xgboost\n"
        "print(sys.modules.get('sklearn', 'absent') is None, 'scipy.stats' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    worker, driver = (
        subprocess.run(
            [sys.executable, "-c", probe, mode], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for mode in ("worker", "driver")
    )
    assert worker == ["True", "False"]  # kept out, and SciPy's stats with it
    assert driver == ["False", "True"]  # a driver (tests, training) keeps scikit-learn
