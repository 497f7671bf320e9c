"""The feature vector: its columns declared once with their getters, and the hash that pins them.

A model is trained on rows in exactly this order; the registry stores
``FEATURE_SCHEMA_HASH`` with every model and the shards refuse a model whose
hash differs, so a feature change can never be silently scored by a model
trained on another layout. Changing :data:`FEATURES` is a schema change:
bump nothing by hand, the hash follows (then rebuild the bundled model).

To add a feature: declare it in :data:`FEATURES` with its getter (and, if it
needs new state, keep that state in :class:`actors.core.session.Session`).

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from actors.core.signals import SIGNALS

# Page types the policy and the features understand. The client may send one
# (from <meta name="lifeline-page-type">); otherwise it is inferred from the path.
PAGE_TYPES: tuple[str, ...] = ("home", "listing", "product", "cart", "checkout", "form", "help")

# One-hot page-type flags, one constant tuple per page type ("other": none set).
PAGE_FLAGS = {p: tuple(1.0 if p == q else 0.0 for q in PAGE_TYPES) for p in PAGE_TYPES}
NO_PAGE = (0.0,) * len(PAGE_TYPES)

COUNTER = "{counter}"  # the getter of a feature that is a plain count


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature column (or a group of columns one getter fills), declared with its getter.

    ``get`` is a Python expression that :mod:`actors.core.session` compiles,
    once, into ``Session.row`` (per event on the shards' hot path, where a
    call per column would cost more than the row). It may use ``s`` (the
    session), ``ts`` (its last event time, ms), ``d`` (its decayed counters,
    indexed by ``D_<NAME>`` of the session module), ``sig`` (the signal strengths,
    :data:`SIGNALS` order), ``strong`` (how many are strong), ``PAGE_FLAGS``
    and ``NO_PAGE``, and ``{name}`` for the value of the counter feature
    ``name``. :data:`COUNTER` declares a plain count: the session keeps it in
    ``s.counts`` and its handlers bump it (``self.counts[C[name]] += 1``).
    A group (``names`` of several columns) has a starred getter
    (``*expr``) that yields exactly that many values.
    """

    names: tuple[str, ...]
    get: str

    @property
    def counter(self) -> bool:
        return self.get == COUNTER


def col(name: str, get: str) -> Feature:
    """A feature column computed by the expression ``get``."""
    return Feature((name,), get)


def count(name: str) -> Feature:
    """A feature column that is a plain count kept by the session."""
    return Feature((name,), COUNTER)


# The feature row, in order. Ints go in as ints: every consumer, NumPy's float32
# conversion included, reads them as the same numbers, and converting costs time.
FEATURES: tuple[Feature, ...] = (
    col("n_events", "s.n_events"),
    col("session_age_s", "(ts - s.start_ts) / 1000.0"),
    col("gap_s", "s.gap_ms / 1000.0"),
    col("n_pages", "s.n_pages"),
    col("n_unique_pages", "len(s.pages_seen)"),
    col("page_dwell_s", "(ts - s.page_start_ts) / 1000.0"),
    col("mean_page_dwell_s", "s.dwell_done_ms / 1000.0 / s.pages_done if s.pages_done else 0.0"),
    col("scroll_depth_page", "s.scroll_page"),
    col("scroll_depth_max", "s.scroll_max"),
    count("n_clicks"),
    col("events_rate", "d[D_EVENTS]"),  # events, decayed with a 30 s half-life
    col("clicks_rate", "d[D_CLICKS]"),  # clicks, decayed with a 15 s half-life
    count("rage_clicks"),
    count("dead_clicks"),
    col("dead_click_ratio", "{dead_clicks} / {n_clicks} if {n_clicks} else 0.0"),
    count("form_focuses"),
    count("form_inputs"),
    count("form_errors"),
    count("form_reedits"),
    count("form_submits"),
    count("form_abandons"),  # forms edited, then left unsent (another form or page)
    count("cursor_thrash"),
    count("scroll_reversals"),
    count("idle_gaps"),
    col("max_idle_s", "s.max_idle_ms / 1000.0"),
    col("hover_dwell_s", "s.hover_ms / 1000.0"),
    count("video_plays"),
    count("video_pauses"),
    count("video_seeks"),
    count("video_seek_back"),
    count("video_seek_fwd"),  # skips ahead
    col("video_skipped_s", "s.video_skipped_s"),  # seconds of video skipped by seeking ahead
    col("video_rate", "s.video_rate"),  # playback rate of the current video (1.0 = normal)
    col("video_watch_ratio", "s.video_ratio"),
    col("video_ended", "1.0 if s.video_ended else 0.0"),
    count("js_errors"),
    count("uturns"),
    count("hidden_count"),
    col("cart_items", "s.cart_items"),
    col("cart_value", "s.cart_value"),
    count("cart_adds"),
    count("cart_removes"),
    col("purchased", "1.0 if s.purchased else 0.0"),
    Feature(tuple(f"page_{p}" for p in PAGE_TYPES), "*PAGE_FLAGS.get(s.page_type, NO_PAGE)"),
    count("iv_shown"),
    count("iv_dismissed"),
    count("iv_accepted"),
    Feature(tuple(f"sig_{s}" for s in SIGNALS), "*sig"),
    col("n_strong_signals", "strong"),
)

# Each feature in words an operator reads in a decision's reasons ("what pushed
# the exit risk up"). Group features take their words from their group below.
WORDS: dict[str, str] = {
    "n_events": "events so far",
    "session_age_s": "time on the site",
    "gap_s": "pause before this event",
    "n_pages": "pages viewed",
    "n_unique_pages": "different pages viewed",
    "page_dwell_s": "time on this page",
    "mean_page_dwell_s": "time per page",
    "scroll_depth_page": "scrolled down this page",
    "scroll_depth_max": "deepest scroll",
    "n_clicks": "clicks",
    "events_rate": "recent activity",
    "clicks_rate": "recent clicks",
    "rage_clicks": "rage clicks",
    "dead_clicks": "clicks that did nothing",
    "dead_click_ratio": "share of clicks that did nothing",
    "form_focuses": "form fields entered",
    "form_inputs": "form fields typed into",
    "form_errors": "form errors",
    "form_reedits": "form fields edited again",
    "form_submits": "form submissions",
    "form_abandons": "forms left unsent",
    "cursor_thrash": "erratic mouse movement",
    "scroll_reversals": "scrolling back and forth",
    "idle_gaps": "idle pauses",
    "max_idle_s": "longest idle pause",
    "hover_dwell_s": "hovering",
    "video_plays": "videos played",
    "video_pauses": "video pauses",
    "video_seeks": "video seeks",
    "video_seek_back": "video rewinds",
    "video_seek_fwd": "video skips ahead",
    "video_skipped_s": "video skipped",
    "video_rate": "video playback speed",
    "video_watch_ratio": "share of the video watched",
    "video_ended": "video watched to the end",
    "js_errors": "page errors",
    "uturns": "quick returns to the previous page",
    "hidden_count": "tab hidden",
    "cart_items": "items in the cart",
    "cart_value": "cart value",
    "cart_adds": "items added to the cart",
    "cart_removes": "items removed from the cart",
    "purchased": "purchased",
    "iv_shown": "help shown before",
    "iv_dismissed": "help dismissed before",
    "iv_accepted": "help accepted before",
    "n_strong_signals": "strong struggle signals",
}
WORDS.update({f"page_{p}": f"on a {p} page" for p in PAGE_TYPES})
WORDS.update({f"sig_{s}": f"{s.replace('_', ' ')} signal" for s in SIGNALS})

# Returning-visitor features: what a visitor's profile (actors/core/profile.py) says
# when their session starts. Not columns of the row above (the bundled model was not
# trained with them): the policy gets them, with personalisation consent only, and
# training can append them to rows (training/returning_eval.py measures what they add).
RETURNING_FEATURES: tuple[str, ...] = (
    "visits_before",
    "days_since_last_visit",  # -1: never visited before
    "purchases_before",  # earlier visits that bought
    "offers_before",  # interventions shown in earlier visits (the profile keeps the latest 32)
    "offers_dismissed_before",
    "offers_accepted_before",
)
WORDS.update(
    {
        "visits_before": "earlier visits",
        "days_since_last_visit": "days since the last visit",
        "purchases_before": "earlier visits that bought",
        "offers_before": "help shown in earlier visits",
        "offers_dismissed_before": "help dismissed in earlier visits",
        "offers_accepted_before": "help accepted in earlier visits",
    }
)

STRONG_SIGNAL = 0.7  # a signal at or above this strength counts as "strong"

FEATURE_NAMES: tuple[str, ...] = tuple(n for f in FEATURES for n in f.names)
N_FEATURES = len(FEATURE_NAMES)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
# The plain counts, in row order: the layout of Session.counts.
COUNTERS: tuple[str, ...] = tuple(f.names[0] for f in FEATURES if f.counter)
C: dict[str, int] = {name: i for i, name in enumerate(COUNTERS)}

# Version 1 of the semantics; bump when a feature's meaning changes but its name does not.
_SEMANTICS_VERSION = "1"
FEATURE_SCHEMA_HASH = hashlib.sha256(
    (_SEMANTICS_VERSION + "|" + ",".join(FEATURE_NAMES)).encode()
).hexdigest()[:16]

_PATH_RULES: tuple[tuple[str, str], ...] = (
    ("checkout", "checkout"),
    ("cart", "cart"),
    ("basket", "cart"),
    ("calculator", "form"),
    ("apply", "form"),
    ("signup", "form"),
    ("help", "help"),
    ("faq", "help"),
    ("support", "help"),
    ("product", "product"),
    ("/p/", "product"),
    ("item", "product"),
    ("search", "listing"),
    ("category", "listing"),
    ("list", "listing"),
    ("shop", "listing"),
)


def item_of_path(path: str) -> str | None:
    """The product id in a product page's path (``?id=`` or ``/product/<id>``), if any."""
    base, _, query = path.partition("?")
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key in ("id", "item", "pid") and 0 < len(value) <= 64:
            return value
    parts = [p for p in base.split("/") if p]
    if len(parts) >= 2 and parts[-2] in ("product", "products", "p", "item"):
        return parts[-1][:64]
    return None


def page_type_of(path: str, declared: str | None = None) -> str:
    """The page type: the one the page declared if known, else inferred from the path."""
    if declared in PAGE_TYPES:
        return declared
    if declared == "calculator":
        return "form"
    lowered = path.lower()
    for needle, kind in _PATH_RULES:
        if needle in lowered:
            return kind
    if lowered in ("/", "", "/index.html") or lowered.startswith("/?"):
        return "home"
    return "other"
