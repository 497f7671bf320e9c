"""The console's business counts, tallied as a shard's batches are processed.

What it is for: the Live, Funnel and Segments pages of the operator console
read counters instead of scanning Redis on each page view. After each batch
the shard hands :meth:`Tally.add` each session it touched (the session, the
batch's events for it, its decisions); the tally turns them into counter
increments keyed by site and UTC day (and by site and UTC minute, for the
Live page's per-minute charts). The shard's shell (actors/shard/tallies.py)
flushes them into Redis hashes about once a second.

Counter fields (hash field -> increment), per (site, day):

* ``reach:{step}:{arm}``: sessions that reached funnel ``step`` that day,
  each session once per step per day. The steps (:data:`FUNNEL`) are
  ordered; a session's step is the furthest it got, so reaching the
  checkout counts the listing, product and cart steps it skipped (a
  visitor who lands on a product page from an ad did pass the listing
  step's place in the funnel). ``landing`` is the session's first event of
  the day; ``purchase`` a purchase event.
* ``sig:{signal}:{page_type}``: a struggle signal (not ``idle``) rose to strong
  (``actors.core.features.STRONG_SIGNAL``) on that page type; counted each
  time it rises again after falling back.
* ``iv:{kind}:{arm}``: decisions, by kind and whether shown (``t``) or held
  out (``h``: the decision's own holdout flag).
* ``react:{shown|accepted|dismissed}``: the visitors' reactions (events).
* ``conv:{arm}``, ``goal:{goal}:{arm}``: sessions that converted that day
  (purchase or a site goal), once per session per day; by goal.
* ``seg:{segment}:{arm}``: sessions at their first decision, by the
  segment it carried (the model's K-means segment; ``none`` without one).
* ``chat:{what}:{origin}``: help chats (:data:`CHAT_COUNTS`: opened,
  visitor messages, handed to a person, resolved by the assistant), by
  what opened them (:data:`CHAT_ORIGINS`: an offer, or the site's Help
  button). Written by the gateways (serve/chat/outcomes.py), not the
  shards, in the day's and the minute's hash alike.

Per (site, minute): ``iv:{kind}:{arm}``, ``react:{...}``, ``conv`` and
``sessions`` (sessions starting their day), enough for the Live charts.

``arm`` is the session's intent-to-treat arm, ``h`` when
``actors.core.policy.in_holdout(sid, share)`` else ``t``, whether or not it
was ever offered help.

State: a session keeps four integers (``Session.tally``: day, furthest
step that day, strong-signal bits, flags) so it is counted once per step
per day. They are snapshotted with the session; a session moved to another
shard within a snapshot's age (a few seconds), or rebuilt from its event log
after an upgrade changed the snapshot layout, may be counted again for a
step of that day: counts are at least what happened, at most that over.

Limits: days and minutes come from the events' timestamps (server clock);
a session's day never goes back (a late event counts on the session's
latest day). Returning visitors and cohorts are not told apart: Lifeline
has no visitor id (issue #23).

Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from actors.core.features import FEATURE_INDEX, STRONG_SIGNAL, page_type_of
from actors.core.policy import Decision, in_holdout
from actors.core.session import Session
from actors.core.signals import DECLARED as DECLARED_SIGNALS
from actors.core.signals import SIGNALS

FUNNEL: tuple[str, ...] = ("landing", "listing", "product", "cart", "checkout", "purchase")
_STEP = {name: i for i, name in enumerate(FUNNEL)}
# Page types that are funnel steps (the others: home, form, help, other are "landing" at most).
_PAGE_STEP = {"listing": 1, "product": 2, "cart": 3, "checkout": 4}
_PURCHASE = _STEP["purchase"]
REACTIONS: tuple[str, ...] = ("shown", "accepted", "dismissed")
_REACT = {f"intervention_{r}": f"react:{r}" for r in REACTIONS}
DAY_MS = 86_400_000
MINUTE_MS = 60_000
CHAT_COUNTS = ("opened", "message", "handoff", "resolved")
CHAT_ORIGINS = ("offer", "button")


def chat_field(what: str, origin: str) -> str:
    """The tally field counting help chats' ``what`` (:data:`CHAT_COUNTS`) from ``origin``."""
    return f"chat:{what}:{origin}"


NO_SEGMENT = "none"

# Session.tally: [day, furthest step that day (-1: none yet), strong-signal bits, flags]
TALLY_DAY, TALLY_STEP, TALLY_SIGNALS, TALLY_FLAGS = range(4)
_ARM_KNOWN = 1  # flags: the arm was drawn
_HOLDOUT = 2  # flags: the session is in the holdout
_CONVERTED = 4  # flags: counted as converted on the current day
_SEGMENTED = 8  # flags: counted in a segment (at its first decision)
_DAILY = _CONVERTED  # flags that start again each day

# (reach field of each step, per arm): built once, looked up per step reached.
_REACH = {arm: tuple(f"reach:{s}:{arm}" for s in FUNNEL) for arm in ("t", "h")}
_SIG_NAMES = tuple(SIGNALS)
# The struggle signals (not idleness): their index in the signal vector.
_STRUGGLE = tuple(i for i, sig in enumerate(DECLARED_SIGNALS) if sig.struggle)
# Where the signals are in a feature row, and how many of them are strong.
_SIG0 = FEATURE_INDEX[f"sig_{SIGNALS[0]}"]
_N_STRONG = FEATURE_INDEX["n_strong_signals"]

GoalFn = Callable[[dict[str, Any]], str | None]
Counts = dict[str, int]


def day_text(day: int) -> str:
    """A day number (ms // DAY_MS) as YYYY-MM-DD, UTC."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


class Tally:
    """Counter increments since the last :meth:`take`, by (site, day) and (site, minute).

    Not thread-safe: the shard calls :meth:`add` with its batch lock held
    and swaps the whole tally out under its own lock (see actors/shard/tallies.py).
    """

    __slots__ = ("days", "minutes")

    def __init__(self) -> None:
        self.days: dict[tuple[str, int], Counts] = {}
        self.minutes: dict[tuple[str, int], Counts] = {}

    def __bool__(self) -> bool:
        return bool(self.days or self.minutes)

    def _day(self, site: str, day: int) -> Counts:
        c = self.days.get((site, day))
        if c is None:
            c = self.days[(site, day)] = {}
        return c

    def _minute(self, site: str, ts: int) -> Counts:
        key = (site, ts // MINUTE_MS)
        c = self.minutes.get(key)
        if c is None:
            c = self.minutes[key] = {}
        return c

    def add(
        self,
        session: Session,
        events: Sequence[dict[str, Any]],
        decisions: Sequence[Decision] = (),
        holdout_share: float = 0.0,
        goal: GoalFn | None = None,
        segment_names: Sequence[str] = (),
        row: Sequence[float] | None = None,
    ) -> None:
        """Count what one batch did for one session (``events``: the batch's events of it).

        ``row``: the feature row of the session's last event (the host's
        ``SessionResult.last_row``); computed here when not given.

        ``goal``: the site's conversion rule (``Site.conversion``; None: a
        purchase is the only goal). ``segment_names``: the model's segment
        names, by index.
        """
        if not events:
            return
        state = session.tally
        flags = state[TALLY_FLAGS]
        if not flags & _ARM_KNOWN:
            flags |= _ARM_KNOWN | (_HOLDOUT if in_holdout(session.sid, holdout_share) else 0)
        arm = "h" if flags & _HOLDOUT else "t"
        site = session.site
        last_ts = events[-1]["ts"]
        day = last_ts // DAY_MS
        if day > state[TALLY_DAY]:  # a new day (or the first): every step counts again
            state[TALLY_DAY] = day
            state[TALLY_STEP] = -1
            flags &= ~_DAILY
        else:
            day = state[TALLY_DAY]
        counts = self._day(site, day)
        reach = _REACH[arm]
        step = furthest = state[TALLY_STEP]
        if furthest < 0:
            step = 0
            m = self._minute(site, last_ts)
            m["sessions"] = m.get("sessions", 0) + 1
        for ev in events:
            etype = ev["type"]
            if etype == "page_view":
                page = (
                    session.page_type
                    if ev is events[-1]
                    else page_type_of(ev["path"], ev.get("page_type"))
                )
                s = _PAGE_STEP.get(page, 0)
                if s > step:
                    step = s
            elif etype == "purchase":
                step = _PURCHASE
                if goal is None:
                    flags = self._converted(counts, site, ev, "purchase", arm, flags)
            elif etype in _REACT:
                f = _REACT[etype]
                counts[f] = counts.get(f, 0) + 1
                m = self._minute(site, ev["ts"])
                m[f] = m.get(f, 0) + 1
            if goal is not None and (etype == "purchase" or etype == "custom"):
                name = goal(ev)
                if name is not None:
                    flags = self._converted(counts, site, ev, name, arm, flags)
        for s in range(furthest + 1, step + 1):
            f = reach[s]
            counts[f] = counts.get(f, 0) + 1
        state[TALLY_STEP] = max(step, furthest)
        self._signals(session, session.row() if row is None else row, state, counts)
        for d in decisions:
            f = f"iv:{d.kind}:{'h' if d.holdout else 't'}"
            counts[f] = counts.get(f, 0) + 1
            m = self._minute(site, d.ts)
            m[f] = m.get(f, 0) + 1
            if not flags & _SEGMENTED:
                flags |= _SEGMENTED
                seg = d.segment
                name = (
                    NO_SEGMENT
                    if seg is None
                    else (segment_names[seg] if seg < len(segment_names) else f"segment {seg}")
                )
                f = f"seg:{name}:{arm}"
                counts[f] = counts.get(f, 0) + 1
        state[TALLY_FLAGS] = flags

    def _converted(
        self, counts: Counts, site: str, ev: dict[str, Any], name: str, arm: str, flags: int
    ) -> int:
        if flags & _CONVERTED:
            return flags
        for f in (f"conv:{arm}", f"goal:{name}:{arm}"):
            counts[f] = counts.get(f, 0) + 1
        m = self._minute(site, ev["ts"])
        m["conv"] = m.get("conv", 0) + 1
        return flags | _CONVERTED

    @staticmethod
    def _signals(session: Session, row: Sequence[float], state: list[int], counts: Counts) -> None:
        """Count the struggle signals that became strong in this batch, on the page they are on.

        ``row``: the feature row of the session's last event, which holds the signals.
        """
        if not state[TALLY_SIGNALS] and not row[_N_STRONG]:
            return  # the common case: nothing strong, before or now
        bits = 0
        for i in _STRUGGLE:
            if row[_SIG0 + i] >= STRONG_SIGNAL:
                bits |= 1 << i
        risen = bits & ~state[TALLY_SIGNALS]
        state[TALLY_SIGNALS] = bits
        if risen:
            page = session.page_type
            for i, name in enumerate(_SIG_NAMES):
                if risen >> i & 1:
                    f = f"sig:{name}:{page}"
                    counts[f] = counts.get(f, 0) + 1

    def take(self) -> Tally:
        """The increments so far, as a new tally; this one starts empty again."""
        out = Tally()
        out.days, out.minutes = self.days, self.minutes
        self.days, self.minutes = {}, {}
        return out

    def merge(self, other: Tally) -> None:
        """Add ``other``'s increments to these (a flush that failed is retried with the next)."""
        for mine, theirs in ((self.days, other.days), (self.minutes, other.minutes)):
            for key, counts in theirs.items():
                c = mine.setdefault(key, {})
                for f, n in counts.items():
                    c[f] = c.get(f, 0) + n


def totals(hashes: Iterable[dict[str, int]]) -> Counts:
    """The sum of several counter hashes (days or minutes of one or more sites)."""
    out: Counts = {}
    for h in hashes:
        for f, n in h.items():
            out[f] = out.get(f, 0) + n
    return out
