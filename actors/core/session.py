"""One visitor's session: its rolling features, struggle signals and policy state.

A :class:`Session` is the state of a virtual actor. It consumes normalised
events (from :func:`actors.core.events.validate_event`) strictly in sequence order
and, after each one, yields that event's feature row. The live shards and
training's replay call the same :meth:`Session.apply`, so serving and
training cannot disagree about a feature.

Short windows are exponentially decayed counts (a count that halves every
half-life) rather than lists of timestamps: O(1) memory and time per event,
and a snapshot of a few hundred bytes. Features never depend on the
policy's decisions, only on events, so rows can be computed for a whole
batch before any of it is scored.

The signal vector and the feature row are not written out here: they are
compiled once, at import, from the declarations in :mod:`actors.core.signals`
and :mod:`actors.core.features` (see :data:`ROW_SOURCE`).

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

import operator
import re
import zlib
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgpack

from actors.core.detectors import (
    DEFAULT_DETECTORS,
    RAGE_EXEMPT_TARGETS,
    DetectorConfig,
    decay,
    is_rage_step,
    is_thrash,
)
from actors.core.features import (
    COUNTERS,
    FEATURE_SCHEMA_HASH,
    FEATURES,
    NO_PAGE,
    PAGE_FLAGS,
    STRONG_SIGNAL,
    C,
    item_of_path,
    page_type_of,
)
from actors.core.signals import DECLARED as DECLARED_SIGNALS
from actors.core.signals import SIGNALS

MAX_UNIQUE_PAGES = 64  # beyond this, n_unique_pages saturates (bounded memory)
MAX_ERROR_FIELDS = 16
EVENTS_HALF_LIFE_S = 30.0
CLICKS_HALF_LIFE_S = 15.0
MAX_OFFERS = 8  # interventions remembered per session (the policy caps them far lower)
MAX_VIDEO_RATE = 16.0  # browsers refuse faster rates; a bigger number is noise


class EventView(NamedTuple):
    """A session as it was right after one event: what the policy decides on."""

    seq: int
    ts: int
    row: list[float]
    page_path: str
    page_type: str
    error_field: str


# Decayed counters, by index into Session.decayed: events and clicks (their own
# half-lives), one per counted signal (declared in actors.core.signals), then
# cart removals; all but the first two halve every DetectorConfig.half_life_s.
DECAYED: tuple[str, ...] = (
    "events",
    "clicks",
    *(sig.name for sig in DECLARED_SIGNALS if sig.counted),
    "cart_removes",
)
D: dict[str, int] = {name: i for i, name in enumerate(DECAYED)}
_N_DECAYED = len(DECAYED)
D_EVENTS, D_CLICKS, D_CART_REMOVES = D["events"], D["clicks"], D["cart_removes"]
_FIRST_SITE_DECAYED = 2  # from here on, the site's half-life applies
# The detectors' indices as module constants: a global read per event, not a dict lookup.
(
    _RAGE,
    _DEAD,
    _FORM,
    _UTURN,
    _THRASH,
    _JS,
    _SCROLL,
    _ABANDON,
) = (
    D[n]
    for n in (
        "rage_click",
        "dead_click",
        "form_struggle",
        "uturn",
        "cursor_thrash",
        "js_error",
        "scroll_thrash",
        "form_abandon",
    )
)

# Plain counters, by index into Session.counts (their layout: actors.core.features.COUNTERS).
C_CLICKS = C["n_clicks"]
C_RAGE = C["rage_clicks"]
C_DEAD = C["dead_clicks"]
C_FOCUS = C["form_focuses"]
C_INPUT = C["form_inputs"]
C_FORM_ERR = C["form_errors"]
C_REEDIT = C["form_reedits"]
C_SUBMIT = C["form_submits"]
C_ABANDON = C["form_abandons"]
C_THRASH = C["cursor_thrash"]
C_SCROLL_REV = C["scroll_reversals"]
C_IDLE = C["idle_gaps"]
C_PLAYS = C["video_plays"]
C_PAUSES = C["video_pauses"]
C_SEEKS = C["video_seeks"]
C_SEEK_BACK = C["video_seek_back"]
C_SEEK_FWD = C["video_seek_fwd"]
C_JS = C["js_errors"]
C_UTURN = C["uturns"]
C_HIDDEN = C["hidden_count"]
C_CART_ADD = C["cart_adds"]
C_CART_RM = C["cart_removes"]

_OUTCOMES = {"intervention_accepted": "accepted", "intervention_dismissed": "dismissed"}
_IV_COUNTERS = {
    "intervention_shown": C["iv_shown"],
    "intervention_dismissed": C["iv_dismissed"],
    "intervention_accepted": C["iv_accepted"],
}


def _signal_exprs() -> list[str]:
    """Each declared signal's strength as an expression over ``s``, ``cfg`` and ``d``."""
    return [
        f"d[{D[sig.name]}] / cfg.{sig.full}" if sig.counted else f"({sig.strength})"
        for sig in DECLARED_SIGNALS
    ]


def _feature_exprs() -> list[str]:
    """Each declared feature's getter, its ``{counter}`` references resolved to ``c[i]``."""
    out = []
    for f in FEATURES:
        if f.counter:
            out.append(f"c[{C[f.names[0]]}]")
        else:
            out.append(re.sub(r"\{(\w+)\}", lambda m: f"c[{C[m.group(1)]}]", f.get))
    return out


# The two per-event functions, generated once from the declarations (signals,
# features) so the hot path runs straight-line code: no loop over declaration
# objects, no call per column. Kept as source for reading and debugging.
SIGNALS_SOURCE = (
    "def _signal_values(s):\n"
    "    cfg = s.cfg\n"
    "    d = s.decayed\n"
    f"    return [v if v < 1.0 else 1.0 for v in ({', '.join(_signal_exprs())},)]\n"
)
ROW_SOURCE = (
    "def row(s):\n"
    "    cfg = s.cfg\n"
    "    d = s.decayed\n"
    "    c = s.counts\n"
    "    ts = s.last_ts\n"
    f"    sig = [v if v < 1.0 else 1.0 for v in ({', '.join(_signal_exprs())},)]\n"
    "    strong = 0\n"
    "    for v in sig:\n"
    "        if v >= STRONG_SIGNAL:\n"
    "            strong += 1\n"
    f"    return [{', '.join(_feature_exprs())}]\n"
)


# All the generated code may use besides its arguments (see Feature and Signal).
_GENERATED_GLOBALS: dict[str, Any] = {
    "decay": decay,
    "max": max,
    "len": len,
    "STRONG_SIGNAL": STRONG_SIGNAL,
    "PAGE_FLAGS": PAGE_FLAGS,
    "NO_PAGE": NO_PAGE,
    **{f"D_{name.upper()}": i for name, i in D.items()},
}


def _compile(source: str, name: str) -> Any:
    namespace: dict[str, Any] = {}
    code = compile(source, f"<actors.core.session.{name}>", "exec")
    exec(code, {"__builtins__": {}, **_GENERATED_GLOBALS}, namespace)  # noqa: S102 - our own source
    return namespace[name]


class Session:
    """The state of one visitor's session and the rules that update it.

    Limits: events must arrive in sequence order (the host guarantees it);
    a session tracks one "current" video per page, not each media element.
    """

    __slots__ = (
        "sid",
        "site",
        "cfg",
        "last_seq",
        "n_events",
        "start_ts",
        "last_ts",
        "gap_ms",
        "max_idle_ms",
        "counts",
        "decayed",
        "n_pages",
        "pages_seen",
        "page_path",
        "prev_path",
        "page_type",
        "page_start_ts",
        "dwell_done_ms",
        "pages_done",
        "scroll_page",
        "scroll_max",
        "scroll_dir",
        "last_click",
        "burst",
        "error_fields",
        "last_error_field",
        "edited_fields",
        "open_form",
        "open_form_fields",
        "hover_ms",
        "video_ratio",
        "video_rate",
        "video_skipped_s",
        "video_playing",
        "video_ended",
        "dropoff_strength",
        "dropoff_ts",
        "cart_items",
        "cart_value",
        "cart_item_ids",
        "recent_items",
        "purchased",
        "iv_count",
        "iv_last_ts",
        "iv_peak",
        "consent",
        "vid",
        "offers",
        "history",
        "tally",
    )

    def __init__(
        self, sid: str, site: str = "default", cfg: DetectorConfig = DEFAULT_DETECTORS
    ) -> None:
        self.sid = sid
        self.site = site
        self.cfg = cfg
        self.last_seq = 0
        self.n_events = 0
        self.start_ts = 0
        self.last_ts = 0
        self.gap_ms = 0
        self.max_idle_ms = 0
        self.counts = [0] * len(COUNTERS)
        self.decayed = [0.0] * _N_DECAYED
        self.n_pages = 0
        self.pages_seen: list[int] = []
        self.page_path = ""
        self.prev_path = ""
        self.page_type = "other"
        self.page_start_ts = 0
        self.dwell_done_ms = 0
        self.pages_done = 0
        self.scroll_page = 0.0
        self.scroll_max = 0.0
        self.scroll_dir = ""
        self.last_click: tuple[int, float, float] | None = None
        self.burst = 0
        self.error_fields: list[str] = []
        self.last_error_field = ""  # the rejected field a form hint points at
        self.edited_fields: list[str] = []  # fields the visitor typed into (bounded)
        self.open_form = ""  # the form edited since its last submit, if any
        self.open_form_fields: list[str] = []  # its fields edited since then (bounded)
        self.hover_ms = 0.0
        self.video_ratio = 0.0
        self.video_rate = 1.0  # playback rate of the current video
        self.video_skipped_s = 0.0  # seconds of video skipped by seeking ahead, all videos
        self.video_playing = False
        self.video_ended = False
        self.dropoff_strength = 0.0
        self.dropoff_ts = 0
        self.cart_items = 0
        self.cart_value = 0.0
        self.cart_item_ids: list[str] = []
        self.recent_items: list[str] = []
        self.purchased = False
        # Policy state: decisions, not events, change these; they are not features.
        self.iv_count = 0
        self.iv_last_ts = 0
        self.iv_peak = -1  # the budget's histogram bin of this session (-1: not counted yet)
        self.consent: list[str] = []
        # The visitor the session's hello named (pseudonymous; None: an anonymous session).
        self.vid: str | None = None
        # The interventions shown in this session, [iid, kind, ts, outcome] (bounded): what
        # the visitor's profile remembers of them when the session ends (actors/core/profile.py).
        self.offers: list[list[Any]] = []
        # What this visit may use of the visitor's profile, set when the visit starts and
        # only with personalisation consent (profile.history_of); None: a first visit.
        self.history: list[Any] | None = None
        # What the console's tally already counted of this session today
        # (actors.core.tally: day, furthest funnel step, strong signals, flags).
        self.tally = [-1, -1, 0, 0]

    # -- events -------------------------------------------------------------

    def apply(self, ev: dict[str, Any]) -> list[float]:
        """Consume one normalised event and return its feature row."""
        ts = ev["ts"]
        if self.n_events == 0:
            self.start_ts = self.last_ts = ts
            self.page_start_ts = ts
        # Client clocks can step backwards a little; features use a monotonic clock.
        ts = max(ts, self.last_ts)
        gap = ts - self.last_ts
        self._decay(gap)
        self.gap_ms = gap
        if gap >= self.cfg.idle_gap_ms:
            self.counts[C_IDLE] += 1
        if gap > self.max_idle_ms:
            self.max_idle_ms = gap
        self.last_ts = ts
        self.last_seq = ev["seq"]
        self.n_events += 1
        self.decayed[D_EVENTS] += 1.0
        handler = _HANDLERS.get(ev["type"])
        if handler is not None:
            handler(self, ev, ts)
        return self.row()

    def _decay(self, gap_ms: int) -> None:
        if gap_ms <= 0:
            return
        d = self.decayed
        d[D_EVENTS] = decay(d[D_EVENTS], gap_ms, EVENTS_HALF_LIFE_S)
        d[D_CLICKS] = decay(d[D_CLICKS], gap_ms, CLICKS_HALF_LIFE_S)
        factor = 0.5 ** (gap_ms / (self.cfg.half_life_s * 1000.0))
        for i in range(_FIRST_SITE_DECAYED, _N_DECAYED):
            if d[i]:  # most sessions never struggle: their counters stay exactly 0
                d[i] *= factor

    def _page_view(self, ev: dict[str, Any], ts: int) -> None:
        path = ev["path"]
        if self.n_pages:
            self._leave_page(ts)
            self._leave_form()
            # A u-turn: straight back to the page before this one, within seconds.
            if path == self.prev_path and ts - self.page_start_ts <= self.cfg.uturn_window_ms:
                self.counts[C_UTURN] += 1
                self.decayed[_UTURN] += 1.0
            self.dwell_done_ms += ts - self.page_start_ts
            self.pages_done += 1
        self.prev_path = self.page_path
        self.page_path = path
        self.page_type = page_type_of(path, ev.get("page_type"))
        self.page_start_ts = ts
        self.n_pages += 1
        h = zlib.crc32(path.encode())
        if h not in self.pages_seen and len(self.pages_seen) < MAX_UNIQUE_PAGES:
            self.pages_seen.append(h)
        item = ev.get("item") or (item_of_path(path) if self.page_type == "product" else None)
        if item:
            self._saw_item(item)
        self.scroll_page = 0.0
        self.scroll_dir = ""
        self.last_click = None
        self.burst = 0
        self.video_ratio = 0.0
        self.video_rate = 1.0
        self.video_playing = False
        self.video_ended = False

    def _leave_form(self) -> None:
        """Leaving a form with enough edited fields unsent is a form abandonment.

        Called when the visitor moves to another page or starts on another
        form. A hidden tab is not a departure: visitors switch tabs to look
        up what a field asks for.
        """
        if len(self.open_form_fields) >= self.cfg.abandon_fields:
            self.counts[C_ABANDON] += 1
            self.decayed[_ABANDON] += 1.0
        self.open_form = ""
        self.open_form_fields = []

    def _leave_page(self, ts: int) -> None:
        """Leaving the page (or hiding it) while a video is unfinished is a drop-off."""
        if (
            self.video_playing
            and not self.video_ended
            and self.video_ratio < self.cfg.video_dropoff_ratio
        ):
            self.dropoff_strength = 1.0 - self.video_ratio / self.cfg.video_dropoff_ratio
            self.dropoff_ts = ts
            self.video_playing = False

    def _click(self, ev: dict[str, Any], ts: int) -> None:
        c = self.counts
        c[C_CLICKS] += 1
        self.decayed[D_CLICKS] += 1.0
        if not ev["reacted"]:
            c[C_DEAD] += 1
            self.decayed[_DEAD] += 1.0
        x, y = float(ev["x"]), float(ev["y"])
        if ev.get("target") in RAGE_EXEMPT_TARGETS:
            self.last_click = None
            self.burst = 0
            return
        last = self.last_click
        if last is not None and is_rage_step(last[0], last[1], last[2], ts, x, y, self.cfg):
            self.burst += 1
        else:
            self.burst = 1
        # One rage click per burst, counted when the burst reaches the threshold.
        if self.burst == self.cfg.rage_clicks:
            c[C_RAGE] += 1
            self.decayed[_RAGE] += 1.0
        self.last_click = (ts, x, y)

    def _scroll(self, ev: dict[str, Any], ts: int) -> None:
        depth = float(ev["depth"])
        if depth > 1.0:  # a percentage
            depth = depth / 100.0
        depth = min(max(depth, 0.0), 1.0)
        self.scroll_page = max(self.scroll_page, depth)
        self.scroll_max = max(self.scroll_max, depth)
        direction = ev["dir"]
        if self.scroll_dir and direction != self.scroll_dir:
            self.counts[C_SCROLL_REV] += 1
            self.decayed[_SCROLL] += 1.0
        self.scroll_dir = direction

    def _form_focus(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[C_FOCUS] += 1
        if self.open_form and ev["form"] != self.open_form:
            self._leave_form()

    def _form_input(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[C_INPUT] += int(ev.get("count") or 1)
        field = ev["field"]
        if ev["form"] != self.open_form:
            self._leave_form()
            self.open_form = ev["form"]
        if field not in self.open_form_fields and len(self.open_form_fields) < MAX_ERROR_FIELDS:
            self.open_form_fields.append(field)
        if field not in self.edited_fields:
            if len(self.edited_fields) >= MAX_ERROR_FIELDS:
                self.edited_fields.pop(0)
            self.edited_fields.append(field)
        # Editing a field again after it was rejected is a re-edit; each
        # rejection counts once.
        if field in self.error_fields:
            self.error_fields.remove(field)
            self.counts[C_REEDIT] += 1
            self.decayed[_FORM] += 0.5

    def _form_error(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[C_FORM_ERR] += 1
        self.decayed[_FORM] += 1.0
        field = ev["field"]
        # A failed submit rejects every invalid field at once, in page order,
        # and the policy may decide before the last of them arrives. The hint
        # points at a rejected field the visitor typed into rather than at one
        # left empty, and stays on it while it is still rejected (not edited
        # since).
        held, edited = self.last_error_field, self.edited_fields
        if field in edited or held not in edited or held not in self.error_fields:
            self.last_error_field = field
        if field not in self.error_fields:
            if len(self.error_fields) >= MAX_ERROR_FIELDS:
                self.error_fields.pop(0)
            self.error_fields.append(field)

    def _form_submit(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[C_SUBMIT] += 1
        if ev["form"] == self.open_form:
            # Sent, even if refused: a refused form is form struggle, not abandonment.
            self.open_form = ""
            self.open_form_fields = []

    def _mouse(self, ev: dict[str, Any], ts: int) -> None:
        if is_thrash(ev["turns"], self.cfg):
            self.counts[C_THRASH] += 1
            self.decayed[_THRASH] += 1.0

    def _hover(self, ev: dict[str, Any], ts: int) -> None:
        self.hover_ms += max(float(ev["dwell"]), 0.0)

    def _video_progress(self, ev: dict[str, Any]) -> None:
        dur = ev.get("dur")
        t = ev.get("t", ev.get("to"))
        if dur and t is not None and dur > 0:
            self.video_ratio = max(self.video_ratio, min(float(t) / float(dur), 1.0))

    def _video_play(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[C_PLAYS] += 1
        self.video_playing = True
        self._video_progress(ev)

    def _video_pause(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[C_PAUSES] += 1
        self._video_progress(ev)

    def _video_seek(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[C_SEEKS] += 1
        if ev["to"] < ev["from"]:
            self.counts[C_SEEK_BACK] += 1
        elif ev["to"] > ev["from"]:
            self.counts[C_SEEK_FWD] += 1
            self.video_skipped_s += float(ev["to"]) - float(ev["from"])
        self._video_progress(ev)

    def _video_rate(self, ev: dict[str, Any], ts: int) -> None:
        self.video_rate = min(max(float(ev["rate"]), 0.0), MAX_VIDEO_RATE)
        self._video_progress(ev)

    def _video_ended(self, ev: dict[str, Any], ts: int) -> None:
        self.video_ended = True
        self.video_ratio = 1.0

    def _visibility(self, ev: dict[str, Any], ts: int) -> None:
        if ev["state"] == "hidden":
            self.counts[C_HIDDEN] += 1
            self._leave_page(ts)

    def _js_error(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[C_JS] += 1
        self.decayed[_JS] += 1.0

    def _add_to_cart(self, ev: dict[str, Any], ts: int) -> None:
        qty = max(int(ev.get("qty") or 1), 1)
        self.cart_items += qty
        self.cart_value += qty * float(ev.get("price") or 0.0)
        self.counts[C_CART_ADD] += 1
        item = ev["item"]
        if item not in self.cart_item_ids and len(self.cart_item_ids) < 32:
            self.cart_item_ids.append(item)
        self._saw_item(item)

    def _remove_from_cart(self, ev: dict[str, Any], ts: int) -> None:
        qty = max(int(ev.get("qty") or 1), 1)
        self.cart_items = max(self.cart_items - qty, 0)
        if self.cart_items == 0:
            self.cart_value = 0.0
        item = ev["item"]
        if item in self.cart_item_ids:
            self.cart_item_ids.remove(item)
        self.counts[C_CART_RM] += 1
        self.decayed[D_CART_REMOVES] += 1.0

    def _purchase(self, ev: dict[str, Any], ts: int) -> None:
        self.purchased = True
        self.cart_items = 0
        self.cart_value = 0.0
        self.cart_item_ids = []

    def _intervention(self, ev: dict[str, Any], ts: int) -> None:
        self.counts[_IV_COUNTERS[ev["type"]]] += 1
        outcome = _OUTCOMES.get(ev["type"])
        if outcome is not None:
            for offer in self.offers:
                if offer[0] == ev["iid"]:
                    offer[3] = outcome
                    break

    def offered(self, iid: str, kind: str, ts: int) -> None:
        """Note an intervention shown to the visitor (the policy calls it; holdouts are not shown)."""
        if len(self.offers) >= MAX_OFFERS:
            self.offers.pop(0)
        self.offers.append([iid, kind, ts, "ignored"])

    def _saw_item(self, item: str) -> None:
        """Remember the last few items seen, for recommendations (ids, never personal data)."""
        if item in self.recent_items:
            self.recent_items.remove(item)
        self.recent_items.append(item)
        if len(self.recent_items) > 8:
            self.recent_items.pop(0)

    def view(self, row: list[float]) -> EventView:
        """Capture what the policy needs about the event just applied (``row`` is its row)."""
        return EventView(
            self.last_seq, self.last_ts, row, self.page_path, self.page_type, self.last_error_field
        )

    # -- derived ------------------------------------------------------------

    def signals(self) -> dict[str, float]:
        """Struggle signal strengths (0..1) as of the last event."""
        return dict(zip(SIGNALS, self._signal_values(), strict=True))

    # Straight-line code generated from the declarations (see ROW_SOURCE).
    _signal_values = _compile(SIGNALS_SOURCE, "_signal_values")
    row = _compile(ROW_SOURCE, "row")
    row.__doc__ = """The feature row as of the last event, in ``FEATURE_NAMES`` order.

    Compiled from :data:`actors.core.features.FEATURES`: built once per event
    on the shards' hot path.
    """

    # -- snapshots ----------------------------------------------------------

    def packed(self) -> bytes:
        """Everything but the config, as msgpack bytes: the form snapshots are kept in.

        ``[SNAPSHOT_LAYOUT, fields]``. Packs the fields as they are, without
        copying them first (msgpack writes a tuple as it writes a list),
        because a shard snapshots every live session every few seconds while
        holding its batch lock.
        """
        return msgpack.packb((SNAPSHOT_LAYOUT, _STATE_FIELDS(self)))

    @classmethod
    def from_state(cls, state: list[Any], cfg: DetectorConfig = DEFAULT_DETECTORS) -> Session:
        """Rebuild a session from its unpacked :meth:`packed` state; the inverse, exactly.

        Raises :class:`SnapshotMismatch` for a state of another layout (a
        snapshot written by an older or newer release).
        """
        fields = _state_fields(state)
        s = cls.__new__(cls)
        s.cfg = cfg
        for name, value in zip(_STATE_NAMES, fields, strict=True):
            setattr(s, name, _unpack(name, value))
        return s


class SnapshotMismatch(ValueError):
    """A snapshot this code cannot read: the session is rebuilt from its event log instead."""


def _state_fields(state: Any) -> list[Any]:
    """The fields of an unpacked snapshot of this layout; SnapshotMismatch for another."""
    if not (isinstance(state, list) and len(state) == 2 and state[0] == SNAPSHOT_LAYOUT):
        raise SnapshotMismatch("the snapshot was written by code with another session layout")
    fields = state[1]
    if not isinstance(fields, list) or len(fields) != len(_STATE_NAMES):
        raise SnapshotMismatch(f"snapshot has {len(fields)} fields, expected {len(_STATE_NAMES)}")
    return fields


def snapshot_seq(state: Any) -> int:
    """The last event seq an unpacked snapshot includes; 0 for none or one this code cannot read.

    What an activation needs of the log: the events after it (0: the whole log).
    """
    if state is None:
        return 0
    try:
        return int(_state_fields(state)[_LAST_SEQ])
    except SnapshotMismatch:
        return 0


_STATE_NAMES = tuple(name for name in Session.__slots__ if name != "cfg")
_STATE_FIELDS = operator.attrgetter(*_STATE_NAMES)
_LAST_SEQ = _STATE_NAMES.index("last_seq")
# What a snapshot's fields mean: their names and order, the counters' and decayed
# signals' layout, and the feature schema. A release that changes any of them reads
# no snapshot of an older one (and vice versa): those sessions replay their event log.
SNAPSHOT_LAYOUT = format(
    zlib.crc32(repr((_STATE_NAMES, COUNTERS, DECAYED, FEATURE_SCHEMA_HASH)).encode()), "08x"
)


def _unpack(name: str, value: Any) -> Any:
    if name == "last_click" and value is not None:
        return tuple(value)
    if isinstance(value, (tuple, list)):
        # A copy: a session must not share its counters with the state it came
        # from, or a second session built from the same state starts ahead.
        return list(value)
    return value


_HANDLERS = {
    "page_view": Session._page_view,
    "click": Session._click,
    "scroll": Session._scroll,
    "form_focus": Session._form_focus,
    "form_input": Session._form_input,
    "form_error": Session._form_error,
    "form_submit": Session._form_submit,
    "mouse": Session._mouse,
    "hover": Session._hover,
    "video_play": Session._video_play,
    "video_pause": Session._video_pause,
    "video_seek": Session._video_seek,
    "video_rate": Session._video_rate,
    "video_ended": Session._video_ended,
    "visibility": Session._visibility,
    "js_error": Session._js_error,
    "add_to_cart": Session._add_to_cart,
    "remove_from_cart": Session._remove_from_cart,
    "purchase": Session._purchase,
    "intervention_shown": Session._intervention,
    "intervention_accepted": Session._intervention,
    "intervention_dismissed": Session._intervention,
}


def replay(
    events: Iterable[dict[str, Any]],
    sid: str = "replay",
    site: str = "default",
    cfg: DetectorConfig = DEFAULT_DETECTORS,
) -> list[list[float]]:
    """Feature rows for normalised events, one per event: what training uses."""
    session = Session(sid, site, cfg)
    return [session.apply(ev) for ev in events]
