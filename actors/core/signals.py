"""Struggle signals: each declared once, with everything the service needs to know about it.

A signal is a strength between 0 and 1 that the session keeps for one kind of
struggle (rage clicks, a form that keeps refusing, ...). Its declaration says
how the strength is computed and decays, which detector setting is its full
strength, how a prompt describes it to the LLM, its intervention templates,
the visitor's likely need (the intent: cache entry and help retrieval, with
its search words in :data:`INTENT_QUERY`), and
which intervention kind it suggests. From these declarations come the
session's signal vector (:mod:`actors.core.session` compiles it), the
``sig_*`` features and their order (:mod:`actors.core.features`), the policy's
kind choice (:mod:`actors.core.policy`) and the prompt text, intents and
templates (:mod:`serve.apps.nudge`).

To add a signal: write its detector (a handler in :mod:`actors.core.session`
that bumps ``self.decayed[D[name]]``, thresholds in
:class:`actors.core.detectors.DetectorConfig`) and declare it here. Then
rebuild the bundled model (the feature schema changed).

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.core.kinds import CONTENT_SUGGESTION, FORM_HINT, HELP_OFFER, KIND, RECOMMENDATIONS

COUNTED = "counted"  # a decayed count: halves every DetectorConfig.half_life_s


@dataclass(frozen=True, slots=True)
class Signal:
    """One struggle signal.

    ``strength``: :data:`COUNTED` (the default) for a count the detector bumps
    by 1 per occurrence, which halves every ``cfg.half_life_s``; the strength
    is that count divided by ``cfg.<full>``. Otherwise a Python expression
    over ``s`` (the session), ``cfg`` (its DetectorConfig) and ``d`` (its
    decayed counters), which says its own decay. Expressions, not functions:
    they are compiled into the session's per-event code, where a function
    call per signal per event would cost more than the whole expression.
    Either way the session caps the strength at 1.

    ``full``: the DetectorConfig field that sets full strength (a site can
    tune it). ``templates``: intervention kind -> text, used when this is the
    dominant signal; every signal has at least a ``help_offer`` one (the kind
    any decision may fall back to). ``suggests``: the kind that fits this
    struggle when the signal is strong; ``suggest_if(view, feature)``: a
    further context where it fits (evaluated only when deciding, never per
    event; ``feature(name)`` reads the view's feature row). ``struggle``:
    whether a strong one is evidence that the visitor is struggling, which
    ranks a session above risk alone for the intervention budget (a pause
    is not; see ``actors.core.budget``).
    """

    name: str
    full: str
    text: str  # how a prompt describes the behaviour (plain words, no internal names)
    intent: str
    templates: Mapping[str, str]
    strength: str = COUNTED
    suggests: str | None = None
    suggest_if: Callable[[Any, Callable[[str], float]], bool] | None = field(
        default=None, compare=False
    )
    struggle: bool = True

    @property
    def counted(self) -> bool:
        return self.strength == COUNTED


def _cart_page_with_items(view: Any, feature: Callable[[str], float]) -> bool:
    """On the cart or checkout page with something in the cart: suggestions fit there."""
    return view.page_type in ("cart", "checkout") and feature("cart_items") > 0


# In the order of their features (sig_<name>); new signals go at the end so
# old rows keep their columns. The policy prefers the kinds of earlier signals.
DECLARED: tuple[Signal, ...] = (
    Signal(
        "rage_click",
        full="full_rage",
        text="clicked the same spot several times in quick succession",
        intent="ui_unresponsive",
        templates={
            HELP_OFFER: "Looks like something isn't responding. Tell us what you were trying "
            "to do and we'll help you finish it."
        },
    ),
    Signal(
        "dead_click",
        full="full_dead",
        text="clicked something that is not clickable",
        intent="ui_unresponsive",
        templates={
            HELP_OFFER: "That part of the page isn't clickable, sorry for the confusion. "
            "Can we point you to what you're looking for?"
        },
    ),
    Signal(
        "form_struggle",
        full="full_form",
        text="got validation errors on a form field more than once",
        intent="form_help",
        suggests=FORM_HINT,
        templates={
            HELP_OFFER: "Having trouble with the form? Tell us which part is unclear and "
            "we'll help you through it.",
            FORM_HINT: "This field is picky about its format. Check the hint just below it; "
            "your other answers are kept while you fix it.",
        },
    ),
    Signal(
        "uturn",
        full="full_uturn",
        text="went to a page and came straight back",
        intent="find_information",
        templates={
            HELP_OFFER: "Not quite what you were after? Tell us what you're looking for and "
            "we'll point you the right way.",
            CONTENT_SUGGESTION: "Comparing options? Our help pages set out the differences so "
            "you don't have to click back and forth.",
        },
    ),
    Signal(
        "cursor_thrash",
        full="full_thrash",
        text="moved the mouse back and forth erratically",
        intent="find_information",
        templates={
            HELP_OFFER: "Can't find what you need on this page? Tell us what you're after "
            "and we'll point you to it."
        },
    ),
    Signal(
        "video_dropoff",
        full="video_dropoff_ratio",
        strength=(
            "decay(s.dropoff_strength, s.last_ts - s.dropoff_ts, cfg.half_life_s)"
            " if s.dropoff_strength else 0.0"
        ),
        text="stopped watching the product video early",
        intent="video_summary",
        suggests=CONTENT_SUGGESTION,
        templates={
            HELP_OFFER: "Got a question the video didn't answer? Ask us and we'll help.",
            CONTENT_SUGGESTION: "Short on time? The product details below the video cover the "
            "key points in a quick read.",
        },
    ),
    Signal(
        "cart_hesitation",
        full="cart_hesitation_s",
        strength=(
            "(max((s.last_ts - s.page_start_ts) / 1000.0 / cfg.cart_hesitation_s"
            " if s.page_type in ('cart', 'checkout') else 0.0, d[D_CART_REMOVES]))"
            " if s.cart_items > 0 and not s.purchased else 0.0"
        ),
        text="has items in the cart but is not moving to checkout",
        intent="purchase_reassurance",
        suggests=RECOMMENDATIONS,
        suggest_if=_cart_page_with_items,
        templates={
            HELP_OFFER: "Questions before you order? Delivery, returns and payment options are "
            "all explained in our help centre.",
            RECOMMENDATIONS: "Still deciding? Here are a few things other shoppers often pick "
            "alongside these.",
        },
    ),
    Signal(
        "js_error",
        full="full_js",
        text="hit a script error on the page",
        intent="page_error",
        templates={
            HELP_OFFER: "Sorry, part of this page didn't load properly. Reloading usually "
            "fixes it, or we can help you finish here."
        },
    ),
    Signal(
        "scroll_thrash",
        full="full_scroll",
        text="scrolled up and down repeatedly as if searching",
        intent="find_information",
        templates={
            HELP_OFFER: "Looking for something on this page? Tell us what and we'll point "
            "you to it.",
            CONTENT_SUGGESTION: "Can't find it? Our FAQ answers the most common questions in "
            "one place.",
        },
    ),
    Signal(
        "idle",
        full="idle_full_s",
        strength="s.gap_ms / 1000.0 / cfg.idle_full_s if s.gap_ms >= cfg.idle_gap_ms else 0.0",
        text="has been inactive for a while",
        intent="re_engage",
        struggle=False,
        templates={
            HELP_OFFER: "Still deciding? If anything on this page is unclear, we're happy to help."
        },
    ),
    Signal(
        "form_abandon",
        full="full_abandon",
        text="filled in part of a form, then left it without sending it",
        intent="form_help",
        templates={
            HELP_OFFER: "Left the form halfway? Your answers may still be there. Tell us what "
            "stopped you and we'll help you finish.",
        },
    ),
)

# Intent -> the words the site's help articles are searched with for it (never
# anything the visitor typed). A signal's intent must be one of these.
INTENT_QUERY: dict[str, str] = {
    "form_help": "form field error format validation how to fill in",
    "ui_unresponsive": "button not working page not responding problem",
    "page_error": "page error not loading browser problem",
    "video_summary": "product video summary key features",
    "purchase_reassurance": "delivery shipping returns refund payment checkout",
    "find_information": "find information help questions",
    "re_engage": "help questions",
    "general_help": "help contact questions",  # no dominant signal
}

SIGNAL: dict[str, Signal] = {s.name: s for s in DECLARED}
SIGNALS: tuple[str, ...] = tuple(SIGNAL)  # names, in feature order; stable on the wire


def _check() -> None:
    """Refuse a declaration that would be silently left out somewhere (at import time)."""
    for s in DECLARED:
        if not s.text or s.intent not in INTENT_QUERY:
            raise ValueError(f"signal {s.name}: a text and an intent of INTENT_QUERY are required")
        if not s.templates.get(HELP_OFFER):
            raise ValueError(f"signal {s.name}: a help_offer template is required")
        unknown = [k for k in (*s.templates, s.suggests) if k is not None and k not in KIND]
        if unknown:
            raise ValueError(f"signal {s.name}: unknown kinds {unknown}")


_check()
