"""What the exit-risk model predicts: the label of each row, declared once.

Two definitions, both computed from a rows frame's session outcome and
timing columns (``training.dataset``):

* ``exit_soon`` (the model's label): 1 when the visitor leaves within
  ``horizon_s`` of this event without having converted, that is, the
  session's last event is at most ``horizon_s`` later and the session has no
  purchase. This is the outcome an intervention shown now can change: the
  visitor is about to go. Its probability moves with what the visitor does,
  so a threshold on it means what it says ("80 % likely to be gone within
  ten minutes without buying").
* ``no_purchase``: 1 when the session ends without a purchase, whatever
  comes first. On real shops this sits at 95-97 % for nearly every row, so a
  calibrated probability of it barely separates visitors; kept for
  comparison (the training report measures both).

A session cut off by the end of a recording window (``observed_ms``: until
when the absence of events is known) may have gone on: a row whose
``exit_soon`` label would be 1 only because nothing was recorded after the
window is unknown, and :func:`apply_label` drops it. The session gap that
ends a session is 30 minutes (``training.loaders.SESSION_GAP_MS``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from training.loaders import SESSION_GAP_MS

if TYPE_CHECKING:  # the CLI imports the names below; NumPy and pandas wait until a label is made
    import numpy as np
    import pandas as pd

EXIT_SOON = "exit_soon"
NO_PURCHASE = "no_purchase"
LABELS = (EXIT_SOON, NO_PURCHASE)
DEFAULT_HORIZON_S = 600
UNKNOWN = -2  # a censored row: its label depends on what happened after the recording


def describe(definition: str, horizon_s: float = DEFAULT_HORIZON_S) -> str:
    """The label in words, for reports and model metadata."""
    if definition == EXIT_SOON:
        return (
            f"1 = the visitor leaves within {horizon_s / 60:g} minutes of this event without "
            "converting (the session's last event is at most that much later, and no purchase)"
        )
    if definition == NO_PURCHASE:
        return "1 = the session ends without a purchase"
    raise ValueError(f"unknown label {definition!r}; expected one of {', '.join(LABELS)}")


def exit_labels(
    df: pd.DataFrame,
    definition: str = EXIT_SOON,
    horizon_s: float = DEFAULT_HORIZON_S,
    gap_ms: int = SESSION_GAP_MS,
) -> np.ndarray:
    """One label per row: 1, 0, -1 (the source has no purchase label) or :data:`UNKNOWN`.

    ``df["label"]`` must hold the session outcome (1 = no purchase) as the
    rows frame builds it.
    """
    import numpy as np

    describe(definition, horizon_s)  # refuses an unknown definition
    outcome = df["label"].to_numpy()
    if definition == NO_PURCHASE:
        return outcome.copy()
    ts = df["ts_ms"].to_numpy()
    end = df["end_ms"].to_numpy()
    leaves = (outcome == 1) & (end - ts <= horizon_s * 1000.0)
    censored = leaves & (end + gap_ms > df["observed_ms"].to_numpy())
    labels = np.where(leaves, 1, 0)
    labels = np.where(censored, UNKNOWN, labels)
    return np.where(outcome < 0, -1, labels)


def apply_label(
    df: pd.DataFrame, definition: str = EXIT_SOON, horizon_s: float = DEFAULT_HORIZON_S
) -> pd.DataFrame:
    """``df`` with ``label`` set to ``definition`` and its unknown rows left out.

    The session outcome moves to ``converted`` (1 = the session bought).
    """
    import numpy as np

    labels = exit_labels(df, definition, horizon_s)
    out = df.assign(converted=np.where(df["label"] < 0, -1, 1 - df["label"]), label=labels)
    return out[labels != UNKNOWN].reset_index(drop=True)
