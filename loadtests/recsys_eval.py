"""Offline evaluation of the recommender: next-click Recall@20 / MRR@20 vs POP and item kNN.

Usage: ``python loadtests/recsys_eval.py [--no-tune] [--json out.json]``

YOOCHOOSE sample with its last day held out (the GRU4Rec protocol), and the
Diginetica sample with its last 7 days held out (with product categories);
the blend's parameters are chosen on a validation day carved from the
training days. All methods are fitted on the same training sessions in the
same run. Prints Markdown tables for BENCHMARKS.md. About 50 s on one core.

``python loadtests/recsys_eval.py --returning [--no-model] [--json out.json]``:
returning visitors instead (Taobao, the only data with users across sessions):
Recall@20 of a visitor's first clicks of a new session with and without their
profile's items, against popularity, with 95 % intervals; the profile's size per
visitor; the exit-risk model with and without the returning features
(training/returning_eval.py). About 15 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.recommender_data import main  # noqa: E402
from training.returning_eval import main as returning_main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--returning" in args:
        raise SystemExit(returning_main([a for a in args if a != "--returning"]))
    raise SystemExit(main(["eval", *args]))
