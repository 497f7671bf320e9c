"""Feature rows for training: recorded events replayed through the live session code.

What it is for: one row per event, computed by ``actors.core.session.Session.apply``
(the very code the shards run, so there is no second implementation of any
feature), with the session's label and where in the session the row is.

Columns of a rows frame:

* ``sid``, ``seq``, ``ts_ms`` (event time, epoch ms; used for time-ordered splits),
  ``start_ms`` (the session's first event time)
* ``prefix_len`` (events seen so far, 1..n) and ``prefix_ms`` (ms since the session's first event)
* ``label``: 1 if the session ended without a conversion, 0 if it converted,
  -1 if the source has no purchase label (YOOCHOOSE). This is the session's
  outcome; the model's training label is derived from it and the timing
  columns below by :mod:`training.labels`, which overwrites ``label``.
* ``source`` (the data set), ``group`` (rows that must stay in one part of a
  split: the user where the data has users, else the session)
* ``end_ms`` (the session's last event time) and ``observed_ms`` (until when
  the absence of further events is known: the recording window's end, or
  ``OBSERVED_FOREVER`` for data cut into whole sessions)
* one float column per name in ``actors.core.features.FEATURE_NAMES``, in that order

Rows from the purchase event on are left out by default: once a session has
converted there is no exit risk to predict, and keeping them would let the
``purchased`` feature give the label away.

Sources: the journey simulator, the real-data loaders, JSON-lines files
(``lifeline export`` writes them), and the live system's Redis event log
(one stream per session, ``{prefix}ev:{site}:{sid}``, field ``ev`` = msgpack list of
normalised events). :func:`rows_frame` replays locally (small sets, tests,
the bundled model); :func:`rows_frame_ray` spreads the replay over Ray with
``ray.data`` (large sets).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pandas as pd

from actors.core.detectors import DEFAULT_DETECTORS, DetectorConfig
from actors.core.events import EventError, validate_event
from actors.core.features import FEATURE_NAMES
from actors.core.session import Session
from cluster.config import Settings
from cluster.keys import Keys
from cluster.sealing import Opener, opener_for
from training.loaders import DataError, SessionEvents
from training.progress import Progress
from training.sealed_export import iter_logs, open_events, sealed_entries

META_COLUMNS: tuple[str, ...] = (
    "sid",
    "seq",
    "ts_ms",
    "start_ms",
    "prefix_len",
    "prefix_ms",
    "label",
    "source",
    "group",
    "end_ms",
    "observed_ms",
)
UNLABELLED = -1
OBSERVED_FOREVER = 2**62  # a session known to be whole: nothing follows its last event
_INT_COLUMNS = (
    "seq",
    "ts_ms",
    "start_ms",
    "prefix_len",
    "prefix_ms",
    "label",
    "end_ms",
    "observed_ms",
)


def normalise(raw_events: Sequence[dict[str, Any]], where: str = "") -> list[dict[str, Any]]:
    """Validate raw (or already normalised) events exactly as the gateway does.

    Each event is checked with ``now_ms`` = its own ``ts`` (recorded data is
    judged against the time it was recorded). Raises :class:`DataError`
    naming the session and event on the first refusal.
    """
    out = []
    for i, raw in enumerate(raw_events):
        ts = raw.get("ts") if isinstance(raw, dict) else None
        now = int(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else 0
        ev = validate_event(raw, now_ms=now)
        if isinstance(ev, EventError):
            raise DataError(where or "events", f"event #{i + 1} refused: {ev.code}: {ev.detail}")
        out.append(ev)
    return out


def converted_of(events: Iterable[dict[str, Any]]) -> bool:
    """A session converted iff it has a ``purchase`` event (the live system's definition)."""
    return any(e.get("type") == "purchase" for e in events)


def from_journeys(journeys: Iterable[Any]) -> list[SessionEvents]:
    """Simulator journeys (``training.simulator.Journey``) as replayable sessions."""
    out = []
    for j in journeys:
        events = normalise(j.events, f"journey {j.sid}")
        out.append(
            SessionEvents(
                j.sid,
                events,
                j.converted,
                "simulator",
                j.start_ms,
                {"archetype": j.archetype, "struggling": j.struggling},
            )
        )
    return out


def session_rows(
    s: SessionEvents,
    *,
    include_after_purchase: bool = False,
    detectors: dict[str, DetectorConfig] | None = None,
) -> dict[str, list]:
    """Replay one session through ``Session.apply``; columns as described in the module doc.

    ``detectors`` maps a site key to its detector thresholds (sites.toml);
    the session's site is ``s.extra["site"]`` (default ``"default"``). Sites
    not in the map use the default thresholds, as the live path does.
    """
    site = str(s.extra.get("site", "default"))
    cfg = (detectors or {}).get(site, DEFAULT_DETECTORS)
    converted = s.converted
    if converted is None and converted_of(s.events):
        converted = True
    label = UNLABELLED if converted is None else (0 if converted else 1)
    session = Session(s.sid, site, cfg)
    cols: dict[str, list] = {c: [] for c in META_COLUMNS}
    feats: list[list[float]] = []
    start = s.events[0]["ts"] if s.events else 0
    end = s.events[-1]["ts"] if s.events else 0
    group = str(s.extra.get("user_id", s.sid))
    observed = int(s.extra.get("observed_until_ms", OBSERVED_FOREVER))
    for n, ev in enumerate(s.events, start=1):
        if ev["type"] == "purchase" and not include_after_purchase:
            break  # the rest of the session is post-conversion
        feats.append(session.apply(ev))
        cols["sid"].append(s.sid)
        cols["seq"].append(ev["seq"])
        cols["ts_ms"].append(ev["ts"])
        cols["start_ms"].append(start)
        cols["prefix_len"].append(n)
        cols["prefix_ms"].append(ev["ts"] - start)
        cols["label"].append(label)
        cols["source"].append(s.source)
        cols["group"].append(group)
        cols["end_ms"].append(end)
        cols["observed_ms"].append(observed)
    cols["_features"] = feats
    return cols


def _frame(parts: list[dict[str, list]]) -> pd.DataFrame:
    feats = [row for p in parts for row in p["_features"]]
    X = np.asarray(feats, dtype=np.float64).reshape(len(feats), len(FEATURE_NAMES))
    df = pd.DataFrame({c: [v for p in parts for v in p[c]] for c in META_COLUMNS})
    for c in _INT_COLUMNS:
        df[c] = df[c].astype(np.int64)
    feat_df = pd.DataFrame(X, columns=list(FEATURE_NAMES))
    return pd.concat([df, feat_df], axis=1)


def rows_frame(
    sessions: Sequence[SessionEvents],
    *,
    include_after_purchase: bool = False,
    detectors: dict[str, DetectorConfig] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Replay sessions in this process; one row per event (see module doc for columns)."""
    bar = Progress(len(sessions), "replay", enabled=progress)
    parts = []
    for s in sessions:
        parts.append(
            session_rows(s, include_after_purchase=include_after_purchase, detectors=detectors)
        )
        bar.update()
    bar.close()
    return _frame(parts)


# -- ray.data ---------------------------------------------------------------------------------------
def _to_item(s: SessionEvents) -> dict[str, Any]:
    # Events travel as msgpack bytes: Arrow cannot hold a column of
    # heterogeneous dicts, and bytes are also the cheapest to ship.
    return {
        "sid": s.sid,
        "events": msgpack.packb(s.events, use_bin_type=True),
        "converted": -1 if s.converted is None else int(s.converted),
        "source": s.source,
        "start_ms": s.start_ms,
        "site": str(s.extra.get("site", "default")),
        "user_id": str(s.extra.get("user_id", s.sid)),
        "observed": int(s.extra.get("observed_until_ms", OBSERVED_FOREVER)),
    }


def _replay_batch(
    batch: dict[str, np.ndarray],
    include_after_purchase: bool,
    detectors: dict[str, DetectorConfig] | None,
) -> dict[str, np.ndarray]:
    parts = []
    for sid, blob, conv, src, start, site, user, observed in zip(
        batch["sid"],
        batch["events"],
        batch["converted"],
        batch["source"],
        batch["start_ms"],
        batch["site"],
        batch["user_id"],
        batch["observed"],
        strict=True,
    ):
        events = msgpack.unpackb(blob, raw=False)
        c = None if int(conv) < 0 else bool(conv)
        parts.append(
            session_rows(
                SessionEvents(
                    str(sid),
                    events,
                    c,
                    str(src),
                    int(start),
                    {"site": str(site), "user_id": str(user), "observed_until_ms": int(observed)},
                ),
                include_after_purchase=include_after_purchase,
                detectors=detectors,
            )
        )
    df = _frame(parts)
    return {c: df[c].to_numpy() for c in df.columns}


def rows_frame_ray(
    sessions: Sequence[SessionEvents],
    *,
    include_after_purchase: bool = False,
    detectors: dict[str, DetectorConfig] | None = None,
    num_blocks: int | None = None,
) -> pd.DataFrame:
    """The same rows as :func:`rows_frame`, computed in parallel Ray tasks with ``ray.data``.

    Needs a running Ray (``ray.init`` is the caller's business). Rows come
    back in the sessions' order, then event order, exactly as
    :func:`rows_frame` returns them.
    """
    import ray.data

    if not sessions:
        return _frame([])
    items = [_to_item(s) for s in sessions]
    blocks = num_blocks or max(1, min(len(items) // 50, 16))
    ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _replay_batch,
        fn_kwargs={"include_after_purchase": include_after_purchase, "detectors": detectors},
        batch_format="numpy",
        batch_size=64,
    )
    df = ds.to_pandas()
    # ray.data may reorder blocks; restore the input order deterministically.
    order = {s.sid: i for i, s in enumerate(sessions)}
    df["_o"] = df["sid"].map(order)
    df = df.sort_values(["_o", "seq"], kind="stable").drop(columns="_o").reset_index(drop=True)
    for c in _INT_COLUMNS:
        df[c] = df[c].astype(np.int64)
    return df


# -- JSON lines and the Redis event log ------------------------------------------------------------
def write_jsonl(sessions: Iterable[SessionEvents], path: Path) -> int:
    """Write sessions as JSON lines ``{"sid", "source", "converted", "events"}``; returns the count."""
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for s in sessions:
            fh.write(
                json.dumps(
                    {
                        "sid": s.sid,
                        "source": s.source,
                        "converted": s.converted,
                        "events": s.events,
                    },
                    separators=(",", ":"),
                )
            )
            fh.write("\n")
            n += 1
    return n


def read_jsonl(
    path: Path, *, redis: Any = None, opener: Opener | None = None
) -> list[SessionEvents]:
    """Read sessions written by :func:`write_jsonl` (or by hand: ``{"sid", "events"}`` per line),
    or the sealed rows of ``lifeline export`` (training/sealed_export.py).

    Events may be raw or normalised; they are validated again. A missing
    ``converted`` is derived from the events (a ``purchase`` means converted).
    A sealed row is opened with the data keys ``redis`` (synchronous) holds
    now; a row whose key is gone (its visitor was erased) is dropped and
    counted in ``opener.dropped_sessions``. A sealed row without ``redis``
    is a :class:`DataError`.
    """
    if not path.is_file():
        raise DataError(
            path, "file not found; expected JSON lines of sessions (lifeline export writes them)"
        )
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    path, f"not JSON ({exc.msg}); expected one session object per line", lineno
                ) from None
            if isinstance(rec, dict) and isinstance(rec.get("sealed"), list):
                if redis is None:
                    raise DataError(
                        path, "a sealed row: reading it needs the deployment's Redis", lineno
                    )
                if opener is None:
                    opener = opener_for(Settings())
                entries = sealed_entries(rec, f"{path}:{lineno}")
                rec["events"] = open_events(opener, redis, entries, f"{path}:{lineno}")
                if rec["events"] is None:
                    continue  # its data key is gone: erased, everywhere
            if (
                not isinstance(rec, dict)
                or not isinstance(rec.get("sid"), str)
                or not isinstance(rec.get("events"), list)
            ):
                raise DataError(path, 'expected {"sid": str, "events": [event, ...]}', lineno)
            try:
                events = normalise(rec["events"], f"session {rec['sid']!r}")
            except DataError as exc:
                raise DataError(path, str(exc), lineno) from None
            if not events:
                continue
            conv = rec.get("converted")
            if conv is None:
                conv = converted_of(events)
            out.append(
                SessionEvents(
                    rec["sid"],
                    events,
                    bool(conv),
                    str(rec.get("source", "jsonl")),
                    events[0]["ts"],
                    {"site": str(rec.get("site") or "default")},
                )
            )
    out.sort(key=lambda s: (s.start_ms, s.sid))
    return out


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def iter_redis_sessions(
    r: Any, prefix: str, *, count: int = 500, opener: Opener | None = None
) -> Iterator[SessionEvents]:
    """Sessions from the live event log: streams ``{prefix}ev:{site}:{sid}``, field ``ev``.

    Each stream entry holds a msgpack list of normalised events, sealed
    under its subject's data key when it names one (cluster/sealing.py; an
    empty payload is skipped); entries are read in stream order and events
    deduplicated by ``seq`` (a resend logged twice counts once, as in the
    live session). The session's site is part of its key (cluster/keys.py).
    Sealed entries are opened with the keys Redis holds now (``opener``,
    default: one for this process's settings); a session with an entry
    whose key is gone (erased, expired) is left out and counted in
    ``opener.dropped_sessions``.
    """
    keys = Keys(prefix)
    opener = opener or opener_for(Settings(), keys)
    for site, sid, entries in iter_logs(r, prefix, count=count):
        events = open_events(opener, r, entries, keys.events(site, sid))
        if events:
            yield SessionEvents(
                sid, events, converted_of(events), "redis", events[0]["ts"], {"site": site}
            )


def export_redis(
    r: Any,
    prefix: str,
    *,
    progress: bool = False,
    read_at_ms: int | None = None,
    opener: Opener | None = None,
) -> list[SessionEvents]:
    """All readable sessions of the live event log, ordered by start time.

    ``read_at_ms``: when the log was read; nothing after a session's last
    event is known past it (``observed_until_ms``, which labels censor on).
    ``opener``: see :func:`iter_redis_sessions` (its counts say what was left out).
    """
    bar = Progress(None, "export", enabled=progress)
    out = []
    for s in iter_redis_sessions(r, prefix, opener=opener):
        if read_at_ms is not None:
            s.extra.setdefault("observed_until_ms", read_at_ms)
        out.append(s)
        bar.update()
    bar.close()
    out.sort(key=lambda s: (s.start_ms, s.sid))
    return out


def append_to_redis_log(
    r: Any, prefix: str, site: str, sid: str, events: Sequence[dict[str, Any]], chunk: int = 20
) -> None:
    """Write normalised events in the event-log layout (``f``/``l``/``ev``; tests, demo seeding).

    The live gateway owns the real log (``serve/edge/store.py``); this mirrors its
    layout so export and training can be tested without the whole service.
    """
    for i in range(0, len(events), chunk):
        part = list(events[i : i + chunk])
        r.xadd(
            Keys(prefix).events(site, sid),
            {
                "f": part[0]["seq"],
                "l": part[-1]["seq"],
                "ev": msgpack.packb(part, use_bin_type=True),
            },
        )
