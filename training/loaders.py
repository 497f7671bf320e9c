"""Loaders for the real public clickstream data in ``../shared/data`` (see its README).

What they are for: turning other people's recorded sessions into Lifeline
sessions, so the exit-risk model can be trained and evaluated on real
traffic through the very same session code the live path runs.

* Diginetica (CIKM Cup 2016 sample): item views become ``page_view`` events
  on product pages; the purchases file labels sessions and adds a
  ``purchase`` event at the time of the session's first order.
* YOOCHOOSE (RecSys 2015 sample): clicks become ``page_view`` events; no
  purchase label (``converted`` is None), so it serves replay throughput,
  segments and load generation, not exit-risk training.
* Taobao (Alibaba UserBehavior, a two-hour window): views, carts, favourites
  and purchases per event, per user; sessions split at 30 minutes without
  an event. The only real data here with carts and purchases.
* UCI Online Shoppers: a session-level table (17 aggregate features and
  ``Revenue``), returned as a pandas DataFrame; it has no events.

Every malformed input stops with a :class:`DataError` that names the file,
the line and what was expected. Limits: the click data carries only views,
so struggle features are zero on it (struggle comes from the simulator);
Diginetica's ``eventdate`` is a day, not a time, so a session's absolute
start is midnight UTC of its first day plus its own ``timeframe`` offsets.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from cluster.config import PACKAGE_ROOT

DATA_README = "see ../shared/data/README.md"


def default_data_dir() -> Path:
    """``$LIFELINE_DATA_DIR`` if set, else ``../shared/data`` next to the repository."""
    env = os.environ.get("LIFELINE_DATA_DIR")
    return Path(env) if env else (PACKAGE_ROOT.parent / "shared" / "data").resolve()


class DataError(ValueError):
    """A data file is missing or malformed: says which file, which line, what was expected."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclass
class SessionEvents:
    """One recorded session as Lifeline events, ready for replay.

    ``events`` are normalised event dicts in order (what ``validate_event``
    returns); ``converted`` is None when the source has no purchase label.
    """

    sid: str
    events: list[dict[str, Any]]
    converted: bool | None
    source: str
    start_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _rows(path: Path, sep: str, header: list[str], what: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a delimited file after checking its header."""
    if not path.is_file():
        raise DataError(path, f"file not found; expected {what} ({DATA_README})")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=sep)
        try:
            first = next(reader)
        except StopIteration:
            raise DataError(
                path, f"file is empty; expected a header {sep.join(header)!r}", 1
            ) from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(path, f"unreadable header: {exc}", 1) from None
        if [h.strip().lstrip("\ufeff") for h in first] != header:
            raise DataError(
                path, f"unexpected header {sep.join(first)!r}; expected {sep.join(header)!r}", 1
            )
        lineno = 1
        try:
            for fields in reader:
                lineno = reader.line_num
                if not fields or fields == [""]:
                    continue
                if len(fields) != len(header):
                    raise DataError(
                        path,
                        f"expected {len(header)} {sep!r}-separated fields ({sep.join(header)}), "
                        f"got {len(fields)}",
                        lineno,
                    )
                yield lineno, fields
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(path, f"unreadable line: {exc}", lineno + 1) from None


def _int(path: Path, line: int, column: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(path, f"expected an integer {column}, got {value!r}", line) from None


def _float(path: Path, line: int, column: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(path, f"expected a number {column}, got {value!r}", line) from None


def _day_ms(path: Path, line: int, column: str, value: str) -> int:
    try:
        d = date.fromisoformat(value)
    except ValueError:
        raise DataError(
            path, f"expected a date YYYY-MM-DD in {column}, got {value!r}", line
        ) from None
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() * 1000)


def product_path(item: str | int) -> str:
    """The product page path a catalogue item id maps to (same shape as the demo shop's)."""
    return f"/product.html?id={item}"


# -- Diginetica -------------------------------------------------------------------------------------
DIGI_VIEWS_HEADER = ["session_id", "user_id", "item_id", "timeframe", "eventdate"]
DIGI_PURCHASES_HEADER = ["sessionId", "userId", "timeframe", "eventdate", "ordernumber", "itemId"]
DIGI_CATEGORIES_HEADER = ["itemId", "categoryId"]


def load_diginetica_categories(path: Path | None = None) -> dict[str, str]:
    """``itemId -> categoryId`` from ``diginetica/product-categories.csv``."""
    path = path or default_data_dir() / "diginetica" / "product-categories.csv"
    out: dict[str, str] = {}
    for line, (item, cat) in _rows(path, ";", DIGI_CATEGORIES_HEADER, "Diginetica item categories"):
        _int(path, line, "itemId", item)
        _int(path, line, "categoryId", cat)
        out[item] = cat
    return out


def load_diginetica(
    data_dir: Path | None = None,
    *,
    limit_sessions: int | None = None,
    with_categories: bool = True,
) -> list[SessionEvents]:
    """Diginetica view sessions as Lifeline events, labelled by the purchases file.

    Each view is a ``page_view`` of ``/product.html?id=ITEM`` (plus
    ``&cat=CATEGORY`` when the categories file knows the item), page type
    ``product``. A session that appears in the purchases file converted; it
    gets one ``purchase`` event (items: everything ordered in the session) at
    its earliest order's time, placed among the views by time. Sessions are
    returned ordered by start time (then id); ``limit_sessions`` keeps the
    first N in that order (small subsets for tests).
    """
    root = data_dir or default_data_dir() / "diginetica"
    views_path = root / "train-item-views.csv"
    purchases_path = root / "train-purchases.csv"
    views: dict[int, list[tuple[int, int, str]]] = {}
    for line, (sid, _user, item, tf, day) in _rows(
        views_path, ";", DIGI_VIEWS_HEADER, "Diginetica item views"
    ):
        s = _int(views_path, line, "session_id", sid)
        views.setdefault(s, []).append(
            (
                _day_ms(views_path, line, "eventdate", day),
                _int(views_path, line, "timeframe", tf),
                str(_int(views_path, line, "item_id", item)),
            )
        )
    if not views:
        raise DataError(views_path, "no views found; expected at least one data line", 2)
    bought: dict[int, tuple[int, list[str]]] = {}  # session -> (earliest order timeframe, items)
    for line, (sid, _user, tf, _day, _order, item) in _rows(
        purchases_path, ";", DIGI_PURCHASES_HEADER, "Diginetica purchases"
    ):
        s = _int(purchases_path, line, "sessionId", sid)
        if s not in views:
            continue  # purchases of sessions outside the views sample
        t = _int(purchases_path, line, "timeframe", tf)
        _int(purchases_path, line, "itemId", item)
        first, items = bought.get(s, (t, []))
        items.append(item)
        bought[s] = (min(first, t), items)
    cats = load_diginetica_categories(root / "product-categories.csv") if with_categories else {}

    sessions: list[SessionEvents] = []
    for s, rows in views.items():
        base = min(r[0] for r in rows)  # midnight of the session's first day
        rows.sort(key=lambda r: r[1])
        timed: list[tuple[int, int, dict[str, Any]]] = []
        for _day, tf, item in rows:
            path = product_path(item) + (f"&cat={cats[item]}" if item in cats else "")
            ev = {"type": "page_view", "path": path, "page_type": "product", "item": item}
            timed.append((base + tf, 0, ev))
        converted = s in bought
        if converted:
            tf, items = bought[s]
            # Order ties after views (kind 1 > 0): a purchase closes what was viewed.
            timed.append((base + tf, 1, {"type": "purchase", "items": sorted(set(items))}))
        timed.sort(key=lambda x: (x[0], x[1]))
        events: list[dict[str, Any]] = []
        prev = ""
        for seq, (ts, _kind, ev) in enumerate(timed, start=1):
            ev = {**ev, "seq": seq, "ts": ts}
            if ev["type"] == "page_view":
                ev["ref"] = prev
                prev = ev["path"]
            events.append(ev)
        sessions.append(
            SessionEvents(
                f"dg-{s}", events, converted, "diginetica", events[0]["ts"], {"session_id": s}
            )
        )
    sessions.sort(key=lambda x: (x.start_ms, x.extra["session_id"]))
    return sessions[:limit_sessions] if limit_sessions is not None else sessions


# -- Taobao -----------------------------------------------------------------------------------------
TAOBAO_HEADER = ["user_id", "item_id", "category_id", "behavior", "ts"]
TAOBAO_BEHAVIOURS = ("pv", "cart", "fav", "buy")
SESSION_GAP_MS = 30 * 60_000  # a new session after 30 minutes without an event (the usual web rule)


def _taobao_event(behavior: str, item: str, cat: str, prev: str) -> dict[str, Any]:
    if behavior == "pv":
        return {
            "type": "page_view",
            "path": f"{product_path(item)}&cat={cat}",
            "page_type": "product",
            "ref": prev,
            "item": item,
        }
    if behavior == "cart":
        return {"type": "add_to_cart", "item": item, "qty": 1}
    if behavior == "fav":
        return {"type": "custom", "name": "favourite", "props": {"item": item}}
    return {"type": "purchase", "items": [item]}


def load_taobao(
    path: Path | None = None,
    *,
    limit_sessions: int | None = None,
    gap_ms: int = SESSION_GAP_MS,
) -> list[SessionEvents]:
    """Taobao user behaviour as Lifeline sessions, with carts and purchases per event.

    The data has users, not sessions: a user's events split into sessions
    wherever ``gap_ms`` passes without one. ``pv`` becomes a ``page_view`` of
    the product page (with its category), ``cart`` an ``add_to_cart``,
    ``fav`` a ``custom`` event named ``favourite``, ``buy`` a ``purchase``.
    Events of the same second keep the file's order; ``ts`` is in ms.

    The file is a window of time (about two hours), so a session is cut off
    at both ends of it. ``extra["observed_until_ms"]`` is the window's end:
    a session whose last event is within ``gap_ms`` of it may have gone on,
    and exit labels that need its end treat its last rows as unknown
    (:func:`training.labels.exit_labels`). A session that began before the
    window looks like a new one; nothing here can tell.
    ``extra["user_id"]`` lets a split keep a user's sessions together.
    """
    path = path or default_data_dir() / "taobao" / "user-behavior.csv"
    by_user: dict[str, list[tuple[int, int, str, str, str]]] = {}
    for line, (user, item, cat, behavior, ts) in _rows(path, ",", TAOBAO_HEADER, "Taobao events"):
        if behavior not in TAOBAO_BEHAVIOURS:
            raise DataError(
                path, f"expected behavior in {'/'.join(TAOBAO_BEHAVIOURS)}, got {behavior!r}", line
            )
        t = _int(path, line, "ts", ts) * 1000
        by_user.setdefault(str(_int(path, line, "user_id", user)), []).append(
            (
                t,
                line,
                str(_int(path, line, "item_id", item)),
                str(_int(path, line, "category_id", cat)),
                behavior,
            )
        )
    if not by_user:
        raise DataError(path, "no events found; expected at least one data line", 2)
    window_end = max(r[0] for rows in by_user.values() for r in rows)
    sessions: list[SessionEvents] = []
    for user, rows in by_user.items():
        rows.sort()
        runs: list[list[tuple[int, int, str, str, str]]] = []
        for r in rows:
            if not runs or r[0] - runs[-1][-1][0] > gap_ms:
                runs.append([])
            runs[-1].append(r)
        for k, run in enumerate(runs):
            events: list[dict[str, Any]] = []
            prev = ""
            for seq, (t, _line, item, cat, behavior) in enumerate(run, start=1):
                ev = _taobao_event(behavior, item, cat, prev)
                if ev["type"] == "page_view":
                    prev = ev["path"]
                events.append({**ev, "seq": seq, "ts": t})
            converted = any(e["type"] == "purchase" for e in events)
            sessions.append(
                SessionEvents(
                    f"tb-{user}-{k}",
                    events,
                    converted,
                    "taobao",
                    run[0][0],
                    {"user_id": user, "observed_until_ms": window_end},
                )
            )
    sessions.sort(key=lambda x: (x.start_ms, x.sid))
    return sessions[:limit_sessions] if limit_sessions is not None else sessions


# -- YOOCHOOSE --------------------------------------------------------------------------------------
YOO_HEADER = ["SessionId", "ItemId", "Time"]


def load_yoochoose(
    path: Path | None = None, *, limit_sessions: int | None = None
) -> list[SessionEvents]:
    """YOOCHOOSE click sessions as ``page_view`` events on product pages, unlabelled.

    ``Time`` (unix seconds, fractional) becomes ``ts`` in ms. Sessions come
    back ordered by start time; ``limit_sessions`` keeps the first N.
    """
    path = path or default_data_dir() / "yoochoose" / "clicks-train.tsv"
    clicks: dict[int, list[tuple[int, str]]] = {}
    for line, (sid, item, t) in _rows(path, "\t", YOO_HEADER, "YOOCHOOSE clicks"):
        s = _int(path, line, "SessionId", sid)
        ts = int(round(_float(path, line, "Time", t) * 1000))
        clicks.setdefault(s, []).append((ts, str(_int(path, line, "ItemId", item))))
    if not clicks:
        raise DataError(path, "no clicks found; expected at least one data line", 2)
    sessions = []
    for s, rows in clicks.items():
        rows.sort()
        events = []
        prev = ""
        for seq, (ts, item) in enumerate(rows, start=1):
            p = product_path(item)
            events.append(
                {
                    "type": "page_view",
                    "seq": seq,
                    "ts": ts,
                    "path": p,
                    "page_type": "product",
                    "ref": prev,
                    "item": item,
                }
            )
            prev = p
        sessions.append(
            SessionEvents(f"yc-{s}", events, None, "yoochoose", rows[0][0], {"session_id": s})
        )
    sessions.sort(key=lambda x: (x.start_ms, x.extra["session_id"]))
    return sessions[:limit_sessions] if limit_sessions is not None else sessions


# -- UCI Online Shoppers ------------------------------------------------------------------------------
OS_NUMERIC = [
    "Administrative",
    "Administrative_Duration",
    "Informational",
    "Informational_Duration",
    "ProductRelated",
    "ProductRelated_Duration",
    "BounceRates",
    "ExitRates",
    "PageValues",
    "SpecialDay",
]
OS_CODES = ["OperatingSystems", "Browser", "Region", "TrafficType"]  # integer category codes
OS_HEADER = [*OS_NUMERIC, "Month", *OS_CODES, "VisitorType", "Weekend", "Revenue"]
OS_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "June", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
OS_VISITOR_TYPES = ["New_Visitor", "Returning_Visitor", "Other"]
OS_FEATURES = [c for c in OS_HEADER if c != "Revenue"]  # the 17 session features


def _bool(path: Path, line: int, column: str, value: str) -> bool:
    v = value.strip().upper()
    if v in ("TRUE", "FALSE"):
        return v == "TRUE"
    raise DataError(path, f"expected TRUE or FALSE in {column}, got {value!r}", line)


def load_online_shoppers(path: Path | None = None):  # -> pandas.DataFrame
    """The UCI Online Shoppers table: 17 session features and the boolean ``Revenue``.

    Numeric columns are floats, the four code columns ints, ``Month`` and
    ``VisitorType`` pandas categoricals (all twelve months, although the data
    has no January or April), ``Weekend`` and ``Revenue`` booleans.
    """
    import pandas as pd

    path = path or default_data_dir() / "online_shoppers" / "online_shoppers_intention.csv"
    cols: dict[str, list[Any]] = {c: [] for c in OS_HEADER}
    for line, fields in _rows(path, ";", OS_HEADER, "the UCI Online Shoppers table"):
        rec = dict(zip(OS_HEADER, fields, strict=True))
        for c in OS_NUMERIC:
            cols[c].append(_float(path, line, c, rec[c]))
        for c in OS_CODES:
            cols[c].append(_int(path, line, c, rec[c]))
        if rec["Month"] not in OS_MONTHS:
            raise DataError(path, f"expected Month in {OS_MONTHS}, got {rec['Month']!r}", line)
        cols["Month"].append(rec["Month"])
        if rec["VisitorType"] not in OS_VISITOR_TYPES:
            raise DataError(
                path,
                f"expected VisitorType in {OS_VISITOR_TYPES}, got {rec['VisitorType']!r}",
                line,
            )
        cols["VisitorType"].append(rec["VisitorType"])
        cols["Weekend"].append(_bool(path, line, "Weekend", rec["Weekend"]))
        cols["Revenue"].append(_bool(path, line, "Revenue", rec["Revenue"]))
    if not cols["Revenue"]:
        raise DataError(path, "no sessions found; expected at least one data line", 2)
    df = pd.DataFrame(cols)
    df["Month"] = pd.Categorical(df["Month"], categories=OS_MONTHS)
    df["VisitorType"] = pd.Categorical(df["VisitorType"], categories=OS_VISITOR_TYPES)
    return df
