"""Intervention kinds: each declared once, with everything the service needs to know about it.

A kind is what an intervention *is* in the browser (a help offer, a hint at a
form field, ...). Its declaration says how the policy may pick it (whether it
needs a field to point at, a consent it needs), what the decision frame
carries, which Serve follow-up enriches it, how the tracking client renders
it (``serve/static/lifeline.js`` keeps a table of the same kinds; a test
checks the two agree), and its text for prompts and its default template.

To add a kind: declare it here, add its row to the client's ``KINDS`` table
(then rebuild the minified client), and let a signal suggest it
(:mod:`actors.core.signals`). Nothing else.

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Kind:
    """One intervention kind.

    ``follow_up``: ``"nudge"`` (the NudgeWriter may replace the template with
    an LLM text) or ``"recommend"`` (the Recommender sends items; the frame
    carries an ``items`` list for them). ``needs_target``: the policy only
    picks it when there is a form field to point at. ``needs_consent``: the
    consent category the visitor must have granted; without it the policy
    falls back to ``instead``. ``role``/``heading``/``accept``/``dismiss``:
    the client's rendering (ARIA role, heading, button labels; "" = none).
    """

    name: str
    prompt: str  # the task, as the LLM prompt states it
    template: str  # the text when no signal-specific template applies
    follow_up: str = "nudge"
    needs_target: bool = False
    needs_consent: str | None = None
    instead: str | None = None  # the kind used when the consent is missing
    role: str = "region"
    heading: str = ""
    accept: str = ""
    dismiss: str = ""


HELP_OFFER = "help_offer"
FORM_HINT = "form_hint"
CONTENT_SUGGESTION = "content_suggestion"
RECOMMENDATIONS = "recommendations"

DECLARED: tuple[Kind, ...] = (
    Kind(
        HELP_OFFER,
        prompt="offer help with whatever the visitor is stuck on",
        template="Need a hand? Tell us what you're trying to do and we'll help you get there.",
        role="dialog",
        heading="We're here to help",
        accept="Chat with us",
        dismiss="No thanks",
    ),
    Kind(
        FORM_HINT,
        prompt="help the visitor fill in the form field they are struggling with",
        template=(
            "This field needs a particular format. The hint just below it shows what it "
            "accepts, and your other answers stay as they are."
        ),
        needs_target=True,
        role="note",
        accept="Got it",
    ),
    Kind(
        CONTENT_SUGGESTION,
        prompt="point the visitor to the content that answers their question",
        template=(
            "Looking for something specific? Our help pages answer the most common questions "
            "in a minute or two."
        ),
        heading="A suggestion",
        accept="Thanks",
    ),
    Kind(
        RECOMMENDATIONS,
        prompt="introduce a few product suggestions shown next to the message",
        template="You might also like these, picked from what you've been browsing.",
        follow_up="recommend",
        needs_consent="personalization",
        instead=HELP_OFFER,
        heading="You might also like",
    ),
)

KIND: dict[str, Kind] = {k.name: k for k in DECLARED}
KINDS: tuple[str, ...] = tuple(KIND)  # names, in declaration order
FOLLOW_UPS = ("nudge", "recommend")


def _check() -> None:
    """Refuse a declaration the rest of the service could not honour (at import time)."""
    for k in DECLARED:
        if k.follow_up not in FOLLOW_UPS:
            raise ValueError(f"kind {k.name}: unknown follow_up {k.follow_up!r}")
        if (k.needs_consent is None) != (k.instead is None) or (
            k.instead is not None and k.instead not in KIND
        ):
            raise ValueError(f"kind {k.name}: needs_consent needs a declared kind instead")
        if not (k.prompt and k.template):
            raise ValueError(f"kind {k.name}: prompt and template are required")


_check()
