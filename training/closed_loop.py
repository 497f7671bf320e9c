"""Closed loop on the simulator: visitors who answer the help they get, so the true uplift is known.

What it is for: showing that the uplift Lifeline reports (treated against
holdout conversion, :func:`training.uplift.uplift`) can be trusted, on
traffic whose true effect is known. Simulated journeys
(:mod:`training.simulator`) go event by event, interleaved by time across
sessions as live traffic arrives, through :class:`actors.core.host.SessionHost`
(the engine the shards run: session features, a real
:class:`~actors.model.scoring.Scorer`, the site's policy with its holdout
and budget), in batches of what arrived within ``window_ms`` (the shards'
micro-batches, coarser). Each decision goes back to its visitor:

* **holdout**: nothing is shown, and the visitor goes on exactly as the
  journey was written (untreated);
* **shown**: if the visitor is still on the site ``show_ms`` later, the page
  sends ``intervention_shown``, then ``intervention_accepted`` or
  ``intervention_dismissed`` (or nothing: ignored) a few seconds later,
  into the same session through the same host, so features such as
  ``iv_dismissed`` see them (and the policy's "a dismissal ends further
  help" acts on them). A visitor who dismissed help answers no later one.

**The effect.** The first help a visitor sees changes their chance to buy,
once: ``p' = p + effects.struggling`` if their struggle episode had begun by
the deciding event (the simulator's ground truth, :meth:`Journey.struggling_at`,
never the detectors), else ``p' = p + effects.calm`` (a small loss: help
nobody needed is a distraction), clipped to [0, 1]. The simulator converts a
visitor iff ``draw < p`` (``Journey.draw``, uniform); with help, iff
``draw < p'``, the same draw, so each visitor's chance moves by exactly the
effect and only visitors between ``p`` and ``p'`` change course. A visitor
who now buys carries on to a ``purchase``; one who no longer buys leaves
(:func:`training.simulator.continue_journey`); the others keep their
journey. Later help changes nothing more (it is answered, nothing else).

**The true effect** of a run is computed from those probabilities, never
from the estimator: over the sessions offered help (treated and holdout),
the mean of ``P(converts with help) - P(converts without)`` *given the
untreated outcome the simulator drew* (:func:`expected_effect`): a visitor
who would not have bought gains ``(p' - p) / (1 - p)`` of a purchase, one
who would have bought loses ``(p - p') / p``. That is the estimand of
treated-against-holdout conversion. The plain mean of ``p' - p`` (reported
as ``ex_ante_effect``) is not: the policy picks visitors by behaviour that
already tells who will leave (that is what the exit-risk model is for), so
among those offered help the untreated conversion rate is well below their
mean ``p``, and each gains more than ``p' - p``.

Outcomes are reported by the outcome report's own join
(:func:`training.outcomes.join` on decision records like the shards'), so
the loop checks the whole measurement, not a copy of it.

Limits: one host (the budget is the whole site's; live, each shard keeps its
own slice); journeys are the simulator's (see its limits), and a visitor
whose outcome flips finishes with a short, plain ending; the effect does not
depend on the kind of help or on whether it was accepted; sessions are
independent apart from the budget they share. ``python -m
training.closed_loop`` runs the coverage study and writes its report. Pure:
no Ray, Redis or network (the study's processes are plain multiprocessing).
"""

from __future__ import annotations

import argparse
import heapq
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from actors.core.detectors import DetectorConfig
from actors.core.host import SessionHost
from actors.core.policy import Decision, PolicyConfig
from training.closed_loop_report import write_report
from training.dataset import normalise
from training.outcomes import DecisionRecord, SessionOutcome, group, join
from training.simulator import Journey, continue_journey, iter_journeys
from training.uplift import sessions_needed

DEFAULT_CONSENT = ("analytics", "personalization")
# A journey's first event comes a few seconds after its nominal start (at most ~4 s seen
# in 20,000): journeys are drawn this far ahead, so that none starts out of turn.
LOOKAHEAD_MS = 60_000
SITE = "sim"
MEAN_GAP_MS = 500.0  # between session starts: a busy site, a few hundred sessions at once
WINDOW_MS = 250.0  # a batch: what arrived within this long (the shards': a few ms)


@dataclass(frozen=True)
class Effects:
    """How simulated visitors answer help: its effect on their chance to buy, and their reactions.

    ``struggling`` / ``calm``: added to the conversion probability of a
    visitor shown help while struggling / not struggling (absolute, not
    relative). The defaults are an assumption, not a measurement: help to
    someone stuck lifts their chance to buy by 5 points (about a quarter, on
    the ~20 % of a struggling visitor), help nobody needed costs 1 point.
    Reactions are drawn independently of the effect.
    """

    struggling: float = 0.05
    calm: float = -0.01
    accept_struggling: float = 0.35
    dismiss_struggling: float = 0.35
    accept_calm: float = 0.05
    dismiss_calm: float = 0.60
    show_ms: float = 300.0  # from the deciding event to the help on the page
    answer_ms: tuple[float, float] = (800.0, 4000.0)  # from showing to the answer (uniform)

    def helped(self, p: float, struggling: bool) -> float:
        """The conversion probability ``p`` becomes once help is shown."""
        return min(1.0, max(0.0, p + (self.struggling if struggling else self.calm)))

    def answer(self, struggling: bool, rng: random.Random) -> str | None:
        """The visitor's answer: an event type, or None (ignored)."""
        accept, dismiss = (
            (self.accept_struggling, self.dismiss_struggling)
            if struggling
            else (self.accept_calm, self.dismiss_calm)
        )
        r = rng.random()
        if r < accept:
            return "intervention_accepted"
        if r < accept + dismiss:
            return "intervention_dismissed"
        return None


NO_EFFECT = Effects(struggling=0.0, calm=0.0)


def expected_effect(p: float, p_helped: float, converted: bool) -> float:
    """``P(converts with help) - P(converts without)``, given the outcome drawn without help.

    The simulator converts iff ``draw < p``, with help iff ``draw < p_helped``
    (the same uniform draw). Knowing only on which side of ``p`` the draw
    fell (``converted``): a rise can only turn a non-buyer into a buyer, with
    probability ``(p_helped - p) / (1 - p)``; a fall only a buyer into a
    non-buyer, with probability ``(p - p_helped) / p``.
    """
    if p_helped > p:
        return 0.0 if converted else (p_helped - p) / (1.0 - p)
    if p_helped < p:
        return -(p - p_helped) / p if converted else 0.0
    return 0.0


@dataclass
class Offer:
    """The first decision of a session, and what showing it does (or would do) to the visitor."""

    seq: int
    ts: int
    holdout: bool
    struggling: bool  # the episode had begun by the deciding event (ground truth)
    seen: bool  # the visitor is still on the site when the help would show
    p: float  # conversion probability without help
    p_helped: float  # with help (== p when the help is not seen)
    converted: bool  # the outcome drawn without help

    @property
    def effect(self) -> float:
        """Expected effect of showing it, given the untreated outcome (:func:`expected_effect`)."""
        return expected_effect(self.p, self.p_helped, self.converted)


class Visitor:
    """One simulated visitor: the journey still to send, and how they answer help.

    ``pending`` holds raw events in time order, each with the seq it has in
    the written journey (0 for events the loop added: reactions and a new
    ending); seqs on the wire are assigned as events are sent.
    """

    def __init__(self, journey: Journey, rng: random.Random, effects: Effects) -> None:
        self.journey = journey
        self.rng = rng
        self.effects = effects
        self.pending: list[tuple[dict[str, Any], int]] = [(e, e["seq"]) for e in journey.events]
        self.sent: list[dict[str, Any]] = []
        self.origin: list[int] = []  # each sent event's seq in the written journey (0: added)
        self.offer: Offer | None = None
        self.converted = journey.converted  # the outcome the visitor follows now
        self.dismissed = False
        self.decisions: list[Decision] = []
        self.answers: dict[str, dict[str, int]] = {}  # iid -> {"shown": ts, "accepted": ts, ...}
        self.after_dismissal = 0  # decisions the policy made after this visitor dismissed help
        self.purchase: tuple[int, int] | None = None  # (seq, ts) of the purchase sent, if any
        self.index = 0  # its place among the run's visitors (orders a batch's sessions)

    @property
    def next_ts(self) -> int | None:
        return self.pending[0][0]["ts"] if self.pending else None

    def take(self, before_ts: float) -> list[dict[str, Any]]:
        """The events sent before ``before_ts``, numbered on from those already sent."""
        out = []
        while self.pending and self.pending[0][0]["ts"] < before_ts:
            raw, origin = self.pending.pop(0)
            ev = dict(raw, seq=len(self.sent) + 1)
            self.sent.append(ev)
            self.origin.append(origin)
            out.append(ev)
            if ev["type"] == "purchase" and self.purchase is None:
                self.purchase = (ev["seq"], ev["ts"])
        return out

    def release(self) -> None:
        """Drop the events of a finished visitor (large runs); its figures stay."""
        self.journey.events = []
        self.sent, self.origin = [], []

    def _last_ts(self) -> int:
        if self.pending:
            return self.pending[-1][0]["ts"]
        return self.sent[-1]["ts"] if self.sent else 0

    def _struggling_at(self, seq: int) -> bool:
        origin = self.origin[seq - 1] if 0 < seq <= len(self.origin) else 0
        # An event the loop added comes after the offer that added it: judge by the
        # written journey's events up to it.
        if origin == 0:
            origin = max((o for o in self.origin[:seq] if o), default=0)
        return self.journey.struggling_at(origin)

    def on_decision(self, d: Decision) -> None:
        """What the page and the visitor do about a decision on one of their events."""
        self.decisions.append(d)
        show_ts = d.ts + int(self.effects.show_ms)
        # Help works on a visitor still on the site when it shows, who has not bought yet.
        bought = self._purchase_ts()
        seen = self._last_ts() >= show_ts and (bought is None or bought > show_ts)
        struggling = self._struggling_at(d.seq)
        first = self.offer is None
        if first:
            j = self.journey
            self.offer = Offer(
                d.seq,
                d.ts,
                d.holdout,
                struggling,
                seen,
                j.p_convert,
                self.effects.helped(j.p_convert, struggling) if seen else j.p_convert,
                j.converted,
            )
        if self.dismissed:
            self.after_dismissal += 1
        if d.holdout or not seen:
            return  # holdout: nothing shown; otherwise the page is gone
        answers = self.answers.setdefault(d.iid, {})
        answers["shown"] = show_ts
        reaction = [({"type": "intervention_shown", "iid": d.iid, "ts": show_ts}, 0)]
        answer = None if self.dismissed else self.effects.answer(struggling, self.rng)
        end_ts = show_ts
        if answer is not None:
            end_ts = show_ts + int(self.rng.uniform(*self.effects.answer_ms))
            reaction.append(({"type": answer, "iid": d.iid, "ts": end_ts}, 0))
            answers[answer.removeprefix("intervention_")] = end_ts
            self.dismissed |= answer == "intervention_dismissed"
        if first:
            assert self.offer is not None
            helped = self.journey.draw < self.offer.p_helped
            if helped != self.converted:
                self.converted = helped
                self._new_ending(reaction, show_ts)
                return
        self._insert(reaction)

    def _insert(self, events: list[tuple[dict[str, Any], int]]) -> None:
        """Put added events among the pending ones by time, keeping every ts strictly increasing."""
        merged = sorted(self.pending + events, key=lambda x: (x[0]["ts"], x[1] == 0))
        last = self.sent[-1]["ts"] if self.sent else 0
        out = []
        for raw, origin in merged:
            if raw["ts"] <= last:
                raw = dict(raw, ts=last + 1)
            last = raw["ts"]
            out.append((raw, origin))
        self.pending = out

    def _purchase_ts(self) -> int | None:
        """When the visitor buys (or bought), as things stand; None if they do not."""
        if self.purchase is not None:
            return self.purchase[1]
        return next((e["ts"] for e, _ in self.pending if e["type"] == "purchase"), None)

    def _new_ending(self, reaction: list[tuple[dict[str, Any], int]], show_ts: int) -> None:
        """The outcome changed: the journey as written up to the help, the answer, a new ending."""
        self.pending = [(e, o) for e, o in self.pending if e["ts"] < show_ts]
        self._insert(reaction)
        prefix = self.sent + [
            dict(e, seq=len(self.sent) + i + 1) for i, (e, _) in enumerate(self.pending)
        ]
        rest = continue_journey(prefix, self.converted, self.rng, self.journey.engaged)
        self.pending += [(e, 0) for e in rest]

    def records(self, site: str, model: str) -> list[DecisionRecord]:
        """This session's decisions as the shard records them, with reactions and conversion."""
        out = []
        for d in self.decisions:
            a = self.answers.get(d.iid, {})
            # The shard marks a session's earlier decisions when its purchase comes.
            bought = self.purchase if self.purchase and self.purchase[0] > d.seq else None
            out.append(
                DecisionRecord(
                    iid=d.iid,
                    sid=d.sid,
                    site=site,
                    seq=d.seq,
                    ts=d.ts,
                    kind=d.kind,
                    holdout=d.holdout,
                    model=model,
                    segment="" if d.segment is None else f"segment {d.segment}",
                    shown=a.get("shown"),
                    accepted=a.get("accepted"),
                    dismissed=a.get("dismissed"),
                    converted=bought[1] if bought else None,
                    converted_seq=bought[0] if bought else None,
                    goal="purchase" if bought else None,
                )
            )
        return out


@dataclass
class RunResult:
    """One closed-loop run: the outcome report's figures against the true effect."""

    seed: int
    sessions: int
    events: int
    offered: int  # sessions with a decision (treated + holdout)
    # The outcome report's total over those sessions (training.outcomes.group: the
    # uplift with its interval, group sizes, reactions)
    estimate: dict[str, Any]
    true_effect: float  # mean expected effect over them (expected_effect)
    ex_ante_effect: float  # mean of p' - p over them (not the estimand; see the module doc)
    mean_p: float  # their mean conversion probability without help
    struggling_share: float  # of them, struggling at the first decision
    seen_share: float  # of them, still on the site when the help would show
    decisions_after_dismissal: int
    seconds: float
    # The outcome report over the first k sessions offered help, for growing k (see trace)
    trace: list[dict[str, Any]] = field(default_factory=list)

    @property
    def covered(self) -> bool:
        low, high = self.estimate["low"], self.estimate["high"]
        return low is not None and high is not None and low <= self.true_effect <= high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"covered": self.covered}


def _outcomes(visitors: Sequence[Visitor], site: str, model: str) -> list[SessionOutcome]:
    """The outcome report's join of every decision record (one row per session offered help)."""
    rows, expired = join(r for v in visitors if v.decisions for r in v.records(site, model))
    assert expired == 0  # nothing expires in a simulation
    return rows


def trace(rows: Sequence[SessionOutcome], every: int) -> list[dict[str, Any]]:
    """The outcome report's total over the first k sessions offered help, k = every, 2 every, ...

    Rows in order of their first decision (as :func:`training.outcomes.join`
    returns them), each with its final outcome: how the interval a site
    reads narrows as sessions come in.
    """
    return [group(str(k), rows[:k]) for k in range(every, len(rows) + 1, every)]


def run(
    seed: int,
    sessions: int,
    scorer: Callable[[list[list[float]]], Sequence[float]],
    *,
    policy: PolicyConfig | None = None,
    detectors: DetectorConfig | None = None,
    effects: Effects = Effects(),
    mix: dict[str, float] | None = None,
    mean_gap_ms: float = MEAN_GAP_MS,
    window_ms: float = WINDOW_MS,
    consent: Sequence[str] = DEFAULT_CONSENT,
    trace_every: int = 0,
    keep: list[Visitor] | None = None,
) -> RunResult:
    """Simulate ``sessions`` visitors through the host, answering help; measure as the report does.

    ``scorer``: a :class:`~actors.model.scoring.Scorer` (or any function of
    feature rows; its ``segments`` and ``version`` are used when present).
    ``mean_gap_ms``: mean time between session starts (default 500 ms, a busy
    site: a few hundred sessions at once, so batches hold many). ``window_ms``
    must stay under ``effects.show_ms``, so that help always shows after the
    batch that decided it. ``trace_every``: also report the uplift over the
    first k sessions offered help, every that many (:func:`trace`; 0: not).
    ``keep``: a list that receives the visitors (for tests).
    """
    if window_ms >= effects.show_ms:
        raise ValueError("window_ms must be shorter than effects.show_ms")
    t0 = time.monotonic()
    policy = policy or PolicyConfig()
    rules = (detectors or DetectorConfig(), policy)
    host = SessionHost(rules=lambda _site: rules)
    segments = getattr(scorer, "segments", None)
    segment = segments.nearest if segments is not None else None
    model = str(getattr(scorer, "version", "model"))
    journeys = enumerate(iter_journeys(sessions, seed=seed, mix=mix, mean_gap_ms=mean_gap_ms))
    # Journeys come in order of their nominal start, and their first event follows it by a
    # few seconds: those due within LOOKAHEAD_MS wait here, in order of their first event.
    upcoming: list[tuple[int, int, Journey]] = []
    last_start: float = -math.inf
    visitors: list[Visitor] = []
    by_sid: dict[str, Visitor] = {}
    heap: list[tuple[int, int, Visitor]] = []  # (next event's ts, tie-break, visitor)
    consent_list = list(consent)
    events, next_sweep = 0, 0.0
    while True:
        while last_start < math.inf:
            horizon = heap[0][0] if heap else upcoming[0][0] if upcoming else None
            if horizon is not None and last_start >= horizon + LOOKAHEAD_MS:
                break
            i, j = next(journeys, (-1, None))
            if j is None:
                last_start = math.inf
                break
            heapq.heappush(upcoming, (j.start_ms, i, j))
            last_start = j.start_ms
        if not heap and not upcoming:
            break
        # One batch: every event sent within window_ms of the earliest one waiting.
        end = min(heap[0][0] if heap else math.inf, upcoming[0][0] if upcoming else math.inf)
        end += window_ms
        while upcoming and upcoming[0][0] < end:
            start_ms, i, j = heapq.heappop(upcoming)
            v = Visitor(j, random.Random(f"closed-loop:{seed}:{j.sid}"), effects)
            v.index = i
            visitors.append(v)
            by_sid[j.sid] = v
            heapq.heappush(heap, (start_ms, i, v))
        batch: list[Visitor] = []
        while heap and heap[0][0] < end:
            batch.append(heapq.heappop(heap)[2])
        items = []
        for v in batch:
            raw = v.take(end)
            events += len(raw)
            items.append((v.journey.sid, SITE, consent_list, normalise(raw, v.journey.sid)))
        for result in host.process(items, scorer, segment):
            for d in result.decisions:
                by_sid[d.sid].on_decision(d)
        for v in batch:
            ts = v.next_ts
            if ts is not None:
                heapq.heappush(heap, (ts, v.index, v))
            elif keep is None:
                v.release()
        if end >= next_sweep:  # idle sessions compacted and retired, as on a shard
            host.sweep(end)
            next_sweep = end + 10_000
    rows = _outcomes(visitors, SITE, model)
    offers = [o for o in (by_sid[r.sid].offer for r in rows) if o is not None]
    assert len(offers) == len(rows)
    if keep is not None:
        keep.extend(visitors)
    return RunResult(
        seed=seed,
        sessions=sessions,
        events=events,
        offered=len(rows),
        estimate=group("all", rows),
        true_effect=_mean([o.effect for o in offers]),
        ex_ante_effect=_mean([o.p_helped - o.p for o in offers]),
        mean_p=_mean([o.p for o in offers]),
        struggling_share=_mean([float(o.struggling) for o in offers]),
        seen_share=_mean([float(o.seen) for o in offers]),
        decisions_after_dismissal=sum(v.after_dismissal for v in visitors),
        seconds=round(time.monotonic() - t0, 2),
        trace=trace(rows, trace_every) if trace_every > 0 else [],
    )


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


# -- the coverage study ------------------------------------------------------------------------------
_SCORER: Any = None


def _load_scorer() -> None:
    global _SCORER
    from actors.model.scoring import Scorer

    _SCORER = Scorer.bundled()


def _run_one(job: tuple[int, int, PolicyConfig, DetectorConfig, Effects, int]) -> dict[str, Any]:
    seed, sessions, policy, detectors, effects, trace_every = job
    if _SCORER is None:
        _load_scorer()
    r = run(
        seed,
        sessions,
        _SCORER,
        policy=policy,
        detectors=detectors,
        effects=effects,
        trace_every=trace_every,
    )
    return r.to_dict()


def runs(
    seeds: Sequence[int],
    sessions: int,
    *,
    policy: PolicyConfig,
    detectors: DetectorConfig | None = None,
    effects: Effects = Effects(),
    workers: int = 1,
    trace_every: int = 0,
) -> list[dict[str, Any]]:
    """:func:`run` for each seed with the bundled model, over ``workers`` processes (RunResult dicts)."""
    jobs = [
        (s, sessions, policy, detectors or DetectorConfig(), effects, trace_every) for s in seeds
    ]
    if workers <= 1:
        return [_run_one(j) for j in jobs]
    # Spawned, not forked: a fork of a process that has run XGBoost can hang in its thread pool.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_load_scorer) as pool:
        return list(pool.map(_run_one, jobs))


def coverage(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a set of runs says about the estimator: coverage, bias, width, and the rates behind them."""
    est = [r["estimate"] for r in results]
    ok = [r for r in results if r["estimate"]["uplift"] is not None]
    n = len(ok)

    def share(pred: Callable[[dict[str, Any]], bool]) -> float:
        return sum(1 for r in ok if pred(r)) / n if n else math.nan

    holdout_n = sum(e["holdout_n"] for e in est)
    treated_n = sum(e["treated_n"] for e in est)
    return {
        "runs": len(results),
        "runs_with_both_arms": n,
        "coverage": share(lambda r: r["covered"]),
        "coverage_ex_ante": share(
            lambda r: r["estimate"]["low"] <= r["ex_ante_effect"] <= r["estimate"]["high"]
        ),
        "excludes_zero": share(lambda r: r["estimate"]["excludes_zero"]),
        "mean_true_effect": _mean([r["true_effect"] for r in ok]),
        "mean_ex_ante_effect": _mean([r["ex_ante_effect"] for r in ok]),
        "mean_estimate": _mean([r["estimate"]["uplift"] for r in ok]),
        "mean_width": _mean([r["estimate"]["high"] - r["estimate"]["low"] for r in ok]),
        "mean_offered": _mean([r["offered"] for r in results]),
        "offered_share": _mean([r["offered"] / r["sessions"] for r in results]),
        "mean_treated_n": treated_n / len(results) if results else math.nan,
        "mean_holdout_n": holdout_n / len(results) if results else math.nan,
        "treated_rate": sum(e["treated_conversions"] for e in est) / treated_n
        if treated_n
        else math.nan,
        "holdout_rate": sum(e["holdout_conversions"] for e in est) / holdout_n
        if holdout_n
        else math.nan,
        "mean_p_offered": _mean([r["mean_p"] for r in results]),
        "struggling_share": _mean([r["struggling_share"] for r in results]),
        "seen_share": _mean([r["seen_share"] for r in results]),
        "decisions_after_dismissal": sum(r["decisions_after_dismissal"] for r in results),
        "events_per_run": _mean([r["events"] for r in results]),
        "seconds_per_run": _mean([r["seconds"] for r in results]),
    }


def needed(base_rate: float, offered_share: float, holdout: float, effect: float) -> dict[str, Any]:
    """Sessions a site needs before the interval excludes zero (80 % power), from ``sessions_needed``.

    ``base_rate``: conversion without help among the sessions offered help
    (a holdout's); as sessions offered help, and as all sessions of the
    site at ``offered_share`` (the share the policy offered help to).
    """
    offered = sessions_needed(base_rate, effect, holdout)
    return {
        "effect": effect,
        "base_rate": base_rate,
        "holdout": holdout,
        "offered_sessions": offered,
        "site_sessions": math.ceil(offered / offered_share),
    }


def first_excluding(trace_: Sequence[dict[str, Any]]) -> int | None:
    """Sessions offered help after which the interval excludes zero, for good (None: never)."""
    k = None
    for g in reversed(trace_):
        if not (g["excludes_zero"] and (g["uplift"] or 0.0) > 0):
            break
        k = int(g["key"])
    return k


# -- the command ---------------------------------------------------------------------------------------
REALISTIC_EFFECTS = (0.02, 0.05, 0.10)  # other true effects the sessions-needed table gives


def _policy(args: argparse.Namespace) -> tuple[PolicyConfig, DetectorConfig, str]:
    """The site's rules from the sites file, or the defaults (what a production site runs)."""
    if args.site is None:
        return PolicyConfig(), DetectorConfig(), "the default policy"
    from actors.core.sites import load_sites

    site = load_sites(args.sites)[args.site]
    return site.policy, site.detectors, f"site {args.site!r}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.closed_loop",
        description="Closed-loop coverage study: does the outcome report's 95 %% interval cover "
        "the true effect of help on simulated visitors who answer it, and how many sessions "
        "does a site need before it excludes zero? Writes OUT/report.md, OUT/intervals.png, "
        "OUT/trace.png and OUT/results.json.",
    )
    ap.add_argument("--runs", type=int, default=50, help="seeded runs per study (%(default)s)")
    ap.add_argument("--sessions", type=int, default=3000, help="sessions per run (%(default)s)")
    ap.add_argument("--out", type=Path, default=Path("reports/closed_loop"))
    ap.add_argument("--seed", type=int, default=0, help="first seed (%(default)s)")
    ap.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (%(default)s)"
    )
    ap.add_argument(
        "--study-holdout",
        type=float,
        default=0.5,
        help="holdout share of the second study, whose narrower intervals test harder "
        "(0: no second study; default %(default)s)",
    )
    ap.add_argument(
        "--check-runs",
        type=int,
        default=4,
        help="larger runs that check sessions_needed against what the interval does "
        "(0: none; default %(default)s)",
    )
    ap.add_argument(
        "--check-sessions",
        type=int,
        default=0,
        help="sessions per check run (default: 1.25 x the sessions sessions_needed plans)",
    )
    ap.add_argument("--struggling-effect", type=float, default=Effects.struggling)
    ap.add_argument("--calm-effect", type=float, default=Effects.calm)
    ap.add_argument("--site", default=None, help="a site's rules (default: the default policy)")
    ap.add_argument("--sites", type=Path, default=Path("cluster/sites.toml"))
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    policy, detectors, rules_name = _policy(args)
    effects = Effects(struggling=args.struggling_effect, calm=args.calm_effect)
    from actors.model.scoring import Scorer

    model = Scorer.bundled().version

    def study(title: str, pol: PolicyConfig, first_seed: int) -> dict[str, Any]:
        t = time.monotonic()
        seeds = list(range(first_seed, first_seed + args.runs))
        res = runs(
            seeds,
            args.sessions,
            policy=pol,
            detectors=detectors,
            effects=effects,
            workers=args.workers,
        )
        s = coverage(res)
        print(
            f"{title}: coverage {s['coverage']:.2f} over {s['runs_with_both_arms']} runs "
            f"({time.monotonic() - t:.0f}s)",
            file=sys.stderr,
        )
        return {
            "title": title,
            "policy": asdict(pol),
            "sessions": args.sessions,
            "seeds": [seeds[0], seeds[-1]],
            "seconds": round(time.monotonic() - t, 1),
            "summary": s,
            "runs": res,
        }

    studies = [study(f"{rules_name} (holdout {policy.holdout:.0%})", policy, args.seed)]
    if args.study_holdout and args.study_holdout != policy.holdout:
        studies.append(
            study(
                f"holdout {args.study_holdout:.0%}",
                replace(policy, holdout=args.study_holdout),
                args.seed + 10_000,
            )
        )
    # Conversion without help among sessions offered help: every study's holdout together
    # (the same traffic and rules but for the holdout share, so the same rate).
    held = [st["summary"] for st in studies]
    base = sum(s["holdout_rate"] * s["mean_holdout_n"] for s in held) / sum(
        s["mean_holdout_n"] for s in held
    )
    share = studies[0]["summary"]["offered_share"]
    effect = _mean([s["mean_true_effect"] for s in held])
    measured, other = "the studies' true effect", "another effect"
    table = [needed(base, share, policy.holdout, effect) | {"label": measured}]
    table += [needed(base, share, policy.holdout, e) | {"label": other} for e in REALISTIC_EFFECTS]
    table += [
        needed(base, share, st["policy"]["holdout"], effect) | {"label": measured}
        for st in studies[1:]
    ]
    data: dict[str, Any] = {
        "format": "lifeline-closed-loop/1",
        "command": "python -m training.closed_loop "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "model": model,
        "effects": asdict(effects),
        "mean_gap_ms": MEAN_GAP_MS,
        "window_ms": WINDOW_MS,
        "workers": args.workers,
        "studies": studies,
        "needed": table,
    }
    if args.check_runs > 0:
        data["check"] = _check(args, policy, detectors, effects, table[0], rules_name)
    data["seconds"] = round(time.monotonic() - t0, 1)
    path = write_report(data, args.out)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _check(
    args: argparse.Namespace,
    policy: PolicyConfig,
    detectors: DetectorConfig,
    effects: Effects,
    plan: dict[str, Any],
    rules_name: str,
) -> dict[str, Any]:
    """Larger runs under the site's policy: when does each one's interval exclude zero?"""
    t = time.monotonic()
    sessions = args.check_sessions or math.ceil(1.25 * plan["site_sessions"] / 1000) * 1000
    planned = plan["offered_sessions"]
    step = max(10, planned // 40)
    seeds = list(range(args.seed + 20_000, args.seed + 20_000 + args.check_runs))
    res = runs(
        seeds,
        sessions,
        policy=policy,
        detectors=detectors,
        effects=effects,
        workers=args.workers,
        trace_every=step,
    )
    at_plan = []
    for r in res:
        point = next((g for g in r["trace"] if int(g["key"]) >= planned), None)
        at_plan.append(point is not None and point["excludes_zero"])
    print(f"check: {sum(at_plan)} of {len(res)} exclude zero at {planned}", file=sys.stderr)
    return {
        "title": f"{rules_name} (holdout {policy.holdout:.0%})",
        "sessions": sessions,
        "planned_offered": planned,
        "trace_every": step,
        "excluded_at_planned": sum(at_plan),
        "first_excluding": [first_excluding(r["trace"]) for r in res],
        "mean_true_effect": _mean([r["true_effect"] for r in res]),
        "seconds": round(time.monotonic() - t, 1),
        "runs": res,
    }


if __name__ == "__main__":
    sys.exit(main())
