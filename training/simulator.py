"""Seeded journey simulator: synthetic browser sessions that look like real traffic.

What it is for: the bundled demo model, tests and load generation. Each
journey is a list of RAW client-form events (exactly what the tracking
client would send: ``type``, ``seq``, ``ts`` and the type's fields from
``actors.core.events.FIELDS``), each accepted by ``validate_event(e, now_ms=e["ts"])``.

The generative story (how a journey and its labels come about):

1. An archetype is drawn from ``mix``. Five have their own way of browsing
   and a base purchase intent: browser (0.06), comparer and searcher (0.5),
   converter (0.9), calm_converter (0.92). The other five (rage_clicker,
   form_struggler, uturner, video_dropoff, cart_abandoner) are an ordinary
   interested visitor (intent 0.45-0.6) with a *forced* struggle episode of
   their kind.
2. Struggle is an episode, independent of intent: any intent archetype has
   one with probability 0.30 (a browser 0.12), of a kind drawn from rage
   clicks, a calculator form that keeps refusing, u-turns, a product video
   skimmed (faster playback, skips ahead) and dropped early, second thoughts
   at the cart, and a form filled in part and left unsent (forced archetypes: always,
   their own kind). About 36% of journeys struggle. Its level is
   ``struggle ~ Beta(4, 2)``, and the more severe it is, the more refusals,
   dead-click bursts, thrashing and hurry the episode shows.
3. Struggle lowers conversion strongly: ``p_convert = intent * (1 - 0.85 * struggle)``
   (about 0.43 x on average). The outcome is drawn from that probability
   *before* any event is written, so labels come from this story and never
   from the detectors.
4. The journey is written with realistic timing (log-normal page dwell,
   scroll/mouse/hover activity while reading, rage clicks 80-250 ms apart,
   seconds-long form editing): the landing page (home, or for 10% a product
   page; 60% for browsers, who come from search and social more often), the
   archetype's body, and the episode, either right after landing (35%; a
   visitor who will not buy then often leaves soon) or after browsing.
   Intent leaks into behaviour only mildly: buyers read ~20% longer (noisy)
   and switch tabs less often. Converters then go through cart and checkout
   to a ``purchase``; everyone else leaves (sometimes with a trailing
   ``visibility: hidden``). Some interested visitors use the calculator
   without trouble, so a form page alone does not mean struggle.

Interventions are not simulated here (no ``intervention_*`` events): the
data is what a site looks like without Lifeline, which is what the exit-risk
model must learn from. For visitors who answer help, each journey carries
its story's numbers (``p_convert``, the ``draw`` that decided the outcome,
where its episode began) and :func:`continue_journey` writes a new ending
once help changed the outcome; ``training/closed_loop.py`` uses both.

Limits: the catalogue is the demo shop's (40 products ``p-001``..``p-040`` in
5 categories); paths other than ``/product.html?id=...`` are plausible demo
paths, not a contract. Timing distributions are hand-tuned to look like
published clickstream statistics (median page dwell ~10 s, sessions of tens
of events), not fitted to any data set. Pure: stdlib only, no Ray, Redis or
network, so it is usable anywhere (including the load generator).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# A fixed epoch for ``start_ms=None`` so that a seed alone determines the output.
DEFAULT_START_MS = 1_732_200_000_000  # 2024-11-21T14:40:00Z

PRODUCTS: tuple[str, ...] = tuple(f"p-{i:03d}" for i in range(1, 41))
CATEGORIES: tuple[str, ...] = ("loans", "cards", "savings", "insurance", "accessories")
# Products are laid out in category blocks of 8: p-001..p-008 are "loans", ...
PRODUCT_CATEGORY: dict[str, str] = {p: CATEGORIES[i // 8] for i, p in enumerate(PRODUCTS)}
PRODUCT_PRICE: dict[str, float] = {
    p: round(9.0 + ((i * 37) % 41) * 7.5, 2) for i, p in enumerate(PRODUCTS)
}
PAGE_TYPES: tuple[str, ...] = (
    "home",
    "listing",
    "product",
    "cart",
    "checkout",
    "calculator",
    "help",
)

CALC_FORM = "calculator"
CALC_FIELDS: tuple[str, ...] = ("loan-amount", "term-months", "interest-rate", "income")
CALC_SUBMIT = "#calc-submit"
CHECKOUT_FORM = "checkout"
CHECKOUT_FIELDS: tuple[str, ...] = (
    "name",
    "email",
    "address",
    "postcode",
    "card-number",
    "card-expiry",
)
SEARCH_FORM = "search"
SEARCH_TERMS: tuple[str, ...] = (
    "loan",
    "credit card",
    "fixed rate",
    "travel insurance",
    "savings account",
    "mortgage calculator",
    "cashback",
    "low interest",
    "phone case",
    "isa",
)
EXTERNAL_REFS: tuple[str, ...] = (
    "",
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://t.co/x",
    "https://news.example/",
)
# Elements that look clickable but do nothing: the classic rage-click targets.
DEAD_TARGETS: tuple[str, ...] = (
    "#promo-banner",
    "img.product-image",
    "#calc-submit",
    ".price-badge",
)

# Struggle is an episode, independent of intent: it can happen to anyone who
# came to buy something, and when it does it lowers the chance of a purchase.
EPISODES: tuple[str, ...] = ("rage", "form", "uturn", "video", "cart", "abandon")
# How often each kind is drawn for an episode that is not forced by the archetype.
EPISODE_WEIGHTS: dict[str, float] = {
    "rage": 0.25,
    "form": 0.20,
    "uturn": 0.20,
    "video": 0.15,
    "cart": 0.20,
    "abandon": 0.15,
}
# The struggle archetypes: a visitor with purchase intent plus one forced
# episode of their kind (so a rage_clicker always rage-clicks, and so on).
FORCED_EPISODE: dict[str, str] = {
    "rage_clicker": "rage",
    "form_struggler": "form",
    "uturner": "uturn",
    "video_dropoff": "video",
    "cart_abandoner": "cart",
}
STRUGGLE_ARCHETYPES = frozenset(FORCED_EPISODE)
# Base purchase intent of each archetype: the probability of a purchase
# without struggle. The struggle archetypes' intent is that of an ordinary
# interested visitor; it is the episode that makes them leave.
BASE_CONVERT: dict[str, float] = {
    "browser": 0.06,
    "comparer": 0.50,
    "searcher": 0.50,
    "converter": 0.90,
    "calm_converter": 0.92,
    "rage_clicker": 0.50,
    "form_struggler": 0.55,
    "uturner": 0.45,
    "video_dropoff": 0.50,
    "cart_abandoner": 0.60,
}
ARCHETYPES: tuple[str, ...] = tuple(BASE_CONVERT)
# Probability of an independent struggle episode (forced archetypes: always).
EPISODE_RATE: dict[str, float] = {
    "browser": 0.12,
    "comparer": 0.30,
    "searcher": 0.30,
    "converter": 0.30,
    "calm_converter": 0.30,
    **{a: 1.0 for a in FORCED_EPISODE},
}
# p_convert = base intent * (1 - STRUGGLE_EFFECT * struggle), struggle ~ Beta(4, 2).
STRUGGLE_EFFECT = 0.85
# Where an independent episode happens: right after landing with this probability.
EARLY_EPISODE = 0.35
# Share of journeys that land on a product page rather than the home page
# (search and social traffic; low-intent visitors arrive that way more often).
DEEP_LANDING: dict[str, float] = {"browser": 0.6}
# Median seconds on the home page after landing there (everyone reads it a little).
HOME_DWELL: dict[str, float] = {"browser": 6, "calm_converter": 10}
# Interested visitors sometimes use the loan calculator without any trouble.
CALCULATOR_USERS = frozenset({"comparer", "searcher", "converter", "calm_converter"})
CALCULATOR_USE = 0.12
DEFAULT_MIX: dict[str, float] = {
    "browser": 0.30,
    "comparer": 0.16,
    "searcher": 0.18,
    "converter": 0.13,
    "calm_converter": 0.09,
    "rage_clicker": 0.028,
    "form_struggler": 0.028,
    "uturner": 0.028,
    "video_dropoff": 0.028,
    "cart_abandoner": 0.028,
}


@dataclass
class Journey:
    """One simulated session: its raw events and the labels of its generative story.

    ``converted``: the journey ends in a ``purchase`` event. ``struggling``: at
    least one struggle episode (rage clicks, failing form, u-turns, video
    drop-off, cart hesitation; cursor thrash comes with the first two) was
    written into it. ``archetype`` is the way of browsing drawn for it; any
    archetype may struggle, the struggle archetypes always do.
    """

    sid: str
    archetype: str
    converted: bool
    struggling: bool
    start_ms: int
    events: list[dict] = field(default_factory=list)
    # The generative story's own numbers, for simulations that change the outcome
    # (training/closed_loop.py): ``converted`` is ``draw < p_convert``, so the same
    # visitor with another probability p' converts iff ``draw < p'``.
    p_convert: float = 0.0
    draw: float = 0.0
    struggle: float = 0.0  # the episode's level (0: no episode)
    episode: str | None = None  # its kind (one of EPISODES)
    # seq of the first event written by the episode (0: none): from there on the
    # visitor is struggling, whatever the detectors make of it.
    episode_seq: int = 0
    engaged: float = 1.0  # how long this visitor reads, relative to the median

    def struggling_at(self, seq: int) -> bool:
        """Whether the visitor's struggle episode had begun by event ``seq`` (ground truth)."""
        return 0 < self.episode_seq <= seq


def product_path(item: str) -> str:
    """The demo catalogue's page for one product."""
    return f"/product.html?id={item}"


class _Writer:
    """Appends raw events with contiguous seq and strictly increasing ts."""

    def __init__(self, rng: random.Random, start_ms: int) -> None:
        self.rng = rng
        self.t = start_ms
        self.events: list[dict[str, Any]] = []
        self.path = ""  # current page, used as the next page's referrer
        self.page_type = ""
        self.cart: list[str] = []
        self.struggled = False
        # Purchase intent shows in behaviour: buyers read a little longer (set per journey).
        self.engaged = 1.0

    # -- low level -------------------------------------------------------------------------
    def emit(self, etype: str, **fields: Any) -> dict[str, Any]:
        if self.events and self.t <= self.events[-1]["ts"]:
            self.t = self.events[-1]["ts"] + 1
        ev: dict[str, Any] = {"type": etype, "seq": len(self.events) + 1, "ts": int(self.t)}
        ev.update({k: v for k, v in fields.items() if v is not None})
        self.events.append(ev)
        return ev

    def wait(self, ms: float) -> None:
        self.t += max(1, int(ms))

    def think(self, median_ms: float, sigma: float = 0.6) -> None:
        """Wait a log-normal time (human pauses are heavy-tailed)."""
        self.wait(median_ms * math.exp(self.rng.gauss(0.0, sigma)))

    # -- building blocks ---------------------------------------------------------------------
    def page(
        self, path: str, page_type: str, ref: str | None = None, item: str | None = None
    ) -> None:
        if self.events:
            # The page being left is hidden as it unloads (the client reports
            # that, as browsers do on every full page navigation), so a hidden
            # page is as much a sign of moving on within the site as of leaving.
            self.wait(self.rng.uniform(5, 40))
            self.emit("visibility", state="hidden")
        self.think(700, 0.4)  # navigation / load time
        self.emit(
            "page_view",
            path=path,
            page_type=page_type,
            ref=self.path if ref is None else ref,
            item=item,
        )
        self.path, self.page_type = path, page_type

    def mouse(self, thrash: bool = False) -> None:
        rng = self.rng
        dur = rng.uniform(300, 2000)
        if thrash:  # fast back-and-forth: a direction change every 25-70 ms
            dist = rng.uniform(1500, 4500)
            turns, t = [], rng.uniform(0, 200)
            for _ in range(rng.randint(8, 24)):
                turns.append(round(t, 1))
                t += rng.uniform(25, 70)
            dur = max(dur, t)
        else:
            n = rng.choice((0, 0, 1, 1, 2, 3))
            dist = rng.uniform(80, 900)
            turns = sorted(round(rng.uniform(0, dur), 1) for _ in range(n))
        self.emit("mouse", dur=round(dur, 1), dist=round(dist, 1), turns=turns)
        if thrash:
            self.struggled = True

    def hover(self, selector: str, median_dwell: float = 900) -> None:
        dwell = median_dwell * math.exp(self.rng.gauss(0, 0.5))
        self.wait(dwell)  # a hover is reported when it ends
        self.emit("hover", selector=selector, dwell=round(dwell, 1))

    def click(self, selector: str, reacted: bool = True, target: str = "button") -> None:
        self.emit(
            "click",
            selector=selector,
            x=round(self.rng.uniform(40, 1200), 1),
            y=round(self.rng.uniform(60, 800), 1),
            reacted=reacted,
            target=target,
        )

    def read(self, seconds: float, hovers: tuple[str, ...] = ()) -> None:
        """Spend roughly ``seconds`` on the page: scrolls, mouse summaries, hovers."""
        rng = self.rng
        end = self.t + seconds * 1000
        depth = 0.0
        while self.t < end:
            self.think(2200, 0.7)
            r = rng.random()
            if r < 0.45:
                if depth < 1.0 and rng.random() < 0.85:
                    depth = min(1.0, depth + rng.uniform(0.08, 0.3))
                    self.emit("scroll", depth=round(depth, 3), dir="down")
                else:
                    depth = max(0.0, depth - rng.uniform(0.05, 0.3))
                    self.emit("scroll", depth=round(depth, 3), dir="up")
            elif r < 0.8:
                self.mouse()
            elif hovers:
                self.hover(rng.choice(hovers))
            else:
                self.mouse()

    def dwell(self, median_s: float, hovers: tuple[str, ...] = ()) -> None:
        """Read a page for a log-normally distributed time around ``median_s``."""
        median_s *= self.engaged
        self.read(min(240.0, median_s * math.exp(self.rng.gauss(0, 0.7))), hovers)

    def rage(self, selector: str) -> None:
        """A burst of 3-8 clicks on one element that does not react."""
        self.struggled = True
        rng = self.rng
        x, y = rng.uniform(100, 1100), rng.uniform(100, 700)
        for _ in range(rng.randint(3, 8)):
            self.emit(
                "click",
                selector=selector,
                x=round(x + rng.gauss(0, 4), 1),
                y=round(y + rng.gauss(0, 4), 1),
                reacted=False,
                target="button" if selector.startswith("#") else "other",
            )
            self.wait(rng.uniform(80, 250))

    def fill(self, form: str, fields: tuple[str, ...], slow: float = 1.0) -> None:
        for f in fields:
            self.think(900 * slow, 0.5)
            self.emit("form_focus", form=form, field=f)
            self.think(2500 * slow, 0.6)
            self.emit("form_input", form=form, field=f, count=self.rng.randint(2, 24))

    def submit(self, form: str, selector: str, ok: bool, pace: float = 1.0) -> None:
        self.think(800 * pace, 0.5)
        self.click(selector, reacted=ok, target="button")
        self.wait(self.rng.uniform(30, 200))
        self.emit("form_submit", form=form, ok=ok)

    def form_errors(self, form: str, fields: tuple[str, ...], code: str = "invalid") -> None:
        self.struggled = True
        for f in fields:
            self.wait(self.rng.uniform(20, 120))
            self.emit("form_error", form=form, field=f, code=code)

    def video(self, media: str, dur: float, watch_frac: float, seek: bool = False) -> None:
        """Play a video and stop at ``watch_frac`` of it (>= 1.0: watched to the end)."""
        rng = self.rng
        self.think(1200, 0.5)
        self.click(f"#{media}", reacted=True, target="other")
        self.emit("video_play", media=media, t=0.0, dur=dur)
        t = 0.0
        # Some watch faster: most impatient skimmers, a few calm viewers too.
        rate = 1.0
        if rng.random() < (0.45 if seek else 0.12):
            self.wait(rng.uniform(800, 3000))
            t = round(rng.uniform(0.5, 2.5), 2)
            rate = rng.choice((1.25, 1.5, 2.0) if not seek else (1.5, 2.0, 2.0))
            self.emit("video_rate", media=media, rate=rate, t=t)
        if seek:
            # Impatient skimming: jump ahead twice, then give up.
            for _ in range(2):
                self.wait(rng.uniform(1500, 4000))
                t_from = t + rng.uniform(1.5, 4.0)
                t = min(dur - 1, t_from + rng.uniform(5, dur / 3))
                self.emit(
                    "video_seek",
                    media=media,
                    **{"from": round(t_from, 2), "to": round(t, 2)},
                    dur=dur,
                )
        stop = min(dur, dur * watch_frac)
        if stop > t:
            # Activity while the video plays: some move the mouse now and then,
            # others sit back and just watch (a long gap with no events).
            end = self.t + (stop - t) * 1000 / rate
            still = rng.random() < 0.4
            while not still and self.t + 4000 < end:
                self.think(4000, 0.5)
                self.mouse()
            self.t = max(self.t, int(end))
            t = stop
        if watch_frac >= 1.0:
            self.emit("video_ended", media=media, t=round(dur, 2), dur=dur)
        else:
            self.emit("video_pause", media=media, t=round(t, 2), dur=dur)

    def add(self, item: str) -> None:
        self.think(900, 0.5)
        self.click("#add-to-cart", reacted=True, target="button")
        self.wait(self.rng.uniform(50, 250))
        self.emit("add_to_cart", item=item, qty=1, price=PRODUCT_PRICE[item])
        self.cart.append(item)

    def leave(self) -> None:
        """End of a non-converting journey: the tab is hidden or simply closed."""
        if self.rng.random() < 0.5:
            self.think(2000, 0.8)
            self.emit("visibility", state="hidden")


# -- archetype bodies --------------------------------------------------------------------------
def _pick(rng: random.Random, cat: str | None = None) -> str:
    pool = [p for p in PRODUCTS if cat is None or PRODUCT_CATEGORY[p] == cat]
    return rng.choice(pool)


def _listing(w: _Writer, cat: str) -> None:
    w.page(f"/list.html?cat={cat}", "listing")
    w.dwell(8, hovers=(".product-card", ".filter-bar"))


def _product(w: _Writer, item: str, median_s: float = 12) -> None:
    w.page(product_path(item), "product", item=item)
    w.dwell(median_s, hovers=(".price", ".spec-table", "#add-to-cart", "img.product-image"))


def _browser(w: _Writer, rng: random.Random, converted: bool, s: float) -> str:
    cat = rng.choice(CATEGORIES)
    for _ in range(rng.randint(2, 7)):
        if rng.random() < 0.4:
            cat = rng.choice(CATEGORIES)
            _listing(w, cat)
        else:
            _product(w, _pick(rng, cat), 8)
    return _pick(rng, cat)


def _comparer(w: _Writer, rng: random.Random, converted: bool, s: float) -> str:
    cat = rng.choice(CATEGORIES)
    _listing(w, cat)
    items = rng.sample([p for p in PRODUCTS if PRODUCT_CATEGORY[p] == cat], rng.randint(2, 4))
    # Back and forth between the candidates, reading specs and prices.
    for _ in range(rng.randint(4, 8)):
        _product(w, rng.choice(items), 14)
        if rng.random() < 0.3:
            _listing(w, cat)
    return rng.choice(items)


def _searcher(w: _Writer, rng: random.Random, converted: bool, s: float) -> str:
    item = _pick(rng)
    for _ in range(rng.randint(1, 3)):
        w.think(1500)
        w.click("#search-input", target="text_input")
        w.emit("form_focus", form=SEARCH_FORM, field="q")
        w.think(2500)
        w.emit("form_input", form=SEARCH_FORM, field="q", count=rng.randint(3, 18))
        w.submit(SEARCH_FORM, "#search-go", ok=True)
        term = rng.choice(SEARCH_TERMS).replace(" ", "+")
        w.page(f"/search.html?q={term}", "listing")
        w.dwell(6, hovers=(".product-card",))
        item = _pick(rng, PRODUCT_CATEGORY[item] if rng.random() < 0.6 else None)
        _product(w, item, 10)
    return item


def _converter(w: _Writer, rng: random.Random, converted: bool, s: float) -> str:
    cat = rng.choice(CATEGORIES)
    _listing(w, cat)
    item = _pick(rng, cat)
    _product(w, item, 9)
    return item


def _calm_converter(w: _Writer, rng: random.Random, converted: bool, s: float) -> str:
    cat = rng.choice(CATEGORIES)
    _listing(w, cat)
    item = _pick(rng, cat)
    _product(w, item, 20)
    w.video(f"video-{item}", dur=round(rng.uniform(30, 90), 1), watch_frac=1.0)
    w.dwell(8, hovers=(".spec-table", ".reviews"))
    return item


def _calculator_ok(w: _Writer, rng: random.Random) -> None:
    """The calculator used without trouble: fill, submit, read the result."""
    if w.page_type != "calculator":
        w.page("/calculator.html", "calculator")
        w.dwell(5, hovers=(".calc-intro",))
    w.fill(CALC_FORM, CALC_FIELDS)
    w.submit(CALC_FORM, CALC_SUBMIT, ok=True)
    w.dwell(8, hovers=(".calc-result",))


_PAGE_DEAD_TARGETS = tuple(t for t in DEAD_TARGETS if t != CALC_SUBMIT)


# -- struggle episodes -----------------------------------------------------------------------------
# Each writes one episode of its kind at the current point of the journey
# (navigating to where it happens if need be), with an intensity that grows
# with the struggle level ``s``, and returns the item the visitor is after.
def _on_product(w: _Writer, rng: random.Random, cat: str, median_s: float = 8) -> str:
    if w.page_type == "product" and w.path.startswith("/product.html?id="):
        return w.path.rsplit("=", 1)[1]
    item = _pick(rng, cat)
    _product(w, item, median_s)
    return item


def _ep_rage(w: _Writer, rng: random.Random, converted: bool, s: float, cat: str) -> str:
    """Something that looks clickable does nothing: bursts of rage clicks."""
    item = _on_product(w, rng, cat)
    if rng.random() < 0.2:  # the page script broke, so the button is dead
        w.think(1500)
        w.emit(
            "js_error", msg="TypeError: cannot read properties of undefined", src="/static/app.js"
        )
    for _ in range(1 + int(s * 3)):
        w.think(2500)
        w.rage(rng.choice(_PAGE_DEAD_TARGETS))
        if rng.random() < s:
            w.mouse(thrash=True)
        w.dwell(4)
    return item


def _ep_form(w: _Writer, rng: random.Random, converted: bool, s: float, cat: str) -> str:
    """The loan/price calculator scenario: the form refuses, again and again."""
    # The harder the struggle, the more refusals, dead-click bursts and
    # thrashing, and the more hurried: at the worst, fields are re-typed and
    # re-submitted within a second or two.
    pace = min(1.0, max(0.15, 1.3 - 1.2 * s))
    if w.page_type != "calculator":
        w.page("/calculator.html", "calculator")
    if rng.random() < pace:
        w.dwell(5, hovers=(".calc-intro",))
    else:
        w.think(1200 * pace)  # knows what to do: straight into the first field
    # Some press the button after a field or two (the rest is then "required").
    filled = CALC_FIELDS[: rng.randint(1, len(CALC_FIELDS))] if rng.random() < 0.4 else CALC_FIELDS
    w.fill(CALC_FORM, filled, slow=1.3 * pace)
    for attempt in range(2 + int(s * 3)):
        bad = tuple(rng.sample(CALC_FIELDS, rng.randint(1, 2)))
        w.submit(CALC_FORM, CALC_SUBMIT, ok=False, pace=pace)
        w.form_errors(CALC_FORM, bad, code=rng.choice(("range", "format", "required")))
        if attempt >= 1 and rng.random() < 0.4 + 0.5 * s:
            w.rage(CALC_SUBMIT)  # the button stays disabled: dead clicks
        if rng.random() < s:
            w.mouse(thrash=True)
        w.fill(CALC_FORM, bad, slow=1.6 * pace)  # re-edit the refused fields
    if converted or rng.random() < 0.3:
        w.submit(CALC_FORM, CALC_SUBMIT, ok=True)
        w.dwell(6, hovers=(".calc-result",))
    elif rng.random() < 0.4:
        w.page("/help.html", "help")
        w.dwell(6)
    return _pick(rng, "loans")


def _ep_uturn(w: _Writer, rng: random.Random, converted: bool, s: float, cat: str) -> str:
    """Nothing on the listing is what was hoped for: product, straight back, again."""
    if w.page_type != "listing":
        _listing(w, cat)
    list_path = w.path
    item = _pick(rng, cat)
    for _ in range(2 + int(s * 4)):
        item = _pick(rng, cat if rng.random() < 0.7 else None)
        w.page(product_path(item), "product", item=item)
        w.think(1800, 0.5)  # a glance, then straight back: a u-turn
        if rng.random() < 0.5:
            w.mouse()
        w.page(list_path, "listing")
        w.struggled = True
        w.think(1500)
    _product(w, item, 8)
    return item


def _ep_video(w: _Writer, rng: random.Random, converted: bool, s: float, cat: str) -> str:
    """The product video does not answer the question: skimmed, then abandoned."""
    item = _on_product(w, rng, cat, 6)
    dur = round(rng.uniform(45, 150), 1)
    w.video(f"video-{item}", dur=dur, watch_frac=rng.uniform(0.05, 0.35), seek=rng.random() < 0.6)
    w.struggled = True
    w.dwell(4)
    if rng.random() < 0.4:
        item = _pick(rng, cat)
        _product(w, item, 5)
    return item


def _ep_cart(w: _Writer, rng: random.Random, converted: bool, s: float, cat: str) -> str:
    """Second thoughts at the cart: lingering on totals and shipping, maybe a failed checkout."""
    item = _on_product(w, rng, cat, 10)
    w.add(item)
    w.page("/cart.html", "cart")
    w.dwell(15 + 25 * s, hovers=(".cart-total", ".shipping-cost", "#checkout"))
    w.struggled = True
    if rng.random() < 0.5:
        w.page("/checkout.html", "checkout")
        w.fill(CHECKOUT_FORM, CHECKOUT_FIELDS[: rng.randint(1, 4)])
        if rng.random() < s:
            w.submit(CHECKOUT_FORM, "#checkout-submit", ok=False)
            w.form_errors(CHECKOUT_FORM, ("postcode",), code="format")
        w.dwell(6, hovers=(".shipping-cost",))
        w.page("/cart.html", "cart")
    if not converted and rng.random() < 0.6:
        w.think(3000)
        w.emit("remove_from_cart", item=item, qty=1)
        w.cart.remove(item)
        _listing(w, cat)
    return item


def _ep_abandon(w: _Writer, rng: random.Random, converted: bool, s: float, cat: str) -> str:
    """A form started and left unsent: too many questions, a late cost, second thoughts."""
    if rng.random() < 0.5:
        item = _pick(rng, "loans")
        if w.page_type != "calculator":
            w.page("/calculator.html", "calculator")
            w.dwell(4, hovers=(".calc-intro",))
        w.fill(CALC_FORM, CALC_FIELDS[: rng.randint(2, len(CALC_FIELDS) - 1)], slow=1.2)
        hovers: tuple[str, ...] = (".calc-intro",)
    else:
        item = _on_product(w, rng, cat, 8)
        w.add(item)
        w.page("/cart.html", "cart")
        w.dwell(5, hovers=(".cart-total",))
        w.page("/checkout.html", "checkout")
        w.fill(CHECKOUT_FORM, CHECKOUT_FIELDS[: rng.randint(2, len(CHECKOUT_FIELDS) - 1)])
        hovers = (".shipping-cost", ".cart-total")
    w.struggled = True
    w.dwell(4 + 10 * s, hovers=hovers)  # hesitating over what is left to fill in
    if rng.random() < 0.5:
        w.page("/help.html", "help")
        w.dwell(6)
    else:
        _listing(w, cat)
    return item


_EPISODE_WRITERS = {
    "rage": _ep_rage,
    "form": _ep_form,
    "uturn": _ep_uturn,
    "video": _ep_video,
    "cart": _ep_cart,
    "abandon": _ep_abandon,
}


# The struggle archetypes' own lead-in, before their forced episode.
def _lead_in(w: _Writer, rng: random.Random, converted: bool, s: float) -> str:
    cat = rng.choice(CATEGORIES)
    _listing(w, cat)
    item = _pick(rng, cat)
    _product(w, item, 8)
    return item


def _form_lead_in(w: _Writer, rng: random.Random, converted: bool, s: float) -> str:
    return _pick(rng, "loans")  # straight into the calculator (it lands there)


_BODIES = {
    "browser": _browser,
    "comparer": _comparer,
    "searcher": _searcher,
    "converter": _converter,
    "calm_converter": _calm_converter,
    "rage_clicker": _lead_in,
    "form_struggler": _form_lead_in,
    "uturner": _lead_in,
    "video_dropoff": _lead_in,
    "cart_abandoner": _lead_in,
}


def _checkout(w: _Writer, rng: random.Random, item: str) -> None:
    """The converting end: cart, checkout form (maybe one fixed error), purchase."""
    if item not in w.cart:
        if w.path != product_path(item):
            _product(w, item, 6)
        w.add(item)
    w.page("/cart.html", "cart")
    w.dwell(5, hovers=(".cart-total",))
    w.think(1200)
    w.click("#checkout", reacted=True)
    w.page("/checkout.html", "checkout")
    w.fill(CHECKOUT_FORM, CHECKOUT_FIELDS)
    if rng.random() < 0.15:  # a typo, fixed at once
        struggled = w.struggled  # one fixed typo is not a struggle episode
        w.submit(CHECKOUT_FORM, "#checkout-submit", ok=False)
        w.form_errors(CHECKOUT_FORM, ("card-number",), code="format")
        w.fill(CHECKOUT_FORM, ("card-number",))
        w.struggled = struggled
    w.submit(CHECKOUT_FORM, "#checkout-submit", ok=True)
    w.wait(rng.uniform(300, 1500))
    w.emit(
        "purchase",
        value=round(sum(PRODUCT_PRICE[p] for p in w.cart), 2),
        items=list(w.cart),
    )
    w.page("/thanks.html", "checkout")
    w.dwell(3)


def _draw_episode(rng: random.Random, archetype: str) -> str | None:
    forced = FORCED_EPISODE.get(archetype)
    if forced is not None:
        return forced
    if rng.random() < EPISODE_RATE[archetype]:
        return rng.choices(EPISODES, [EPISODE_WEIGHTS[k] for k in EPISODES])[0]
    return None


def _journey(rng: random.Random, sid: str, archetype: str, start_ms: int) -> Journey:
    w = _Writer(rng, start_ms)
    episode = _draw_episode(rng, archetype)
    struggle = rng.betavariate(4, 2) if episode else 0.0
    p_convert = BASE_CONVERT[archetype] * (1.0 - STRUGGLE_EFFECT * struggle)
    draw = rng.random()
    converted = draw < p_convert
    # Intent leaks into behaviour only mildly (dwell +-20%, noisy), so that
    # early in a journey buyers and leavers of one archetype look alike.
    w.engaged = (1.1 if converted else 0.92) * math.exp(rng.gauss(0.0, 0.25))
    # An independent episode comes early (right after landing) or late (after
    # browsing); a struggle archetype's comes after its short lead-in.
    early = episode is not None and archetype not in FORCED_EPISODE and rng.random() < EARLY_EPISODE
    calculator = (
        episode != "form" and archetype in CALCULATOR_USERS and rng.random() < CALCULATOR_USE
    )
    landing = rng.random()
    ref = rng.choice(EXTERNAL_REFS)
    on_calculator = (
        archetype == "form_struggler"
        or (early and episode == "form" and landing < 0.5)
        or (calculator and landing < 0.4)
    )
    if on_calculator:
        w.path = ref  # the calculator's page_view carries the external referrer
        if calculator:
            _calculator_ok(w, rng)  # landed on the calculator from a search ad
            calculator = False
    elif landing < DEEP_LANDING.get(archetype, 0.1):
        # Straight onto a product page from a search engine or a shared link.
        item = _pick(rng)
        w.page(product_path(item), "product", ref=ref, item=item)
        w.dwell(8, hovers=(".price", ".spec-table", "img.product-image"))
    else:
        w.page("/", "home", ref=ref)
        w.dwell(HOME_DWELL.get(archetype, 5), hovers=("#hero", ".nav-menu"))
    episode_seq = 0
    if early:
        assert episode is not None
        episode_seq = len(w.events) + 1
        item = _EPISODE_WRITERS[episode](w, rng, converted, struggle, rng.choice(CATEGORIES))
        if converted or rng.random() < 0.5:  # keeps going; otherwise leaves soon after
            w.dwell(3)
            item = _BODIES[archetype](w, rng, converted, struggle)
            if calculator:
                _calculator_ok(w, rng)
    else:
        item = _BODIES[archetype](w, rng, converted, struggle)
        if calculator:
            _calculator_ok(w, rng)
        if episode is not None:
            episode_seq = len(w.events) + 1
            item = _EPISODE_WRITERS[episode](
                w, rng, converted, struggle, PRODUCT_CATEGORY.get(item, rng.choice(CATEGORIES))
            )
    if rng.random() < (0.1 if converted else 0.3):
        # Switching to another tab for a while (comparing elsewhere, distracted).
        w.think(3000, 0.8)
        w.emit("visibility", state="hidden")
        w.think(25_000, 1.0)
        w.emit("visibility", state="visible")
        w.dwell(4)
    if converted:
        _checkout(w, rng, item)
    else:
        w.leave()
    return Journey(
        sid,
        archetype,
        converted,
        w.struggled,
        w.events[0]["ts"],
        w.events,
        p_convert=p_convert,
        draw=draw,
        struggle=struggle,
        episode=episode,
        episode_seq=episode_seq,
        engaged=w.engaged,
    )


def simulate(
    n: int,
    seed: int = 0,
    start_ms: int | None = None,
    mix: dict[str, float] | None = None,
    *,
    mean_gap_ms: float = 20_000.0,
) -> list[Journey]:
    """Simulate ``n`` journeys, deterministically for a given ``seed``.

    Journeys start one after another with exponential gaps (mean
    ``mean_gap_ms``, default 20 s) from ``start_ms`` (default a fixed epoch,
    so output depends on the seed only); pass ``mean_gap_ms=0`` to start them
    all at once (load generation). ``mix`` maps archetype to weight (need not
    sum to 1; archetypes left out are not drawn). sids are ``sim-<seed>-<i>``.
    """
    return list(iter_journeys(n, seed, start_ms, mix, mean_gap_ms=mean_gap_ms))


def iter_journeys(
    n: int,
    seed: int = 0,
    start_ms: int | None = None,
    mix: dict[str, float] | None = None,
    *,
    mean_gap_ms: float = 20_000.0,
) -> Iterator[Journey]:
    """The journeys of :func:`simulate`, one at a time in start order (for runs too large to hold).

    Arguments are checked at the call, not at the first journey.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    weights = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(weights) - set(ARCHETYPES)
    if unknown:
        raise ValueError(f"unknown archetypes in mix: {sorted(unknown)}; known: {list(ARCHETYPES)}")
    if not weights or sum(weights.values()) <= 0 or min(weights.values()) < 0:
        raise ValueError("mix needs non-negative weights with a positive sum")
    t0 = DEFAULT_START_MS if start_ms is None else int(start_ms)
    return _journeys(n, seed, t0, weights, mean_gap_ms)


def _journeys(
    n: int, seed: int, t0: int, weights: dict[str, float], mean_gap_ms: float
) -> Iterator[Journey]:
    names = list(weights)
    probs = [weights[a] for a in names]
    rng = random.Random(seed)
    for i in range(n):
        archetype = rng.choices(names, probs)[0]
        # Each journey has its own generator seeded from the master one, so a
        # journey's events do not depend on how many random draws came before.
        jrng = random.Random(rng.getrandbits(64))
        yield _journey(jrng, f"sim-{seed}-{i:06d}", archetype, t0)
        if mean_gap_ms > 0:
            t0 += max(1, int(rng.expovariate(1.0 / mean_gap_ms)))


def continue_journey(
    events: list[dict[str, Any]], converted: bool, rng: random.Random, engaged: float = 1.0
) -> list[dict[str, Any]]:
    """The rest of a journey cut after ``events``, now that its outcome is ``converted``.

    What it is for: a visitor whose chance to buy changed part-way (help
    shown, training/closed_loop.py) and so no longer follows the journey
    written for the old outcome. ``events`` are the raw events sent so far
    (contiguous seq, increasing ts); the visitor carries on from the page,
    cart and item of interest they imply. A converting visitor reads on a
    little, then goes through cart and checkout to a ``purchase``, as every
    converting journey ends; any other leaves after a short look, as
    non-converting journeys end. Returns only the new events, numbered on
    from ``events``. ``engaged`` is the journey's (``Journey.engaged``).

    Limits: the visitor's browsing between the cut and the end is short and
    plain (no new struggle episode); the item bought is the last one seen
    (else one drawn from the catalogue).
    """
    w = _Writer(rng, events[-1]["ts"] if events else DEFAULT_START_MS)
    w.events = list(events)
    w.engaged = engaged
    item: str | None = None
    for ev in events:
        etype = ev["type"]
        if etype == "page_view":
            w.path, w.page_type = ev["path"], ev.get("page_type", "")
            item = ev.get("item") or item
        elif etype == "add_to_cart":
            w.cart.append(ev["item"])
            item = ev["item"]
        elif etype == "remove_from_cart" and ev["item"] in w.cart:
            w.cart.remove(ev["item"])
        elif etype == "purchase":
            w.cart.clear()
    w.think(1500)
    if converted:
        w.dwell(4)
        _checkout(w, rng, item or _pick(rng))
    else:
        w.dwell(3)
        w.leave()
    return w.events[len(events) :]


# -- short deterministic scripts for tests --------------------------------------------------------


def _struggling(w: _Writer) -> None:
    """On the calculator page: rage clicks on the dead submit button, three failing
    submits with form errors, cursor thrash, all within ~15 s."""
    w.emit("page_view", path="/calculator.html", page_type="calculator", ref="/")
    w.path, w.page_type = "/calculator.html", "calculator"
    w.wait(800)
    w.emit("form_focus", form=CALC_FORM, field="loan-amount")
    w.wait(600)
    w.emit("form_input", form=CALC_FORM, field="loan-amount", count=6)
    for i in range(3):
        w.wait(700)
        w.emit("click", selector=CALC_SUBMIT, x=512.0, y=640.0, reacted=False, target="button")
        w.wait(60)
        w.emit("form_submit", form=CALC_FORM, ok=False)
        w.wait(40)
        w.emit("form_error", form=CALC_FORM, field="loan-amount", code="range")
        if i < 2:
            w.wait(500)
            w.emit("form_focus", form=CALC_FORM, field="loan-amount")
            w.wait(700)
            w.emit("form_input", form=CALC_FORM, field="loan-amount", count=5 + i)
    w.wait(300)
    for k in range(6):  # rage: 6 clicks ~150 ms apart, same spot, no reaction
        w.emit(
            "click",
            selector=CALC_SUBMIT,
            x=512.0 + k,
            y=640.0 - k,
            reacted=False,
            target="button",
        )
        w.wait(150)
    turns = [float(40 * i + 15) for i in range(24)]
    w.emit("mouse", dur=1000.0, dist=3600.0, turns=turns)
    w.wait(400)
    w.emit("mouse", dur=900.0, dist=3100.0, turns=turns[:20])


def _calm(w: _Writer) -> None:
    """A few page views, scrolls and hovers and a product video watched to the end,
    ~60 s, no struggle."""
    w.emit("page_view", path="/", page_type="home", ref="https://www.google.com/")
    w.path = "/"
    w.wait(4000)
    w.emit("scroll", depth=0.3, dir="down")
    w.wait(3000)
    w.emit("hover", selector=".nav-menu", dwell=700.0)
    w.wait(2500)
    w.emit("page_view", path="/list.html?cat=loans", page_type="listing", ref="/")
    w.wait(3500)
    w.emit("scroll", depth=0.4, dir="down")
    w.wait(2000)
    w.emit("mouse", dur=800.0, dist=420.0, turns=[300.0])
    w.wait(2500)
    w.emit(
        "page_view",
        path=product_path("p-003"),
        page_type="product",
        ref="/list.html?cat=loans",
        item="p-003",
    )
    w.wait(3000)
    w.emit("hover", selector=".spec-table", dwell=1500.0)
    w.wait(1500)
    w.emit("click", selector="#video-p-003", x=400.0, y=300.0, reacted=True, target="other")
    w.emit("video_play", media="video-p-003", t=0.0, dur=30.0)
    w.wait(30_000)
    w.emit("video_ended", media="video-p-003", t=30.0, dur=30.0)
    w.wait(3000)
    w.emit("scroll", depth=0.8, dir="down")
    w.wait(2000)
    w.emit("hover", selector=".price", dwell=900.0)


def _cart_hesitation(w: _Writer) -> None:
    """Add to cart, linger on the cart page, remove the item, back to the listing."""
    w.emit(
        "page_view",
        path=product_path("p-012"),
        page_type="product",
        ref="/list.html?cat=cards",
        item="p-012",
    )
    w.wait(6000)
    w.emit("click", selector="#add-to-cart", x=900.0, y=420.0, reacted=True, target="button")
    w.wait(120)
    w.emit("add_to_cart", item="p-012", qty=1, price=PRODUCT_PRICE["p-012"])
    w.wait(1500)
    w.emit("page_view", path="/cart.html", page_type="cart", ref=product_path("p-012"))
    w.wait(8000)
    w.emit("hover", selector=".cart-total", dwell=2500.0)
    w.wait(9000)
    w.emit("hover", selector=".shipping-cost", dwell=3000.0)
    w.wait(7000)
    w.emit("mouse", dur=1500.0, dist=300.0, turns=[700.0])
    w.wait(5000)
    w.emit("remove_from_cart", item="p-012", qty=1)
    w.wait(1500)
    w.emit("page_view", path="/list.html?cat=cards", page_type="listing", ref="/cart.html")


_SCRIPTS = {"struggling": _struggling, "calm": _calm, "cart_hesitation": _cart_hesitation}
SCRIPTED_KINDS = tuple(_SCRIPTS)


def scripted(kind: str, sid: str, start_ms: int) -> list[dict]:
    """A short, fully deterministic raw-event journey of a named kind (for tests).

    ``struggling``: on the calculator page, rage clicks on the dead submit
    button, three failing submits with form errors, cursor thrash, all within
    ~15 s. ``calm``: a few page views, scrolls and hovers and a product video
    watched to the end, ~60 s, no struggle. ``cart_hesitation``: add to cart,
    linger on the cart page, remove the item, back to the listing. ``sid`` is
    not part of the events (the wire frame carries it); it is accepted so the
    call reads like the session it builds.
    """
    del sid  # events do not carry the session id
    script = _SCRIPTS.get(kind)
    if script is None:
        raise ValueError(f"unknown scripted kind {kind!r}; known: {list(SCRIPTED_KINDS)}")
    w = _Writer(random.Random(0), start_ms)
    script(w)
    return w.events
