"""One session's help chat: its states, turns, limits and outcome counts.

A :class:`Chat` is a pure state machine (no I/O, the clock is passed in), so
the gateway, the shard, the console and tests drive the same rules:

    closed --open--> assistant --request_person--> waiting_for_person
    waiting_for_person --operator_joins--> person
    waiting_for_person --wait_expired--> assistant  (no one came: told, may leave a message)
    assistant | waiting_for_person | person --end--> ended --open--> assistant

Every refused transition raises :class:`ChatRefused` with a machine-readable
``code`` (one of :data:`REFUSALS`), so a caller can turn it into an error
frame without parsing text; a refused call changes nothing.

Turns are the conversation as shown to the visitor (visitor, assistant,
operator, system); only the last ``turns_kept`` are held, and a turn's text
is bounded by ``max_chars``. Visitor messages are rate-limited per sliding
window. :meth:`Chat.outcome` is what the outcome record counts: opened,
messages, resolved by the assistant, handed off, and the iid of the
intervention that led to the chat (None for the site's own Help button).

Limits: the typed text is the visitor's own free text; this module holds it
in memory only. Persisting, expiring and erasing it is the caller's
(serve/apps/chat_memory.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

# States
CLOSED = "closed"
ASSISTANT = "assistant"
WAITING = "waiting_for_person"
PERSON = "person"
ENDED = "ended"
STATES = (CLOSED, ASSISTANT, WAITING, PERSON, ENDED)
OPEN_STATES = (ASSISTANT, WAITING, PERSON)

# Turn roles
VISITOR = "visitor"
ASSISTANT_ROLE = "assistant"
OPERATOR = "operator"
SYSTEM = "system"
ROLES = (VISITOR, ASSISTANT_ROLE, OPERATOR, SYSTEM)

# Refusal codes (machine-readable; the protocol's error codes map onto these)
ALREADY_OPEN = "already_open"
NOT_OPEN = "not_open"
EMPTY = "empty_message"
TOO_LONG = "message_too_long"
RATE_LIMITED = "rate_limited"
WRONG_STATE = "wrong_state"
REFUSALS = (ALREADY_OPEN, NOT_OPEN, EMPTY, TOO_LONG, RATE_LIMITED, WRONG_STATE)

# Why a chat ended or a system turn was added
END_VISITOR = "visitor"
END_OPERATOR = "operator"
END_IDLE = "idle"
NOTE_WAIT_EXPIRED = "wait_expired"
NOTE_PERSON_JOINED = "person_joined"


class ChatRefused(Exception):
    """A transition the chat's state or limits do not allow; ``code`` says which."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Bounds of one chat. Defaults suit a help chat on a phone.

    ``max_chars``: one message (visitor, assistant or operator).
    ``turns_kept``: turns held (older ones are dropped first).
    ``rate_messages`` per ``rate_window_s``: the visitor's messages.
    ``person_wait_s``: how long a visitor waits for a person before being told none came.
    """

    max_chars: int = 1000
    turns_kept: int = 40
    rate_messages: int = 8
    rate_window_s: float = 60.0
    person_wait_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the conversation; ``ts`` in epoch seconds; ``name`` for operators."""

    role: str
    text: str
    ts: float
    name: str | None = None
    note: str | None = None  # system turns: why (NOTE_*)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "text": self.text, "ts": self.ts}
        if self.name is not None:
            d["name"] = self.name
        if self.note is not None:
            d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        return cls(d["role"], d["text"], float(d["ts"]), d.get("name"), d.get("note"))


@dataclass
class Chat:
    """The chat of one session. See the module docstring for the transitions."""

    limits: ChatLimits = field(default_factory=ChatLimits)
    state: str = CLOSED
    iid: str | None = None
    operator: str | None = None
    waiting_since: float | None = None
    turns: deque[Turn] = field(default_factory=deque)
    opened: int = 0
    messages: int = 0  # visitor messages accepted
    answers: int = 0  # assistant answers in the current chat
    handed_off: int = 0  # times a person took a chat over
    resolved_by_assistant: int = 0
    ended_by: str | None = None
    _sent: deque[float] = field(default_factory=deque, repr=False)
    _asked_person: bool = field(default=False, repr=False)

    # --- helpers ---------------------------------------------------------------

    def _need(self, *states: str) -> None:
        if self.state not in states:
            code = NOT_OPEN if self.state in (CLOSED, ENDED) else WRONG_STATE
            raise ChatRefused(code, f"state is {self.state}")

    def _text(self, text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ChatRefused(EMPTY)
        text = text.strip()
        if len(text) > self.limits.max_chars:
            raise ChatRefused(TOO_LONG, f"at most {self.limits.max_chars} characters")
        return text

    def _add(self, turn: Turn) -> Turn:
        self.turns.append(turn)
        while len(self.turns) > self.limits.turns_kept:
            self.turns.popleft()
        return turn

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    # --- transitions -----------------------------------------------------------

    def open(self, now: float, iid: str | None = None) -> None:
        """Open (or reopen after it ended) in the assistant's hands; ``iid``: the offer accepted."""
        if self.is_open:
            raise ChatRefused(ALREADY_OPEN)
        self.state = ASSISTANT
        self.opened += 1
        self.answers = 0
        self.operator = None
        self.ended_by = None
        self._asked_person = False
        if iid is not None:
            self.iid = iid

    def visitor_says(self, text: Any, now: float) -> Turn:
        """Accept a visitor message (any open state), within length and rate limits."""
        self._need(*OPEN_STATES)
        clean = self._text(text)
        window = self.limits.rate_window_s
        while self._sent and now - self._sent[0] >= window:
            self._sent.popleft()
        if len(self._sent) >= self.limits.rate_messages:
            raise ChatRefused(RATE_LIMITED, f"{self.limits.rate_messages} per {window:g} s")
        self._sent.append(now)
        self.messages += 1
        return self._add(Turn(VISITOR, clean, now))

    def assistant_says(self, text: Any, now: float) -> Turn:
        """The assistant's answer; only while the assistant has the chat (not after a hand-off)."""
        self._need(ASSISTANT)
        clean = self._text(text)
        self.answers += 1
        return self._add(Turn(ASSISTANT_ROLE, clean, now))

    def request_person(self, now: float) -> Turn:
        """The visitor asks for a person (or accepts the assistant's offer of one)."""
        self._need(ASSISTANT)
        self.state = WAITING
        self.waiting_since = now
        self._asked_person = True
        return self._add(Turn(SYSTEM, "Waiting for a person to answer.", now, note="waiting"))

    def operator_joins(self, name: str, now: float) -> Turn:
        """An operator takes the waiting chat over; the visitor sees who answers."""
        self._need(WAITING)
        if not isinstance(name, str) or not name.strip():
            raise ChatRefused(EMPTY, "operator name")
        self.state = PERSON
        self.operator = name.strip()
        self.waiting_since = None
        self.handed_off += 1
        return self._add(
            Turn(
                SYSTEM, f"{self.operator} joined the chat.", now, self.operator, NOTE_PERSON_JOINED
            )
        )

    def operator_says(self, text: Any, now: float) -> Turn:
        """A reply typed by the operator who took the chat over."""
        self._need(PERSON)
        return self._add(Turn(OPERATOR, self._text(text), now, self.operator))

    def wait_expired(self, now: float) -> Turn | None:
        """Back to the assistant if no one took the chat within ``person_wait_s``; else None."""
        if self.state != WAITING or self.waiting_since is None:
            return None
        if now - self.waiting_since < self.limits.person_wait_s:
            return None
        self.state = ASSISTANT
        self.waiting_since = None
        return self._add(
            Turn(
                SYSTEM,
                "No one is free to answer right now. You can leave a message.",
                now,
                note=NOTE_WAIT_EXPIRED,
            )
        )

    def end(self, now: float, by: str = END_VISITOR) -> None:
        """Close the chat. Resolved by the assistant: it answered and no person was asked for."""
        self._need(*OPEN_STATES)
        if self.state == ASSISTANT and self.answers > 0 and not self._asked_person:
            self.resolved_by_assistant += 1
        self.state = ENDED
        self.ended_by = by
        self.waiting_since = None

    # --- records -----------------------------------------------------------------

    def outcome(self) -> dict[str, Any]:
        """The counts the outcome record keeps, with the intervention that led to the chat."""
        return {
            "iid": self.iid,
            "opened": self.opened,
            "messages": self.messages,
            "resolved_by_assistant": self.resolved_by_assistant,
            "handed_off": self.handed_off,
        }

    def history(self) -> list[dict[str, Any]]:
        """The turns held, oldest first, as plain dicts (for the console and exports)."""
        return [t.to_dict() for t in self.turns]

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to resume the chat elsewhere (another gateway or shard)."""
        return {
            "state": self.state,
            "iid": self.iid,
            "operator": self.operator,
            "waiting_since": self.waiting_since,
            "turns": self.history(),
            "counts": [self.opened, self.messages, self.answers, self.handed_off],
            "resolved": self.resolved_by_assistant,
            "ended_by": self.ended_by,
            "sent": list(self._sent),
            "asked_person": self._asked_person,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], limits: ChatLimits | None = None) -> Chat:
        c = cls(limits or ChatLimits())
        if d.get("state") not in STATES:
            raise ValueError(f"unknown chat state {d.get('state')!r}")
        c.state = d["state"]
        c.iid, c.operator, c.waiting_since = d.get("iid"), d.get("operator"), d.get("waiting_since")
        for t in d.get("turns", []):
            c._add(Turn.from_dict(t))
        c.opened, c.messages, c.answers, c.handed_off = d.get("counts", [0, 0, 0, 0])
        c.resolved_by_assistant = d.get("resolved", 0)
        c.ended_by = d.get("ended_by")
        c._sent = deque(d.get("sent", []))
        c._asked_person = bool(d.get("asked_person"))
        return c
