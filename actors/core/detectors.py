"""Struggle detectors: the thresholds and the small pure functions that apply them.

Defaults follow the best public tools so operators get behaviour they know:
rage click = 3 clicks, each within 1 s and 30 px of the previous, skipping
text inputs and stepper buttons (PostHog); thrashed cursor = more than 4
horizontal direction changes within 225 ms (OpenReplay); dead click = the
page did not react within the client's window (the client measures it and
sends ``reacted``); form abandonment = fields of a form edited, then the
visitor moved to another form or page without submitting it. Every threshold is configurable per site.

Pure: no Ray, Redis or network imports. The functions here decide whether
one event *is* a struggle occurrence; how occurrences add up to a signal
strength over time lives in :mod:`actors.core.session`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

# Clicks on these targets are expected to come in quick repeats.
RAGE_EXEMPT_TARGETS = frozenset({"text_input", "stepper"})


def refuse_unknown(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise if ``data`` has keys that are not fields of the dataclass ``cls`` (a typo in a site file)."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(unknown)}")


def checked_values(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """``data`` checked against the dataclass ``cls``'s fields, for :func:`dataclasses.replace`.

    Each value must have its default's type: a whole number for an int, a
    finite number for a float (never a bool), a list of strings for a tuple;
    numbers are not negative. A site's rules are edited at run time too
    (cluster/site_rules.py): a string where a count belongs must be refused
    here, not fail later in a shard's batch.
    """
    refuse_unknown(cls, data, what)
    defaults = {f.name: f.default for f in fields(cls)}
    out: dict[str, Any] = {}
    for name, value in data.items():
        default = defaults[name]
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
                raise ValueError(f"{what}: {name} must be a list of names, got {value!r}")
            out[name] = tuple(value)
            continue
        whole = isinstance(default, int)
        kinds = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            kind = "a whole number" if whole else "a number"
            raise ValueError(f"{what}: {name} must be {kind}, got {value!r}")
        if value < 0:
            raise ValueError(f"{what}: {name} must not be negative, got {value!r}")
        out[name] = value if whole else float(value)
    return out


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds for the struggle detectors and the decay of their signals."""

    rage_clicks: int = 3  # clicks in one burst
    rage_interval_ms: float = 1000.0  # max time between consecutive clicks of a burst
    rage_radius_px: float = 30.0  # max distance between consecutive clicks of a burst
    thrash_turns: int = 4  # more than this many direction changes ...
    thrash_window_ms: float = 225.0  # ... within this window is a thrash
    uturn_window_ms: float = 5000.0  # back to the previous page within this time
    idle_gap_ms: float = 30_000.0  # a gap this long counts as an idle gap
    video_dropoff_ratio: float = 0.5  # leaving a video before this share is a drop-off
    cart_hesitation_s: float = 45.0  # dwell on cart/checkout for full hesitation strength
    # Half-lives (s) of the decayed counts behind each signal, and the decayed
    # count at which the signal reaches full strength (1.0).
    half_life_s: float = 60.0
    full_rage: float = 1.0
    full_dead: float = 3.0
    full_form: float = 3.0
    full_uturn: float = 2.0
    full_thrash: float = 2.0
    full_js: float = 2.0
    full_scroll: float = 4.0
    idle_full_s: float = 120.0
    full_abandon: float = 1.0
    # A form counts as abandoned when at least this many of its fields were
    # edited and the visitor left it (another form, another page) unsent; one
    # field is a search box, not a form someone gave up on.
    abandon_fields: int = 2

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> DetectorConfig:
        """Build from a site's config table; unknown keys are an error, not ignored."""
        if not data:
            return cls()
        return replace(cls(), **checked_values(cls, data, "detector settings"))


DEFAULT_DETECTORS = DetectorConfig()


def is_rage_step(
    prev_ts: float, prev_x: float, prev_y: float, ts: float, x: float, y: float, cfg: DetectorConfig
) -> bool:
    """True if a click continues a burst started by the previous click."""
    if ts - prev_ts > cfg.rage_interval_ms:
        return False
    return math.hypot(x - prev_x, y - prev_y) <= cfg.rage_radius_px


def is_thrash(turns: list[float], cfg: DetectorConfig) -> bool:
    """True if more than ``cfg.thrash_turns`` direction changes fall in one window.

    ``turns`` are the offsets (ms) of horizontal direction changes in one
    mouse summary, in the order the client saw them.
    """
    need = cfg.thrash_turns + 1
    if len(turns) < need:
        return False
    ordered = sorted(turns)
    return any(
        ordered[i + need - 1] - ordered[i] <= cfg.thrash_window_ms
        for i in range(len(ordered) - need + 1)
    )


def decay(value: float, elapsed_ms: float, half_life_s: float) -> float:
    """A decayed count ``elapsed_ms`` later: halves every ``half_life_s``."""
    if elapsed_ms <= 0 or value == 0.0:
        return value
    return value * 0.5 ** (elapsed_ms / (half_life_s * 1000.0))
