"""The intervention policy: when to step in, with what, and why.

Defaults come from a published user-journey analytics design: intervene when
the exit risk is at least 0.75, or when 4 or more struggle signals are at
strength 0.70 or more. The kind follows the context (form struggle: a hint
at that field; video drop-off: a content suggestion; a hesitating or
leaving cart: recommendations, or a help offer without personalisation
consent; otherwise a help offer). A cooldown and a per-session cap keep it
polite; a holdout share of sessions gets decisions recorded but not shown,
so uplift can be measured against them. A dismissed offer ends further
help in that session, and a returning visitor with personalisation consent
is not offered again a kind they dismissed in an earlier visit within the
site's ``dismissed_days``. On top of those rules, a budget
(:mod:`actors.core.budget`) keeps the share of sessions offered help within
the site's ``budget`` and gives it to those who need it most (struggle
first, then risk).

The exit risk is a calibrated probability: that the visitor leaves within
ten minutes without converting (``training.labels``). ``risk_threshold``
is a floor in that unit.

Pure: no Ray, Redis or network imports. Rules are per site, from the sites
file (see :mod:`cluster.sites`).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from actors.core.budget import UNCOUNTED, Budget, priority
from actors.core.detectors import checked_values
from actors.core.features import FEATURE_INDEX, STRONG_SIGNAL
from actors.core.kinds import HELP_OFFER, KIND, KINDS
from actors.core.reasons import Driver
from actors.core.session import EventView, Session
from actors.core.signals import DECLARED as DECLARED_SIGNALS
from actors.core.signals import SIGNALS

_N_EVENTS = FEATURE_INDEX["n_events"]
_PURCHASED = FEATURE_INDEX["purchased"]
_DISMISSED = FEATURE_INDEX["iv_dismissed"]
_N_STRONG = FEATURE_INDEX["n_strong_signals"]
# The signals that are evidence of struggle, as offsets in the row's signal slice.
_STRUGGLE = tuple(i for i, s in enumerate(DECLARED_SIGNALS) if s.struggle)
_SIG = slice(FEATURE_INDEX[f"sig_{SIGNALS[0]}"], FEATURE_INDEX[f"sig_{SIGNALS[-1]}"] + 1)
# The signals that suggest a kind, in declaration order (earlier = preferred).
_SUGGESTING = tuple(s for s in DECLARED_SIGNALS if s.suggests is not None)


@dataclass(frozen=True)
class PolicyConfig:
    """One site's intervention rules."""

    # The floor on the calibrated exit risk (leaves within ten minutes without converting):
    # more likely than not. Above it, the budget picks whom to help.
    risk_threshold: float = 0.50
    min_signals: int = 4
    signal_strength: float = 0.70
    cooldown_s: float = 60.0
    max_per_session: int = 3
    holdout: float = 0.10
    # The share of sessions that may be offered help (1.0: no budget).
    budget: float = 0.10
    # No intervention before the visitor has done this much: a first page
    # view says little, and a pop-up on arrival is the opposite of help.
    min_events: int = 3
    kinds: tuple[str, ...] = KINDS  # the kinds this site allows
    # A returning visitor (with personalisation consent) is not offered again a kind
    # they dismissed in an earlier visit within this many days (0: no such rule).
    dismissed_days: float = 30.0

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> PolicyConfig:
        """Build from a site's [policy] table; unknown keys are an error."""
        if not data:
            return cls()
        values = checked_values(cls, data, "policy settings")
        if "kinds" in values:
            bad = set(values["kinds"]) - set(KINDS)
            if bad:
                raise ValueError(f"unknown intervention kinds: {sorted(bad)}")
            values["kinds"] = tuple(values["kinds"])
        if not 0.0 <= float(values.get("holdout", 0.0)) < 1.0:
            raise ValueError("holdout must be in [0, 1)")
        if float(values.get("dismissed_days", 0.0)) < 0.0:
            raise ValueError("dismissed_days must be >= 0")
        if not 0.0 < float(values.get("budget", 0.1)) <= 1.0:
            raise ValueError("budget must be in (0, 1]: the share of sessions offered help")
        return replace(cls(), **values)


DEFAULT_POLICY = PolicyConfig()


@dataclass(frozen=True)
class Reason:
    """One thing that pushed the decision: a signal and its strength."""

    signal: str
    strength: float


@dataclass(frozen=True)
class Decision:
    """An intervention decided for a session, shown or (holdout) only recorded."""

    iid: str
    sid: str
    seq: int  # the event that triggered it
    ts: int  # that event's time (server clock, ms)
    kind: str
    score: float
    trigger: str  # "risk", "signals" or "risk+signals"
    reasons: tuple[Reason, ...]
    holdout: bool
    target: str | None = None  # form_hint: the field to point at
    personalized: bool = False
    segment: int | None = None
    page_path: str = ""
    page_type: str = ""
    signals: dict[str, float] = field(default_factory=dict)
    # The features that pushed the score up most (filled in off the hot path, see reasons.py).
    drivers: tuple[Driver, ...] = ()
    # The visitor's returning features as the policy saw them (RETURNING_FEATURES order;
    # empty: a session without a visitor profile or without personalisation consent).
    returning: tuple[float, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = [asdict(r) for r in self.reasons]
        d["drivers"] = [asdict(r) for r in self.drivers]
        return d


def in_holdout(sid: str, share: float) -> bool:
    """Deterministic session-level assignment: the same sid always lands the same way."""
    return _in_share(b"holdout:", sid, share)


def in_challenger(sid: str, share: float) -> bool:
    """Whether a challenger model scores this session (by hash, independent of the holdout)."""
    return _in_share(b"challenger:", sid, share)


def _in_share(salt: bytes, sid: str, share: float) -> bool:
    if share <= 0:
        return False
    return (zlib.crc32(salt + sid.encode()) % 10_000) < share * 10_000


def decide(
    session: Session,
    view: EventView,
    score: float,
    cfg: PolicyConfig = DEFAULT_POLICY,
    segment: int | None = None,
    budget: Budget | None = None,
) -> Decision | None:
    """Decide whether the event behind ``view`` warrants an intervention.

    ``view`` is the session as it was right after that event (the host may
    have applied later events of the same batch since). On a decision, the
    session's policy state (count, last time) is updated here, holdout or
    not, so holdout sessions follow the same schedule they would have had.
    ``budget`` is the site's budget on this host (None: no budget); holdout
    sessions spend it too, so the holdout stays comparable.
    """
    row = view.row
    if budget is not None and session.iv_peak == UNCOUNTED:
        budget.count(session)
    if row[_N_EVENTS] < cfg.min_events or row[_PURCHASED] > 0 or row[_DISMISSED] > 0:
        return None
    if session.iv_count >= cfg.max_per_session:
        return None
    now = view.ts
    if session.iv_count and now - session.iv_last_ts < cfg.cooldown_s * 1000.0:
        return None
    by_risk = score >= cfg.risk_threshold
    if not by_risk:
        # Most events end here: count before building the reasons, which every
        # event used to build (decide: 2.6 -> 1.6 us per event in-process).
        strength, n_strong = cfg.signal_strength, 0
        for s in row[_SIG]:
            if s >= strength:
                n_strong += 1
        if n_strong < cfg.min_signals:
            return None
    if budget is not None:
        # Before the reasons and the kind: most eligible moments are below the level.
        struggles = 0
        # Most moments have no strong signal at all (n_strong_signals counts those at
        # STRONG_SIGNAL or more): then there is nothing to count.
        if row[_N_STRONG] or cfg.signal_strength < STRONG_SIGNAL:
            sigs, strength = row[_SIG], cfg.signal_strength
            struggles = sum(1 for i in _STRUGGLE if sigs[i] >= strength)
        if not budget.note(session, priority(score, struggles)):
            return None
    sig = dict(zip(SIGNALS, row[_SIG], strict=True))
    strong = sorted(
        ((name, s) for name, s in sig.items() if s >= cfg.signal_strength),
        key=lambda kv: -kv[1],
    )
    by_signals = len(strong) >= cfg.min_signals  # always true when not by risk (see above)
    personalized = "personalization" in session.consent
    # The visitor's profile counts only with personalisation consent, checked here, per decision.
    banned = _dismissed_before(session, now, cfg) if personalized else ()
    kind, target = _choose_kind(view, sig, cfg, session.consent, banned)
    if kind is None:
        return None
    if budget is not None:
        budget.spend(session)
    reasons = tuple(Reason(n, round(s, 3)) for n, s in strong) + (
        Reason("exit_risk", round(score, 3)),
    )
    trigger = "risk+signals" if by_risk and by_signals else ("risk" if by_risk else "signals")
    session.iv_count += 1
    session.iv_last_ts = now
    iid = f"i-{session.sid[-12:]}-{view.seq}"
    holdout = in_holdout(session.sid, cfg.holdout)
    if not holdout:
        session.offered(iid, kind, now)
    return Decision(
        iid=iid,
        sid=session.sid,
        seq=view.seq,
        ts=now,
        kind=kind,
        score=round(score, 4),
        trigger=trigger,
        reasons=reasons,
        holdout=holdout,
        target=target,
        returning=tuple(session.history[0]) if personalized and session.history else (),
        personalized=personalized,
        segment=segment,
        page_path=view.page_path,
        page_type=view.page_type,
        signals={n: round(s, 3) for n, s in sig.items() if s > 0},
    )


def _dismissed_before(session: Session, now: int, cfg: PolicyConfig) -> tuple[str, ...]:
    """Kinds this visitor dismissed in an earlier visit within the site's ``dismissed_days``."""
    history = session.history
    if history is None or cfg.dismissed_days <= 0:
        return ()
    since = now - cfg.dismissed_days * 86_400_000.0
    return tuple(kind for kind, ts in history[1].items() if ts >= since)


def _choose_kind(
    view: EventView,
    sig: dict[str, float],
    cfg: PolicyConfig,
    consent: list[str],
    banned: tuple[str, ...] = (),
) -> tuple[str | None, str | None]:
    """The most specific help for the context, among the kinds the site allows.

    Each declared signal that suggests a kind proposes it when the signal is
    strong (or its ``suggest_if`` context holds), in declaration order; a
    kind that needs a target (a form field) is skipped without one, and one
    that needs a consent the visitor has not given becomes its ``instead``
    kind. The help offer closes the list. ``banned``: kinds the visitor
    dismissed lately (their profile's), never chosen.
    """
    strong = cfg.signal_strength
    candidates: list[tuple[str, str | None]] = []
    for signal in _SUGGESTING:
        if not (
            sig[signal.name] >= strong
            or (signal.suggest_if is not None and signal.suggest_if(view, _feature_of(view)))
        ):
            continue
        kind = KIND[signal.suggests]
        target = None
        if kind.needs_target:
            if not view.error_field:
                continue
            target = view.error_field
        if kind.needs_consent is not None and kind.needs_consent not in consent:
            kind = KIND[kind.instead]
        candidates.append((kind.name, target))
    candidates.append((HELP_OFFER, None))
    for kind_name, target in candidates:
        if kind_name in cfg.kinds and kind_name not in banned:
            return kind_name, target
    return None, None


def _feature_of(view: EventView) -> Any:
    """Read a feature of the view's row by name (for a signal's ``suggest_if``)."""
    return lambda name: view.row[FEATURE_INDEX[name]]
