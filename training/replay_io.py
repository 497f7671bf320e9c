"""Recorded traffic as a file of events: one JSON line per event, sessions interleaved.

What it is for: ``lifeline import`` writes the public data sets in this
form, and ``lifeline replay --events FILE`` sends such a file through the
service as live traffic. A line is

    {"sid": "tb-1000-0", "event": {"type": "page_view", "seq": 1, "ts": 1511658000000, ...}}

where the event is in the wire protocol's event format (``type``, ``seq``,
``ts`` in ms since the epoch, and the type's fields; docs/PROTOCOL.md).
:func:`write_events_jsonl` orders the lines by event time across sessions,
as recorded traffic arrives (ties: by sid, then seq).

:func:`read_events_jsonl` groups lines by ``sid``, keeps each session's
events in ``seq`` order, and checks every event exactly as the gateway does
(:func:`training.dataset.normalise`). A malformed line, an event the
gateway would refuse, or a second event with a ``seq`` its session already
had stops the read with a :class:`~training.loaders.DataError` naming the
file, the line and what was expected.

Limits: the format carries events only, no label: a session converted iff
it has a ``purchase`` event (the live system's definition), so a source
without purchases (YOOCHOOSE) reads back as "not converted", which is not
a label. Gaps in a session's ``seq`` are allowed, because the live log has
them where the gateway refused an event (a refused event consumes its
number). The whole file is held in memory (the data sets here are tens of
thousands of events).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from training.dataset import converted_of, normalise
from training.loaders import DataError, SessionEvents

LINE_KEYS = ("sid", "event")
EXPECTED_LINE = '{"sid": "...", "event": {"type": ..., "seq": ..., "ts": ..., ...}}'


def interleaved(sessions: Iterable[SessionEvents]) -> list[tuple[str, dict[str, Any]]]:
    """Every event of ``sessions`` as ``(sid, event)``, ordered by event time across sessions."""
    lines = [(s.sid, ev) for s in sessions for ev in s.events]
    lines.sort(key=lambda x: (x[1]["ts"], x[0], x[1]["seq"]))
    return lines


def write_events_jsonl(sessions: Iterable[SessionEvents], path: Path) -> int:
    """Write ``sessions`` as event lines ordered by time (module doc); returns the line count.

    Each session's events are checked as the gateway would check them first,
    so a file this writes always reads back.
    """
    checked = [
        SessionEvents(s.sid, normalise(s.events, f"session {s.sid!r}"), s.converted, s.source)
        for s in sessions
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for sid, ev in interleaved(checked):
            fh.write(json.dumps({"sid": sid, "event": ev}, separators=(",", ":")))
            fh.write("\n")
            n += 1
    return n


def _parse_line(path: Path, lineno: int, line: str) -> tuple[str, dict[str, Any]]:
    """One line's sid and its event as the gateway would store it."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not JSON ({exc.msg}); expected {EXPECTED_LINE}", lineno) from None
    if not isinstance(rec, dict):
        raise DataError(path, f"expected a JSON object {EXPECTED_LINE}", lineno)
    extra = sorted(set(rec) - set(LINE_KEYS))
    if extra:
        raise DataError(path, f"unexpected keys {extra}; expected only {EXPECTED_LINE}", lineno)
    sid, raw = rec.get("sid"), rec.get("event")
    if not isinstance(sid, str) or not sid:
        raise DataError(path, f"'sid' must be a non-empty string; expected {EXPECTED_LINE}", lineno)
    if not isinstance(raw, dict):
        raise DataError(path, f"'event' must be an object; expected {EXPECTED_LINE}", lineno)
    try:
        (ev,) = normalise([raw], f"session {sid!r}")
    except DataError as exc:
        # normalise names the event by its position in the list it was given (always #1 here).
        why = str(exc).split(" refused: ", 1)[-1]
        raise DataError(
            path,
            f"event of session {sid!r} refused as the gateway would refuse it: {why}; expected "
            "an event in the wire format (docs/PROTOCOL.md)",
            lineno,
        ) from None
    return sid, ev


def read_events_jsonl(path: Path) -> list[SessionEvents]:
    """Sessions from an events file (module doc), each in ``seq`` order, ordered by start time.

    ``start_ms`` is the session's first event time, ``converted`` whether it
    has a ``purchase``, ``source`` is ``"events"``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            path, f"file not found; expected JSON lines {EXPECTED_LINE} (lifeline import)"
        )
    by_sid: dict[str, dict[int, tuple[int, dict[str, Any]]]] = {}  # sid -> seq -> (line, event)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            sid, ev = _parse_line(path, lineno, line)
            seen = by_sid.setdefault(sid, {})
            if ev["seq"] in seen:
                raise DataError(
                    path,
                    f"session {sid!r} has seq {ev['seq']} twice (first on line "
                    f"{seen[ev['seq']][0]}); expected each seq of a session once",
                    lineno,
                )
            seen[ev["seq"]] = (lineno, ev)
    if not by_sid:
        raise DataError(path, f"no events; expected JSON lines {EXPECTED_LINE}")
    out = []
    for sid, seen in by_sid.items():
        events = [seen[k][1] for k in sorted(seen)]
        out.append(SessionEvents(sid, events, converted_of(events), "events", events[0]["ts"]))
    out.sort(key=lambda s: (s.start_ms, s.sid))
    return out
