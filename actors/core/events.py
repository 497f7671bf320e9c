"""The event schema the tracking client speaks, and its validation.

This module is the single definition of what a browser event is. The gateway
validates every incoming event here, the session actor consumes the
normalised dicts it returns, and training replays the very same normalised
dicts from the event log, so there is exactly one notion of "an event".

Pure: no Ray, Redis or network imports. ``validate_event`` never raises; bad
input comes back as an :class:`EventError` with a machine-readable code.

Limits: the schema checks shape and size, and meaning only where the
session sums a value (a click at (-5, -5) is a valid click; a ``qty`` past a
million is not). Every value it returns can be stored: each number is
finite and within +/-2**53 (what a JavaScript number holds exactly, well
inside msgpack's signed 64 bits), each string is valid UTF-8, each nested
list or map holds only such values and nests at most ``MAX_DEPTH`` deep.
Privacy is enforced by construction: form events carry field identifiers
only and there is no field that could hold a typed value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

SCHEMA_VERSION = 1

# Error codes, stable on the wire (see docs/PROTOCOL.md).
UNKNOWN_TYPE = "unknown_type"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
TOO_LARGE = "too_large"
CLOCK_SKEW = "clock_skew"
SEQUENCE_GAP = "sequence_gap"
BAD_EVENT = "bad_event"
OUT_OF_RANGE = "out_of_range"  # a number that is not finite or outside its field's range

MAX_STR = 512  # any string field
MAX_EVENT_BYTES = 4096  # rough encoded size of one event (custom props included)
MAX_FUTURE_MS = 60_000  # an event may not claim to happen later than this after "now"
MAX_PAST_MS = 24 * 3600 * 1000  # offline buffers older than a day are stale
MAX_TURNS = 64  # direction-change offsets in one mouse summary
MAX_DEPTH = 8  # lists and maps inside an event field nest at most this deep
# Any number anywhere in an event: the integers a JavaScript number holds
# exactly. Far inside msgpack's and Redis's signed 64 bits, and a float of
# this size has no overflow to infinity in any sum a session makes.
MAX_NUM = 2**53
# Fields the session adds up get ranges for their meaning, so that no sum over
# a session's events can leave signed 64 bits (a million per event would need
# 9 * 10**12 events).
MAX_QTY = 1_000_000
MAX_COUNT = 1_000_000
MAX_PRICE = 1e12

_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_LIST = (list, tuple)
_DICT = (dict,)

# type -> {field: (accepted python types, required)}. Every event also has
# "type", "seq" (int from 1 to MAX_NUM, per session, contiguous) and "ts" (ms
# since epoch). Numbers are within +/-MAX_NUM unless _RANGES says narrower.
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
_ENUMS = {
    ("scroll", "dir"): {"up", "down"},
    ("visibility", "state"): {"hidden", "visible"},
}
# (type, field) -> (lowest, highest) for numbers narrower than +/-MAX_NUM.
_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("add_to_cart", "qty"): (0, MAX_QTY),  # 0 counts as 1, as a missing qty does
    ("remove_from_cart", "qty"): (0, MAX_QTY),
    ("add_to_cart", "price"): (0, MAX_PRICE),
    ("form_input", "count"): (0, MAX_COUNT),
}


class _Compiled(NamedTuple):
    """FIELDS of one type, grouped for validate_event, which runs on every event.

    One loop per kind of field, so no loop asks per field what kind it has.
    """

    strings: tuple[tuple[str, bool, frozenset[str] | None], ...]  # name, required, allowed
    # name, accepted types, the exact types that pass without the isinstance
    # checks, required, lowest, highest
    numbers: tuple[tuple[str, tuple[type, ...], frozenset[type], bool, float, float], ...]
    # bools, lists and maps: name, accepted types, exact types, required
    others: tuple[tuple[str, tuple[type, ...], frozenset[type], bool], ...]
    nested: tuple[str, ...]  # the list and map fields, walked by _nested_size


def _compile(etype: str, spec: dict[str, tuple[tuple[type, ...], bool]]) -> _Compiled:
    strings, numbers, others = [], [], []
    for name, (types, required) in spec.items():
        # The exact-type sets never hold bool unless it is accepted: type(True) is
        # bool, so a bool takes the isinstance path, which refuses it.
        if types is _STR:
            allowed = _ENUMS.get((etype, name))
            strings.append((name, required, frozenset(allowed) if allowed else None))
        elif types is _NUM or types is _INT:
            lo, hi = _RANGES.get((etype, name), (-MAX_NUM, MAX_NUM))
            numbers.append((name, types, frozenset(types), required, lo, hi))
        else:
            others.append((name, types, frozenset(types), required))
    nested = tuple(n for n, (types, _) in spec.items() if types is _LIST or types is _DICT)
    return _Compiled(tuple(strings), tuple(numbers), tuple(others), nested)


_SPECS: dict[str, _Compiled] = {etype: _compile(etype, spec) for etype, spec in FIELDS.items()}
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


def _is_text(value: str) -> bool:
    """True if ``value`` encodes as UTF-8 (a JSON frame can carry lone surrogates, msgpack cannot)."""
    if value.isascii():  # nearly every string: one C scan, no copy
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


class _Unstorable(Exception):
    """A nested value that cannot be stored; ``validate_event`` turns it into an EventError."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def _nested_size(value: Any, budget: int, depth: int = 0) -> int:
    """Rough encoded size of a list or map field, checking it can be stored.

    Accepts exactly what JSON and msgpack both carry (str, int, float, bool,
    None, list, tuple, maps with string keys; no bytes, extension types or
    subclasses), numbers within +/-MAX_NUM, at most MAX_DEPTH levels deep.
    Stops counting past ``budget``; raises :class:`_Unstorable` otherwise.
    Recursion is bounded by MAX_DEPTH, so a deep value cannot exhaust the stack.
    """
    t = type(value)
    if t is str:
        if not _is_text(value):
            raise _Unstorable(BAD_TYPE, "a string is not valid Unicode text")
        return len(value) + 2
    if t is int or t is float:
        if not -MAX_NUM <= value <= MAX_NUM:  # NaN fails every comparison
            raise _Unstorable(OUT_OF_RANGE, f"numbers must be finite and within +/-{MAX_NUM}")
        return 8
    if t is bool or value is None:
        return 8
    if t is not list and t is not tuple and t is not dict:
        raise _Unstorable(BAD_TYPE, f"a {t.__name__} cannot be stored")
    if depth >= MAX_DEPTH:
        raise _Unstorable(TOO_LARGE, f"lists and maps nest at most {MAX_DEPTH} deep")
    total = 2
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _Unstorable(BAD_TYPE, "map keys must be strings")
            total += _nested_size(k, budget, depth) + _nested_size(v, budget, depth + 1)
            if total > budget:
                return total
        return total
    for v in value:
        total += _nested_size(v, budget, depth + 1)
        if total > budget:
            return total
    return total


def validate_event(raw: Any, now_ms: int, clock_offset_ms: int = 0) -> dict[str, Any] | EventError:
    """Check one raw event and return its normalised form, or why it is refused.

    ``now_ms`` is the server's clock; ``clock_offset_ms`` is server minus client
    clock for the frame this event came in (the client stamps each frame), so
    the stored ``ts`` is on the server's clock and replays are deterministic.
    Unknown extra fields are dropped rather than refused, so an older server
    accepts a newer client's events. Never raises; what it returns can be
    packed with msgpack and JSON (see the module docstring for the bounds).
    """
    if not isinstance(raw, dict):
        return EventError(BAD_EVENT, "an event must be a map")
    seq = raw.get("seq")
    # ``type(x) is int`` first: the decoders make exact ints, and it is the cheap test.
    seq_ok = (
        type(seq) is int or (isinstance(seq, int) and not isinstance(seq, bool))
    ) and 1 <= seq <= 2**53  # MAX_NUM, folded by the compiler
    seq_out = seq if seq_ok else None
    etype = raw.get("type")
    if not isinstance(etype, str):
        return EventError(MISSING_FIELD, "event has no string 'type'", seq_out, "type")
    compiled = _SPECS.get(etype)
    if compiled is None:
        return EventError(UNKNOWN_TYPE, f"unknown event type {etype[:40]!r}", seq_out, "type")
    strings, numbers, others, nested = compiled
    if not seq_ok:
        return EventError(BAD_TYPE, f"'seq' must be an integer from 1 to {MAX_NUM}", None, "seq")
    ts = raw.get("ts")
    if type(ts) is not int:  # the client's clock is an int; an int of any size is
        # bounded by the skew check below
        if ts is None:
            return EventError(MISSING_FIELD, "'ts' must be ms since epoch", seq, "ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            return EventError(BAD_TYPE, "'ts' must be ms since epoch", seq, "ts")
        if not -(2**53) <= ts <= 2**53:  # MAX_NUM, folded; int() of inf or NaN raises
            return EventError(OUT_OF_RANGE, "'ts' must be a finite number of ms", seq, "ts")
        ts = int(ts)
    ts += clock_offset_ms
    if ts > now_ms + MAX_FUTURE_MS or ts < now_ms - MAX_PAST_MS:
        skew = max(min(ts - now_ms, 10**15), -(10**15)) // 1000  # a huge int has no str()
        return EventError(CLOCK_SKEW, f"ts is {skew}s from server time", seq, "ts")
    out: dict[str, Any] = {"type": etype, "seq": seq, "ts": ts}
    for name, required, allowed in strings:
        value = raw.get(name)
        if value is None:
            if required:
                return EventError(MISSING_FIELD, f"{etype} needs '{name}'", seq, name)
            continue
        if type(value) is not str and not isinstance(value, str):
            return EventError(BAD_TYPE, f"'{name}' has the wrong type", seq, name)
        if len(value) > MAX_STR:
            return EventError(TOO_LARGE, f"'{name}' is longer than {MAX_STR}", seq, name)
        if allowed is not None and value not in allowed:
            return EventError(BAD_TYPE, f"'{name}' must be one of {sorted(allowed)}", seq, name)
        if not value.isascii() and not _is_text(value):
            return EventError(BAD_TYPE, f"'{name}' is not valid Unicode text", seq, name)
        out[name] = value
    for name, types, exact, required, lo, hi in numbers:
        value = raw.get(name)
        if value is None:
            if required:
                return EventError(MISSING_FIELD, f"{etype} needs '{name}'", seq, name)
            continue
        if type(value) not in exact and (not isinstance(value, types) or isinstance(value, bool)):
            return EventError(BAD_TYPE, f"'{name}' has the wrong type", seq, name)
        if not lo <= value <= hi:  # NaN fails every comparison
            return EventError(
                OUT_OF_RANGE, f"'{name}' must be a finite number from {lo:g} to {hi:g}", seq, name
            )
        out[name] = value
    for name, types, exact, required in others:
        value = raw.get(name)
        if value is None:
            if required:
                return EventError(MISSING_FIELD, f"{etype} needs '{name}'", seq, name)
            continue
        if type(value) not in exact and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            return EventError(BAD_TYPE, f"'{name}' has the wrong type", seq, name)
        out[name] = value
    if nested:
        # Only list and map fields can grow past the limit: every other field
        # is a number, a bool or a string capped at MAX_STR.
        size = 0
        for name in nested:
            if name in out:
                try:
                    size += _nested_size(out[name], MAX_EVENT_BYTES)
                except _Unstorable as exc:
                    return EventError(exc.code, f"'{name}': {exc.detail}", seq, name)
                if size > MAX_EVENT_BYTES:
                    return EventError(TOO_LARGE, f"event exceeds {MAX_EVENT_BYTES} bytes", seq)
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
