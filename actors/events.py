"""The event schema the tracking client speaks, and its validation.

This module is the single definition of what a browser event is. The gateway
validates every incoming event here, the session actor consumes the
normalised dicts it returns, and training replays the very same normalised
dicts from the event log, so there is exactly one notion of "an event".

Pure: no Ray, Redis or network imports. ``validate_event`` never raises; bad
input comes back as an :class:`EventError` with a machine-readable code.

Limits: the schema checks shape and size, not meaning (a click at (-5, -5)
is a valid click). Privacy is enforced by construction: form events carry
field identifiers only and there is no field that could hold a typed value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1

# Error codes, stable on the wire (see docs/PROTOCOL.md).
UNKNOWN_TYPE = "unknown_type"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
TOO_LARGE = "too_large"
CLOCK_SKEW = "clock_skew"
SEQUENCE_GAP = "sequence_gap"
BAD_EVENT = "bad_event"

MAX_STR = 512  # any string field
MAX_EVENT_BYTES = 4096  # rough encoded size of one event (custom props included)
MAX_FUTURE_MS = 60_000  # an event may not claim to happen later than this after "now"
MAX_PAST_MS = 24 * 3600 * 1000  # offline buffers older than a day are stale
MAX_TURNS = 64  # direction-change offsets in one mouse summary

_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_LIST = (list, tuple)
_DICT = (dict,)
_NUM_EXACT = frozenset(_NUM)

# type -> {field: (accepted python types, required)}. Every event also has
# "type", "seq" (int >= 1, per session, contiguous) and "ts" (ms since epoch).
FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    # "item": the product id when the page shows one product (for recommendations).
    "page_view": {
        "path": (_STR, True),
        "page_type": (_STR, False),
        "ref": (_STR, False),
        "item": (_STR, False),
    },
    "click": {
        "selector": (_STR, True),
        "x": (_NUM, True),
        "y": (_NUM, True),
        "reacted": (_BOOL, True),
        # "button" | "link" | "text_input" | "stepper" | "other": rage-click
        # detection skips text inputs and steppers, as PostHog does.
        "target": (_STR, False),
    },
    "scroll": {"depth": (_NUM, True), "dir": (_STR, True)},
    "form_focus": {"form": (_STR, True), "field": (_STR, True)},
    "form_input": {"form": (_STR, True), "field": (_STR, True), "count": (_INT, False)},
    "form_error": {"form": (_STR, True), "field": (_STR, True), "code": (_STR, False)},
    "form_submit": {"form": (_STR, True), "ok": (_BOOL, False)},
    # Mouse movement summary: duration, distance travelled and the offsets (ms
    # from the summary's start) at which the horizontal direction changed.
    "mouse": {"dur": (_NUM, True), "dist": (_NUM, True), "turns": (_LIST, True)},
    "hover": {"selector": (_STR, True), "dwell": (_NUM, True)},
    "video_play": {"media": (_STR, True), "t": (_NUM, True), "dur": (_NUM, False)},
    "video_pause": {"media": (_STR, True), "t": (_NUM, True), "dur": (_NUM, False)},
    "video_seek": {
        "media": (_STR, True),
        "from": (_NUM, True),
        "to": (_NUM, True),
        "dur": (_NUM, False),
    },
    "video_ended": {"media": (_STR, True), "t": (_NUM, False), "dur": (_NUM, False)},
    "video_rate": {"media": (_STR, True), "rate": (_NUM, True), "t": (_NUM, False)},
    "visibility": {"state": (_STR, True)},
    "js_error": {"msg": (_STR, True), "src": (_STR, False)},
    "add_to_cart": {"item": (_STR, True), "qty": (_INT, False), "price": (_NUM, False)},
    "remove_from_cart": {"item": (_STR, True), "qty": (_INT, False)},
    "purchase": {"value": (_NUM, False), "items": (_LIST, False)},
    "intervention_shown": {"iid": (_STR, True)},
    "intervention_accepted": {"iid": (_STR, True)},
    "intervention_dismissed": {"iid": (_STR, True)},
    "custom": {"name": (_STR, True), "props": (_DICT, False)},
}

EVENT_TYPES: tuple[str, ...] = tuple(FIELDS)
_UNBOUNDED = frozenset(
    t
    for t, spec in FIELDS.items()
    if any(_LIST[0] in ty or _DICT[0] in ty for ty, _ in spec.values())
)
_ENUMS = {
    ("scroll", "dir"): {"up", "down"},
    ("visibility", "state"): {"hidden", "visible"},
}
# FIELDS compiled for validate_event, which runs on every event: per type, each
# field as (name, accepted types, the exact types that pass without the
# isinstance checks, required, is a string, allowed values or None).
_Spec = tuple[str, tuple[type, ...], frozenset[type], bool, bool, "frozenset[str] | None"]
_SPECS: dict[str, tuple[_Spec, ...]] = {
    etype: tuple(
        (
            name,
            types,
            frozenset(types),  # bool is never in it unless accepted: type(True) is bool
            required,
            types is _STR,
            frozenset(_ENUMS[(etype, name)]) if (etype, name) in _ENUMS else None,
        )
        for name, (types, required) in spec.items()
    )
    for etype, spec in FIELDS.items()
}
# Events the client flushes at once instead of waiting for the batch timer.
URGENT_TYPES = frozenset(
    {"form_error", "form_submit", "add_to_cart", "purchase", "js_error", "visibility"}
    | {"intervention_shown", "intervention_accepted", "intervention_dismissed"}
)


@dataclass(frozen=True, slots=True)
class EventError:
    """Why one event was refused. ``code`` is one of the module constants."""

    code: str
    detail: str
    seq: int | None = None
    field: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "detail": self.detail}
        if self.seq is not None:
            out["seq"] = self.seq
        if self.field is not None:
            out["field"] = self.field
        return out


def _approx_size(value: Any, budget: int) -> int:
    """Rough encoded size of a JSON-like value; stops counting past ``budget``."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, dict):
        total = 2
        for k, v in value.items():
            total += _approx_size(k, budget) + _approx_size(v, budget)
            if total > budget:
                return total
        return total
    if isinstance(value, (list, tuple)):
        total = 2
        for v in value:
            total += _approx_size(v, budget)
            if total > budget:
                return total
        return total
    return 8


def validate_event(raw: Any, now_ms: int, clock_offset_ms: int = 0) -> dict[str, Any] | EventError:
    """Check one raw event and return its normalised form, or why it is refused.

    ``now_ms`` is the server's clock; ``clock_offset_ms`` is server minus client
    clock for the frame this event came in (the client stamps each frame), so
    the stored ``ts`` is on the server's clock and replays are deterministic.
    Unknown extra fields are dropped rather than refused, so an older server
    accepts a newer client's events. Never raises.
    """
    if not isinstance(raw, dict):
        return EventError(BAD_EVENT, "an event must be a map")
    seq = raw.get("seq")
    # ``type(x) is int`` first: the decoders make exact ints, and it is the cheap test.
    seq_ok = (type(seq) is int or (isinstance(seq, int) and not isinstance(seq, bool))) and seq >= 1
    seq_out = seq if seq_ok else None
    etype = raw.get("type")
    if not isinstance(etype, str):
        return EventError(MISSING_FIELD, "event has no string 'type'", seq_out, "type")
    spec = _SPECS.get(etype)
    if spec is None:
        return EventError(UNKNOWN_TYPE, f"unknown event type {etype[:40]!r}", seq_out, "type")
    if not seq_ok:
        return EventError(BAD_TYPE, "'seq' must be an integer >= 1", None, "seq")
    ts = raw.get("ts")
    if type(ts) not in _NUM_EXACT and (not isinstance(ts, (int, float)) or isinstance(ts, bool)):
        return EventError(
            MISSING_FIELD if ts is None else BAD_TYPE, "'ts' must be ms since epoch", seq, "ts"
        )
    ts = int(ts) + clock_offset_ms
    if ts > now_ms + MAX_FUTURE_MS or ts < now_ms - MAX_PAST_MS:
        return EventError(CLOCK_SKEW, f"ts is {(ts - now_ms) // 1000}s from server time", seq, "ts")
    # Only events with list or map fields can grow past the limit: every other
    # field is a number, a bool or a string capped at MAX_STR below.
    if etype in _UNBOUNDED and _approx_size(raw, MAX_EVENT_BYTES) > MAX_EVENT_BYTES:
        return EventError(TOO_LARGE, f"event exceeds {MAX_EVENT_BYTES} bytes", seq)
    out: dict[str, Any] = {"type": etype, "seq": seq, "ts": ts}
    for name, types, exact, required, is_str, allowed in spec:
        value = raw.get(name)
        if value is None:
            if required:
                return EventError(MISSING_FIELD, f"{etype} needs '{name}'", seq, name)
            continue
        if type(value) not in exact and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            return EventError(BAD_TYPE, f"'{name}' has the wrong type", seq, name)
        if is_str:
            if len(value) > MAX_STR:
                return EventError(TOO_LARGE, f"'{name}' is longer than {MAX_STR}", seq, name)
            if allowed is not None and value not in allowed:
                return EventError(BAD_TYPE, f"'{name}' must be one of {sorted(allowed)}", seq, name)
        out[name] = value
    if etype == "mouse":
        turns = out["turns"]
        if len(turns) > MAX_TURNS or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) for t in turns
        ):
            return EventError(
                BAD_TYPE, f"'turns' must be at most {MAX_TURNS} numbers", seq, "turns"
            )
        out["turns"] = [float(t) for t in turns]
    return out
