"""Outcomes of interventions: one row per session that got a decision, and conversion by group.

What it is for: the join and the arithmetic behind ``lifeline report
outcomes`` and the operator console's Outcomes page. The shards leave one
record per decision (actors/shard/records.py): what was decided, whether it
was shown (``holdout``), what the visitor did about it (``shown``,
``accepted``, ``dismissed``) and the session's first conversion after it
(``converted``, ``goal``: a purchase or a goal the site names in
cluster/sites.toml). :func:`join` turns those records into one
:class:`SessionOutcome` per session; :func:`aggregate` compares the
conversion of treated sessions with that of holdout sessions, in total and
by intervention kind, site, segment, model and day, with
:func:`training.uplift.uplift` intervals. Pure: no Redis; the reader is
training/outcome_records.py.

Definitions.

* A session is *holdout* when its decisions were recorded but not shown
  (the holdout is drawn per session: ``actors.core.policy.in_holdout``),
  *treated* otherwise. Treated is intention to treat: a session counts as
  treated whether or not its page confirmed showing the help, just as a
  holdout session counts whether or not it would have seen it.
* A session's group is its *first* decision's: kind, site, segment, model
  version and day (the UTC date of the triggering event). Its later
  decisions (at most the site's ``max_per_session``) do not move it.
* *Converted*: the session converted (purchase or goal) after its first
  decision. A conversion before any decision is not one the help could have
  caused, and the policy makes no decision after a purchase.
* *Chat* (the help chat, serve/chat/outcomes.py): a treated session whose
  visitor opened the chat from one of its offers; ``resolved_by_assistant``
  (ended after an answer, no person asked for) and ``handed_off`` (a person
  asked for) count those chats, ``messages`` their visitor messages, and
  ``converted`` those that converted after the first decision, to compare
  with the group's holdout rate (a holdout session is never offered a chat).
* *Reaction* of a treated session, over all its interventions:
  ``accepted`` if the visitor accepted one, else ``dismissed`` if they
  dismissed one, else ``ignored`` if one was shown, else ``unseen`` (no
  ``intervention_shown`` came back: the page was gone, or could not show it).

Limits: sessions are assumed independent (training/uplift.py). Records live
as long as their session's other keys (``cluster.keys.SESSION_TTL_S``, a
week) and the intervention log keeps the newest 100,000 decisions, so the
report covers about the last week; a session with a decision whose record
has expired is left out (``source.sessions_expired``) rather than counted
with the wrong first decision. Holdout and treated sessions of a group are
comparable only if the holdout share did not change within it.

JSON schema (``format`` ``lifeline-outcomes/1``), from :func:`aggregate`::

    {"format": "lifeline-outcomes/1",
     "level": 0.95,                      # of every interval
     "sessions": 1234,                   # sessions with a decision (treated + holdout)
     "totals": GROUP,                    # key "all"
     "by": {"kind": [GROUP, ...], "site": [...], "segment": [...], "model": [...],
            "day": [...]},               # day: oldest first; the others: most sessions first
     "source": {...}}                    # what was read (the reader's: see outcome_records.py)

    GROUP = {"key": "help_offer", "sessions": 120,
             "treated_n": 108, "treated_conversions": 20, "treated_rate": 0.185,
             "holdout_n": 12, "holdout_conversions": 2, "holdout_rate": 0.167,
             "uplift": 0.018, "low": -0.19, "high": 0.13, "level": 0.95,
             "excludes_zero": false,     # (training.uplift.Uplift.to_dict())
             "reactions": {"accepted": 10, "dismissed": 30, "ignored": 50, "unseen": 18},
             "goals": {"purchase": {"treated": 15, "holdout": 2},
                       "lead": {"treated": 5, "holdout": 0}},
             "chats": {"sessions": 9, "converted": 3, "rate": 0.333, "messages": 21,
                       "resolved_by_assistant": 5, "handed_off": 2}}

Rates, ``uplift``, ``low`` and ``high`` are null when a group has no
treated or no holdout session ("no data", never a made-up zero). Keys of
sessions without a segment (a model without segments) are ``"none"``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from training.uplift import uplift

FORMAT = "lifeline-outcomes/1"
DIMENSIONS: tuple[str, ...] = ("kind", "site", "segment", "model", "day")
REACTIONS: tuple[str, ...] = ("accepted", "dismissed", "ignored", "unseen")
HOLDOUT = "holdout"  # the reaction of a holdout session: nothing was shown
NO_SEGMENT = "none"
UNKNOWN_MODEL = "unknown"


def _int(value: str | None) -> int | None:
    """A record's number ("1712", "1712.0") or None when absent or empty."""
    if value is None or value == "":
        return None
    return int(float(value))


@dataclass(frozen=True)
class DecisionRecord:
    """One decision's record as the shard wrote it (its hash and log entry), typed.

    ``expired``: the log still names the decision but its record is gone
    (past ``SESSION_TTL_S``): its outcome is unknown.
    """

    iid: str
    sid: str
    site: str
    seq: int
    ts: int
    kind: str
    holdout: bool
    model: str = ""
    segment: str = ""  # the segment's name, "segment N" for an unnamed one, "" for none
    shown: int | None = None
    accepted: int | None = None
    dismissed: int | None = None
    converted: int | None = None  # ts of the session's first conversion after this decision
    converted_seq: int | None = None
    goal: str | None = None
    expired: bool = False
    # The help chat opened from this offer (serve/chat/outcomes.py): counts, None when none.
    chat_opened: int | None = None
    chat_messages: int | None = None
    chat_resolved: int | None = None
    chat_handoff: int | None = None

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], expired: bool = False) -> DecisionRecord:
        """From a record's fields as strings (the hash, or the log entry with ``iid``)."""
        seg_name, seg = fields.get("segment_name", ""), fields.get("segment", "")
        return cls(
            iid=fields["iid"],
            sid=fields["sid"],
            site=fields.get("site", ""),
            seq=_int(fields.get("seq")) or 0,
            ts=_int(fields.get("ts")) or 0,
            kind=fields.get("kind", ""),
            holdout=fields.get("holdout") == "1",
            model=fields.get("model", ""),
            segment=seg_name or (f"segment {seg}" if seg else ""),
            shown=_int(fields.get("shown")),
            accepted=_int(fields.get("accepted")),
            dismissed=_int(fields.get("dismissed")),
            converted=_int(fields.get("converted")),
            converted_seq=_int(fields.get("converted_seq")),
            goal=fields.get("goal") or None,
            expired=expired,
            chat_opened=_int(fields.get("chat_opened")),
            chat_messages=_int(fields.get("chat_messages")),
            chat_resolved=_int(fields.get("chat_resolved")),
            chat_handoff=_int(fields.get("chat_handoff")),
        )


@dataclass(frozen=True)
class SessionOutcome:
    """One session that got a decision: its first decision's group, its reaction, its conversion."""

    site: str
    sid: str
    kind: str
    segment: str
    model: str
    day: str  # UTC date of the first decision, YYYY-MM-DD
    first_ts: int
    holdout: bool
    reaction: str  # one of REACTIONS, or HOLDOUT
    converted: bool
    goal: str | None  # what it converted on (purchase or a site goal), if it did
    decisions: int
    chatted: bool = False  # the visitor opened the help chat from one of its offers
    chat_messages: int = 0
    chat_resolved: bool = False  # a chat of it was resolved by the assistant
    chat_handoff: bool = False  # a chat of it was handed to a person

    def key(self, dimension: str) -> str:
        """The session's group in ``dimension`` (one of DIMENSIONS)."""
        return str(getattr(self, dimension))


def utc_day(ts_ms: int) -> str:
    """The UTC date of a millisecond timestamp, YYYY-MM-DD."""
    return datetime.fromtimestamp(ts_ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%d")


def _reaction(decisions: Sequence[DecisionRecord]) -> str:
    if decisions[0].holdout:
        return HOLDOUT
    if any(d.accepted is not None for d in decisions):
        return "accepted"
    if any(d.dismissed is not None for d in decisions):
        return "dismissed"
    if any(d.shown is not None for d in decisions):
        return "ignored"
    return "unseen"


def join(records: Iterable[DecisionRecord]) -> tuple[list[SessionOutcome], int]:
    """One row per session (oldest first decision first), and how many sessions were left out.

    Sessions are told apart by site and sid. A session is left out when a
    record of it has expired (its first decision or outcome may be the one
    missing).
    """
    by_session: dict[tuple[str, str], list[DecisionRecord]] = defaultdict(list)
    for rec in records:
        by_session[(rec.site, rec.sid)].append(rec)
    rows: list[SessionOutcome] = []
    expired = 0
    for (site, sid), decisions in by_session.items():
        if any(d.expired for d in decisions):
            expired += 1
            continue
        decisions.sort(key=lambda d: (d.seq, d.ts))
        first = decisions[0]
        converted = first.converted is not None and (
            first.converted_seq is None or first.converted_seq > first.seq
        )
        rows.append(
            SessionOutcome(
                site=site,
                sid=sid,
                kind=first.kind,
                segment=first.segment or NO_SEGMENT,
                model=first.model or UNKNOWN_MODEL,
                day=utc_day(first.ts),
                first_ts=first.ts,
                holdout=first.holdout,
                reaction=_reaction(decisions),
                converted=converted,
                goal=first.goal if converted else None,
                decisions=len(decisions),
                chatted=any(d.chat_opened for d in decisions),
                chat_messages=sum(d.chat_messages or 0 for d in decisions),
                chat_resolved=any(d.chat_resolved for d in decisions),
                chat_handoff=any(d.chat_handoff for d in decisions),
            )
        )
    rows.sort(key=lambda r: (r.first_ts, r.site, r.sid))
    return rows, expired


def select(
    rows: Iterable[SessionOutcome], since_ms: int | None = None, site: str | None = None
) -> list[SessionOutcome]:
    """The rows whose first decision is at or after ``since_ms``, of ``site`` (None: all)."""
    return [
        r
        for r in rows
        if (since_ms is None or r.first_ts >= since_ms) and (site is None or r.site == site)
    ]


def group(key: str, rows: Sequence[SessionOutcome], level: float = 0.95) -> dict[str, Any]:
    """One GROUP of the schema: treated against holdout conversion, reactions, goals."""
    treated = [r for r in rows if not r.holdout]
    holdout = [r for r in rows if r.holdout]
    u = uplift(
        sum(r.converted for r in treated),
        len(treated),
        sum(r.converted for r in holdout),
        len(holdout),
        level,
    )
    reactions = Counter(r.reaction for r in treated)
    goals: dict[str, dict[str, int]] = {}
    for r in rows:
        if r.goal is not None:
            arm = goals.setdefault(r.goal, {"treated": 0, "holdout": 0})
            arm["holdout" if r.holdout else "treated"] += 1
    chatted = [r for r in treated if r.chatted]
    chat_conv = sum(r.converted for r in chatted)
    return {
        "key": key,
        "sessions": len(rows),
        **u.to_dict(),
        "reactions": {name: reactions.get(name, 0) for name in REACTIONS},
        "goals": dict(sorted(goals.items())),
        "chats": {
            "sessions": len(chatted),
            "converted": chat_conv,
            "rate": chat_conv / len(chatted) if chatted else None,
            "messages": sum(r.chat_messages for r in chatted),
            "resolved_by_assistant": sum(r.chat_resolved for r in chatted),
            "handed_off": sum(r.chat_handoff for r in chatted),
        },
    }


def aggregate(
    rows: Sequence[SessionOutcome], level: float = 0.95, source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The outcome report as JSON-able dicts (the schema in the module docstring)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for dim in DIMENSIONS:
        members: dict[str, list[SessionOutcome]] = defaultdict(list)
        for r in rows:
            members[r.key(dim)].append(r)
        groups = [group(k, v, level) for k, v in members.items()]
        if dim == "day":
            groups.sort(key=lambda g: g["key"])
        else:
            groups.sort(key=lambda g: (-g["sessions"], g["key"]))
        by[dim] = groups
    return {
        "format": FORMAT,
        "level": level,
        "sessions": len(rows),
        "totals": group("all", rows, level),
        "by": by,
        "source": dict(source or {}),
    }
