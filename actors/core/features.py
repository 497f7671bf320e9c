"""The feature vector: its names, their order, and the hash that pins them.

A model is trained on rows in exactly this order; the registry stores
``FEATURE_SCHEMA_HASH`` with every model and the shards refuse a model whose
hash differs, so a feature change can never be silently scored by a model
trained on another layout. Changing this list is a schema change: bump
nothing by hand, the hash follows.

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

import hashlib

from actors.core.detectors import SIGNALS

# Page types the policy and the features understand. The client may send one
# (from <meta name="lifeline-page-type">); otherwise it is inferred from the path.
PAGE_TYPES: tuple[str, ...] = ("home", "listing", "product", "cart", "checkout", "form", "help")

BASE_FEATURES: tuple[str, ...] = (
    "n_events",
    "session_age_s",
    "gap_s",
    "n_pages",
    "n_unique_pages",
    "page_dwell_s",
    "mean_page_dwell_s",
    "scroll_depth_page",
    "scroll_depth_max",
    "n_clicks",
    "events_rate",  # events, decayed count with a 30 s half-life
    "clicks_rate",  # clicks, decayed count with a 15 s half-life
    "rage_clicks",
    "dead_clicks",
    "dead_click_ratio",
    "form_focuses",
    "form_inputs",
    "form_errors",
    "form_reedits",
    "form_submits",
    "cursor_thrash",
    "scroll_reversals",
    "idle_gaps",
    "max_idle_s",
    "hover_dwell_s",
    "video_plays",
    "video_pauses",
    "video_seeks",
    "video_seek_back",
    "video_watch_ratio",
    "video_ended",
    "js_errors",
    "uturns",
    "hidden_count",
    "cart_items",
    "cart_value",
    "cart_adds",
    "cart_removes",
    "purchased",
    *(f"page_{p}" for p in PAGE_TYPES),
    "iv_shown",
    "iv_dismissed",
    "iv_accepted",
)

STRONG_SIGNAL = 0.7  # a signal at or above this strength counts as "strong"

FEATURE_NAMES: tuple[str, ...] = (
    *BASE_FEATURES,
    *(f"sig_{s}" for s in SIGNALS),
    "n_strong_signals",
)
N_FEATURES = len(FEATURE_NAMES)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

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
