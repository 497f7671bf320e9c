"""The intervention budget: at most a set share of a site's sessions is offered help.

What it is for: the policy's rules (risk floor, strong signals, cooldown,
cap) say who *may* be helped; the budget says how many: a site on the
default offers help to at most 10 % of its sessions, and those it offers are
the ones that need it most. Two parts, both online:

* **Ranking by a running quantile.** Each session is counted once, at the
  highest *priority* it reached on an event the rules allowed (0 if none);
  a histogram of those peaks, decayed so it follows the traffic of the last
  few thousand sessions, gives the priority above which ``share`` of the
  sessions lie. A session is offered help when its priority reaches that
  level. Priority = exit risk + the number of strong struggle signals
  (capped at 4), so struggle evidence ranks above risk alone: one strong
  signal outranks any risk without one.
* **An allowance as the guarantee.** A session may be offered help only
  while the sessions offered so far stay within ``share`` of the sessions
  counted, plus ``burst``: however the quantile lags (sessions still under
  way have not reached their peak), the offered share cannot run ahead of
  the budget by more than ``burst`` sessions. Both counts decay with the
  histogram, so the allowance is over the recent traffic; a crowd arriving
  at once (a campaign, a load test) brings its whole allowance with it.

A cold start has no histogram: it is seeded with ``prior`` sessions that
were never eligible, so the first sessions are helped if eligible (as the
tokens allow) and the level rises as real sessions arrive.

Limits: the share is of the sessions this host sees; sessions spread over
shards by hash, so each shard enforces the budget on its own slice, and the
site-wide share is their mean. Decisions after the first in a session
(up to the cap) do not spend budget: the budget counts sessions, not
pop-ups. Pure: no Ray, Redis or network imports.
"""

from __future__ import annotations

MAX_SIGNALS = 4  # strong signals beyond this add nothing more to the priority
BINS_PER_UNIT = 40  # histogram resolution: 0.025 of priority
N_BINS = (MAX_SIGNALS + 1) * BINS_PER_UNIT + 1
UNCOUNTED = -1  # a session the budget has not counted yet (Session.iv_peak)
LEVEL_EVERY = 16  # histogram changes between recomputations of the level


def priority(risk: float, strong_signals: float) -> float:
    """How much a visitor needs help now: strong signals first, then the exit risk."""
    return min(strong_signals, MAX_SIGNALS) + min(max(risk, 0.0), 1.0)


class Budget:
    """One site's budget on one host: who is offered help, within ``share`` of the sessions."""

    def __init__(
        self,
        share: float,
        *,
        half_life: int = 2000,
        burst: float = 5.0,
        prior: int = 100,
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError("budget share must be in (0, 1]")
        self.share = share
        self.half_life = half_life  # sessions after which the histogram's counts halve
        self.burst = burst
        self.hist = [0.0] * N_BINS
        self.hist[0] = float(prior)
        self.total = float(prior)
        # Decayed like the histogram: the allowance is share * recent sessions - recent offers.
        self.recent_sessions = 0.0
        self.recent_offered = 0.0
        self.sessions = 0  # counted so far
        self.offered = 0  # sessions offered help so far
        self._level_bin = 0
        self._since_decay = 0
        self._changes = 0  # histogram changes since the level was last computed
        self._update_level()

    @property
    def level(self) -> float:
        """The priority a session must reach to be offered help now."""
        return self._level_bin / BINS_PER_UNIT

    def count(self, session: object) -> None:
        """Count a session the first time its host sees it (``iv_peak`` is :data:`UNCOUNTED`)."""
        session.iv_peak = 0  # type: ignore[attr-defined]
        self.hist[0] += 1.0
        self.total += 1.0
        self.sessions += 1
        self.recent_sessions += 1.0
        self._since_decay += 1
        if self._since_decay >= self.half_life:
            self._decay()
        self._changed()

    def note(self, session: object, prio: float) -> bool:
        """Record ``prio`` as an eligible moment of ``session``; True if it may be offered help.

        Spends nothing: call :meth:`spend` once help is actually decided. A
        session already offered help (``iv_count`` > 0) stays admitted: the
        budget counts sessions, the cap and cooldown limit its pop-ups.
        """
        b = min(int(prio * BINS_PER_UNIT), N_BINS - 1)
        old = session.iv_peak  # type: ignore[attr-defined]
        if b > old:
            self.hist[old] = max(0.0, self.hist[old] - 1.0)
            self.hist[b] += 1.0
            session.iv_peak = b  # type: ignore[attr-defined]
            self._changed()
        if session.iv_count:  # type: ignore[attr-defined]
            return True
        return b >= self._level_bin and self.allowance >= 1.0

    def spend(self, session: object) -> None:
        """Count ``session`` as offered help (once: later decisions in it spend nothing)."""
        if not session.iv_count:  # type: ignore[attr-defined]
            self.recent_offered += 1.0
            self.offered += 1

    def admit(self, session: object, prio: float) -> bool:
        """:meth:`note`, then :meth:`spend` if it may be offered help."""
        ok = self.note(session, prio)
        if ok:
            self.spend(session)
        return ok

    def _changed(self) -> None:
        # The level moves slowly: recomputing it (a walk over the bins) on every
        # change cost more than the rest of the policy per eligible event.
        self._changes += 1
        if self._changes >= LEVEL_EVERY:
            self._update_level()

    @property
    def allowance(self) -> float:
        """How many more sessions may be offered help now."""
        return self.share * self.recent_sessions + self.burst - self.recent_offered

    def _decay(self) -> None:
        self.hist = [h * 0.5 for h in self.hist]
        self.total *= 0.5
        self.recent_sessions *= 0.5
        self.recent_offered *= 0.5
        self._since_decay = 0

    def _update_level(self) -> None:
        # The lowest bin with at most share * total of the sessions at or above it.
        self._changes = 0
        allowed = self.share * self.total
        above = 0.0
        level = N_BINS
        for b in range(N_BINS - 1, -1, -1):
            above += self.hist[b]
            if above > allowed:
                break
            level = b
        # Bin 0 is "never eligible": help always needs an eligible moment.
        self._level_bin = max(level, 1)

    def state(self) -> dict[str, float]:
        """Figures for health pages and replay summaries."""
        return {
            "share": self.share,
            "level": round(self.level, 3),
            "sessions": self.sessions,
            "offered": self.offered,
            "allowance": round(self.allowance, 2),
        }
