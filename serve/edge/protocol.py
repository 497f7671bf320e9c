"""The gateway's protocol core, without I/O (the sans-I/O pattern of ``websockets``).

A :class:`Connection` turns decoded frames into plans (what to append, what
to answer) and turns completed appends into acks. It never touches a socket
or Redis: :mod:`serve.edge.gateway` does, and feeds the results back. That keeps
every protocol rule (sequence numbers, deduplication, limits, tokens,
consent) testable in microseconds. See docs/PROTOCOL.md for the wire format.

Sequence rule: a session's events are numbered 1, 2, 3, ... A refused event
still consumes its number (its error frame says so), so one bad event never
blocks or loses the ones after it; numbers at or below the next expected
one are resends and are acknowledged again but never appended twice; a
number above it is a gap and is refused, so the client resends from the
expected number.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from actors.core.chat import ChatLimits
from actors.core.events import MAX_NUM, SEQUENCE_GAP, EventError, validate_event
from cluster.tokens import Keyring

PROTOCOL_VERSION = 1
CONSENT_CATEGORIES = ("necessary", "analytics", "personalization", "marketing")
# Used with fullmatch: "$" alone would accept a trailing newline.
SID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_TOKEN = 128  # a resume token is about 60 characters (cluster/tokens.py); much longer is not one
RESUME = "resume"  # the purpose a session's resume token is signed for (cluster/tokens.py)

# The store's refusals of a hello (serve/edge/store.py ``claim``) as error frames: (code, detail).
CLAIM_REFUSALS = {
    "other_site": ("bad_token", "this session belongs to another site"),
    "needs_token": ("bad_token", "this session exists: resuming needs its token"),
    "other_visitor": ("bad_vid", "this session belongs to another visitor"),
    "erased": ("erased", "this visitor's or session's data was erased: start afresh"),
    # The session's data key is wrapped by a master key this gateway lacks (a
    # rotation dropped it too early): the store failed, as far as the client knows.
    "key_unavailable": ("overloaded", "the store cannot open this session now: retry later"),
}
# Where a consent change came from (a consent frame's optional ``via``): the site's
# consent banner, or the page's own code through the client API.
CONSENT_SOURCES = ("banner", "api")

# Why a resume token was refused (cluster/tokens.py Keyring.check), as the detail to send.
_TOKEN_REFUSALS = {
    "malformed": "token is not one this service issues",
    "mismatch": "token does not match this session",
    "expired": "token has expired: start a new session",
    "retired": "token was signed by a key that has been retired: start a new session",
}

# The help chat's frames (docs/PROTOCOL.md "Help chat"); each costs one token of the rate limit.
CHAT_FRAMES = ("chat_open", "chat_send", "chat_person", "chat_leave", "chat_close")
MAX_MID = 32  # a chat message's client id
IID_RE = re.compile(
    r"[A-Za-z0-9_-]{1,96}"
)  # an intervention id (actors/core/policy.py: i-{sid}-{seq})
CHAT_MAX_CHARS = ChatLimits().max_chars

# Close codes (docs/PROTOCOL.md).
CLOSE_BAD_FRAMES = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_TAKEN_OVER = 4409
CLOSE_RATE_ABUSE = 4429


@dataclass(frozen=True)
class Limits:
    """Per-connection limits; sent to the client in the welcome frame."""

    frame_bytes: int = 64 * 1024
    hard_frame_bytes: int = 1024 * 1024  # above this the socket closes with 1009
    batch: int = 100  # events per frame
    sessions: int = 4  # sessions per connection
    events_per_s: float = 300.0  # sustained, per connection
    burst: float = 600.0
    abuse_strikes: int = 20  # rate-limit refusals within abuse_window_s before closing
    abuse_window_s: float = 10.0
    bad_frames: int = 50  # undecodable frames before closing
    hello_timeout_s: float = 10.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "frame_bytes": self.frame_bytes,
            "batch": self.batch,
            "sessions": self.sessions,
            "events_per_s": self.events_per_s,
        }


def error(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    frame = {"t": "error", "code": code, "detail": detail}
    frame.update({k: v for k, v in extra.items() if v is not None})
    return frame


def _is_sid(value: Any) -> bool:
    """True for a valid session id (a full match: no trailing newline)."""
    return isinstance(value, str) and SID_RE.fullmatch(value) is not None


def is_visitor_id(value: Any) -> bool:
    """True for a valid visitor id: the same alphabet and lengths as a session id."""
    return _is_sid(value)


def keyring_of(secret: bytes | Keyring) -> Keyring:
    """A bare secret as a one-key keyring (id ``1``, the default TTL): tests and tools pass bytes."""
    return secret if isinstance(secret, Keyring) else Keyring("1", secret)


def sign_token(secret: bytes | Keyring, site: str, sid: str, now: float | None = None) -> str:
    """The resume token for a session: only whoever got the welcome can resume it."""
    return keyring_of(secret).sign(RESUME, site, sid, now)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the protocol")


def decode(message: str | bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A frame as a map, or (None, reason). JSON for text frames, msgpack for binary.

    Never raises. Refuses what no client sends: JSON's non-standard NaN and
    Infinity, msgpack extension types, nesting deeper than the decoder's stack
    (JSON: the interpreter's recursion limit; msgpack: its fixed stack). What
    the decoders still let through (a number like 1e999 that decodes to inf,
    msgpack NaN, deep but not too deep nesting) is refused where it is used:
    ``validate_event`` for events, :meth:`Connection.events` for ``now``.
    """
    try:
        frame = (
            msgpack.unpackb(message, raw=False, ext_hook=_no_ext)
            if isinstance(message, bytes)
            else json.loads(message, parse_constant=_no_constant)
        )
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        # ValueError covers msgpack's ExtraData, FormatError and StackError, bad
        # UTF-8 and JSON ints over the interpreter's 4300-digit limit.
        return None, f"undecodable frame: {type(exc).__name__}"
    if not isinstance(frame, dict):
        return None, "a frame must be a map"
    return frame, None


def nests_within(value: Any, depth: int) -> bool:
    """True if lists and maps in ``value`` nest at most ``depth`` deep.

    Iterative, so it cannot exhaust the stack however deep ``value`` is. For
    whole-message checks off the hot path (a beacon body); the socket path
    needs none, since nothing there walks a value that validation has not bounded.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, (list, tuple)):
            continue
        if level >= depth:
            return False
        stack.extend((child, level + 1) for child in item)
    return True


def _brief(value: Any) -> str:
    """A short, always printable description of an untrusted value for an error detail."""
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if not isinstance(value, int) or -(10**18) < value < 10**18 else "int"
    elif isinstance(value, str):
        text = repr(value[:40])
    else:
        text = f"a {type(value).__name__}"  # repr of a deep list could exhaust the stack
    return text


def encode(frame: dict[str, Any], binary: bool) -> str | bytes:
    return msgpack.packb(frame) if binary else json.dumps(frame, separators=(",", ":"))


class TokenBucket:
    """Events-per-second limiter: ``rate`` sustained, ``burst`` at once."""

    __slots__ = ("rate", "burst", "tokens", "ts")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.ts = rate, burst, burst, now

    def take(self, n: float, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.ts) * self.rate)
        self.ts = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


@dataclass
class Cursor:
    """Where one session on this connection stands."""

    sid: str
    site: str
    consent: list[str]
    acked: int  # highest seq known durable (or refused), as last acknowledged
    next: int  # next seq this connection will accept (appends may be in flight below it)
    scored: int = 0  # highest seq the shard has scored (and queued interventions for)
    vid: str | None = None  # the visitor the hello named (pseudonymous, first-party)
    via: str = "change"  # the source of its latest consent change (a consent frame's via)
    # The session's data key (cluster/sealing.py Sealer), set by the shell on the
    # hello: its events are sealed with it on their way to the log. None: plaintext.
    sealer: Any = None


@dataclass
class HelloRequest:
    """A hello that passed the local checks; the shell looks the sid up in Redis."""

    sid: str
    token: str | None
    consent: list[str]
    vid: str | None = None


@dataclass
class ChatRequest:
    """A chat frame that passed the local checks; the shell applies it to the stored chat."""

    kind: str  # one of CHAT_FRAMES
    sid: str
    site: str
    consent: list[str]
    text: str | None = None
    mid: str | None = None
    iid: str | None = None


@dataclass
class EventsPlan:
    """What to do with one events frame."""

    sid: str
    append: list[dict[str, Any]] = field(default_factory=list)  # validated, new, in order
    first: int = 0  # first seq this plan consumes
    last: int = 0  # last seq it consumes (refused events included); 0: nothing new
    replies: list[dict[str, Any]] = field(default_factory=list)  # errors, or an ack for resends
    # The session's consent when the frame was validated: what its events go to
    # the shard with, even if the session has left this connection by then.
    consent: list[str] | tuple[str, ...] = ()
    sealer: Any = None  # the session's Sealer when the frame was validated (see Cursor)


class Connection:
    """One WebSocket connection's protocol state, for one site."""

    def __init__(
        self,
        site: str,
        secret: bytes | Keyring,
        limits: Limits | None = None,
        now: float | None = None,
        site_bucket: TokenBucket | None = None,
    ) -> None:
        now = time.monotonic() if now is None else now
        limits = limits or Limits()
        self.site = site
        self.keyring = keyring_of(secret)
        # The site's event budget, shared by every connection of the site on this gateway.
        self.site_bucket = site_bucket
        self.limits = limits
        self.sessions: dict[str, Cursor] = {}
        self.binary = False
        self.bucket = TokenBucket(limits.events_per_s, limits.burst, now)
        self.strikes: list[float] = []
        self.bad_frames = 0
        self.close: tuple[int, str] | None = None  # set when the connection must close

    # -- frames -------------------------------------------------------------

    def receive(
        self, message: str | bytes, now: float | None = None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Decode one frame: (frame, None) or (None, error frame to send).

        Every frame costs against the connection's rate limit: an events frame
        its number of events (at least one) in :meth:`events`, any other frame
        one here, so a flood of pings, hellos or empty frames is limited like
        a flood of events. Never raises.
        """
        self.binary = isinstance(message, bytes)
        if len(message) > self.limits.frame_bytes:
            return None, self._bad(
                error("frame_too_large", f"frame over {self.limits.frame_bytes} bytes")
            )
        frame, why = decode(message)
        if frame is None:
            return None, self._bad(error("bad_frame", why or "bad frame"))
        kind = frame.get("t")
        if kind == "events":
            return frame, None
        if kind not in ("hello", "consent", "ping") and kind not in CHAT_FRAMES:
            return None, self._bad(error("bad_frame", "unknown frame type 't'"))
        if not self._take(1, time.monotonic() if now is None else now):
            sid = frame.get("sid")
            return None, self._rate_limited(sid if _is_sid(sid) else None)
        return frame, None

    def control_frame(self, now: float | None = None) -> bool:
        """A WebSocket ping, which the socket layer answers itself, costs one token too.

        False when over the limit (a strike: persistent floods close with 4429).
        """
        return self._take(1, time.monotonic() if now is None else now)

    def _take(self, n: int, now: float) -> bool:
        """Spend ``n`` tokens of the rate limit; False (a strike) when there are not enough."""
        if self.bucket.take(n, now):
            return True
        self.strikes = [t for t in self.strikes if now - t < self.limits.abuse_window_s] + [now]
        if len(self.strikes) >= self.limits.abuse_strikes:
            self.close = (CLOSE_RATE_ABUSE, "rate limit exceeded repeatedly")
        return False

    def _rate_limited(self, sid: str | None) -> dict[str, Any]:
        return error(
            "rate_limited", f"over {self.limits.events_per_s:g} events/s: resend later", sid=sid
        )

    def _bad(self, err: dict[str, Any]) -> dict[str, Any]:
        self.bad_frames += 1
        if self.bad_frames > self.limits.bad_frames:
            self.close = (CLOSE_BAD_FRAMES, "too many bad frames")
        return err

    def encode(self, frame: dict[str, Any]) -> str | bytes:
        """In the encoding the client last used."""
        return encode(frame, self.binary)

    # -- hello --------------------------------------------------------------

    def hello(self, frame: dict[str, Any]) -> HelloRequest | dict[str, Any]:
        """Check a hello locally; returns the request to look up, or an error frame."""
        if frame.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
            return error("bad_frame", f"unsupported protocol version {_brief(frame.get('v'))}")
        sid = frame.get("sid")
        if not _is_sid(sid):
            return error("bad_sid", "sid must be 8 to 64 characters of [A-Za-z0-9_-]")
        consent = frame.get("consent")
        if not isinstance(consent, list) or not all(isinstance(c, str) for c in consent):
            return error("bad_frame", "consent must be a list of categories", sid=sid)
        consent = [c for c in consent if c in CONSENT_CATEGORIES]
        if "analytics" not in consent:
            return error(
                "consent_required", "no analytics consent: nothing may be collected", sid=sid
            )
        if sid not in self.sessions and len(self.sessions) >= self.limits.sessions:
            return error(
                "too_many_sessions",
                f"at most {self.limits.sessions} sessions per connection",
                sid=sid,
            )
        token = frame.get("token")
        if token is not None and (
            not isinstance(token, str) or len(token) > MAX_TOKEN or not token.isascii()
        ):
            return error("bad_token", "token must be the ASCII string from the welcome", sid=sid)
        vid = frame.get("vid")
        if vid is not None and not is_visitor_id(vid):
            return error("bad_vid", "vid must be 8 to 64 characters of [A-Za-z0-9_-]", sid=sid)
        return HelloRequest(sid, token, consent, vid)

    def accept_hello(self, req: HelloRequest, known: bool, stored_seq: int) -> dict[str, Any]:
        """Finish a hello once the shell knows whether the sid exists and its durable seq."""
        if req.token is not None:
            # One HMAC; the reason (mismatch, expired, retired, malformed) is machine-readable,
            # the code stays bad_token: the client starts afresh after any of them.
            why = self.keyring.check(req.token, RESUME, self.site, req.sid)
            if why is not None:
                return error("bad_token", _TOKEN_REFUSALS[why], sid=req.sid, reason=why)
        if known and req.token is None:
            return error("bad_token", "this session exists: resuming needs its token", sid=req.sid)
        self.sessions[req.sid] = Cursor(
            req.sid, self.site, req.consent, stored_seq, stored_seq + 1, vid=req.vid
        )
        return {
            "t": "welcome",
            "v": PROTOCOL_VERSION,
            "sid": req.sid,
            "token": self.keyring.sign(RESUME, self.site, req.sid),  # fresh expiry every hello
            "acked": stored_seq,
            "limits": self.limits.to_wire(),
        }

    # -- events -------------------------------------------------------------

    def _session_of(self, frame: dict[str, Any]) -> Cursor | dict[str, Any]:
        sid = frame.get("sid")
        if sid is None and len(self.sessions) == 1:
            return next(iter(self.sessions.values()))
        cursor = self.sessions.get(sid) if isinstance(sid, str) else None
        if cursor is None:
            return error(
                "unknown_session",
                "send a hello for this sid first",
                sid=sid if _is_sid(sid) else None,  # never echo an arbitrary string
            )
        return cursor

    def events(
        self, frame: dict[str, Any], now_ms: int, now: float | None = None
    ) -> EventsPlan | dict[str, Any]:
        """Validate an events frame against the session's cursor; returns a plan or an error frame.

        The frame costs its number of events against the rate limit, at least
        one (and at most ``limits.batch``) whatever is wrong with it, so no
        stream of frames is answered for free. Never raises.
        """
        cursor = self._session_of(frame)
        raw_events = frame.get("events")
        cost = min(len(raw_events), self.limits.batch) if isinstance(raw_events, list) else 1
        now = time.monotonic() if now is None else now
        if not self._take(cost or 1, now):
            return self._rate_limited(None if isinstance(cursor, dict) else cursor.sid)
        if isinstance(cursor, dict):
            return cursor
        if self.site_bucket is not None and not self.site_bucket.take(cost or 1, now):
            # Not this client's fault: no strike. Nothing is consumed or acked; the client
            # resends after a pause, as after its own rate limit (the code it already knows).
            return error(
                "rate_limited", "the site is over its event budget: resend later",
                sid=cursor.sid, limit="site",
            )  # fmt: skip
        if not isinstance(raw_events, list):
            return error("bad_frame", "'events' must be a list", sid=cursor.sid)
        if len(raw_events) > self.limits.batch:
            return error(
                "too_large", f"at most {self.limits.batch} events per frame", sid=cursor.sid
            )
        client_now = frame.get("now")
        offset = 0
        if client_now is not None:
            if (
                not isinstance(client_now, (int, float))
                or isinstance(client_now, bool)
                or not -MAX_NUM <= client_now <= MAX_NUM  # NaN fails it; int() of inf raises
            ):
                # Refused whole, counted as a bad frame: no event in it consumes its number.
                return self._bad(
                    error(
                        "bad_frame",
                        "'now' must be a finite number of ms",
                        sid=cursor.sid,
                        field="now",
                    )
                )
            offset = now_ms - int(client_now)
        plan = EventsPlan(cursor.sid, consent=cursor.consent, sealer=cursor.sealer)
        expected = cursor.next
        for raw in raw_events:
            seq = raw.get("seq") if isinstance(raw, dict) else None
            if isinstance(seq, int) and not isinstance(seq, bool) and seq < expected:
                continue  # a resend of something already consumed
            ev = validate_event(raw, now_ms, offset)
            if isinstance(ev, EventError):
                if ev.seq is None:
                    # Without a usable number it cannot consume one; nothing else is affected.
                    plan.replies.append({"t": "error", "sid": cursor.sid, **ev.to_wire()})
                    continue
                ev_seq = ev.seq
            else:
                ev_seq = ev["seq"]
            if ev_seq != expected:
                plan.replies.append(
                    error(
                        SEQUENCE_GAP,
                        f"expected seq {expected}, got {ev_seq}",
                        sid=cursor.sid,
                        seq=ev_seq,
                        expected=expected,
                    )
                )
                break  # everything after a gap is a gap too
            if isinstance(ev, EventError):
                plan.replies.append({"t": "error", "sid": cursor.sid, **ev.to_wire()})
            else:
                plan.append.append(ev)
            expected += 1
        if expected > cursor.next:
            plan.first, plan.last = cursor.next, expected - 1
            cursor.next = expected
        elif cursor.acked == cursor.next - 1:
            # Only resends (or nothing usable): re-acknowledge what is durable.
            plan.replies.append({"t": "ack", "sid": cursor.sid, "seq": cursor.acked})
        return plan

    def appended(self, sid: str, upto: int) -> dict[str, Any] | None:
        """The store made everything up to ``upto`` durable: the ack to send."""
        cursor = self.sessions.get(sid)
        if cursor is None:
            return None
        cursor.acked = max(cursor.acked, upto)
        # A round that failed before this one rewound ``next``; what is durable now is not
        # expected again (with rounds pipelined and WAIT per round, one can fail and the
        # next succeed: its ack covers the failed one's events, which Redis ran first).
        cursor.next = max(cursor.next, cursor.acked + 1)
        return {"t": "ack", "sid": sid, "seq": cursor.acked}

    def append_failed(self, sid: str, durable: int, code: str) -> dict[str, Any]:
        """The store refused (``sequence_gap``: it holds ``durable``) or failed (``overloaded``).

        Rewind to what is durable; the error tells the client where to resend from.
        """
        expected = durable + 1
        cursor = self.sessions.get(sid)
        if cursor is not None:
            cursor.acked = max(cursor.acked, durable)
            cursor.next = expected = cursor.acked + 1
        return error(code, f"not stored: resend from seq {expected}", sid=sid, expected=expected)

    # -- help chat ----------------------------------------------------------

    def chat(self, frame: dict[str, Any]) -> ChatRequest | dict[str, Any]:
        """Check a chat frame (its rate-limit token was taken in :meth:`receive`).

        Returns the request for the shell, or an error frame: ``unknown_session``,
        ``bad_frame`` (with ``field``: a wrong type, a ``mid`` over 32
        characters, a malformed ``iid``), ``empty_message``,
        ``message_too_long``. A refused frame changes nothing.
        """
        cursor = self._session_of(frame)
        if isinstance(cursor, dict):
            return cursor
        kind, sid = frame["t"], cursor.sid
        req = ChatRequest(kind, sid, cursor.site, list(cursor.consent))
        if kind == "chat_open":
            iid = frame.get("iid")
            if iid is not None and (not isinstance(iid, str) or not IID_RE.fullmatch(iid)):
                return error("bad_frame", "iid must be an intervention id", sid=sid, field="iid")
            req.iid = iid
        elif kind in ("chat_send", "chat_leave"):
            mid, text = frame.get("mid"), frame.get("text")
            if not isinstance(mid, str) or not 0 < len(mid) <= MAX_MID or not mid.isprintable():
                return error(
                    "bad_frame", f"mid must be a string of 1 to {MAX_MID} characters",
                    sid=sid, field="mid",
                )  # fmt: skip
            if not isinstance(text, str):
                return error("bad_frame", "text must be a string", sid=sid, field="text")
            if not text.strip():
                return error("empty_message", "the message is empty", sid=sid, mid=mid)
            if len(text) > CHAT_MAX_CHARS:
                return error(
                    "message_too_long", f"at most {CHAT_MAX_CHARS} characters", sid=sid, mid=mid
                )
            req.text, req.mid = text, mid
        return req

    # -- consent ------------------------------------------------------------

    def consent(self, frame: dict[str, Any]) -> tuple[Cursor | None, dict[str, Any]]:
        """Update a session's consent; without analytics the session leaves this connection."""
        cursor = self._session_of(frame)
        if isinstance(cursor, dict):
            return None, cursor
        consent = frame.get("consent")
        if not isinstance(consent, list) or not all(isinstance(c, str) for c in consent):
            return None, error("bad_frame", "consent must be a list of categories", sid=cursor.sid)
        via = frame.get("via")
        if via is not None and via not in CONSENT_SOURCES:
            return None, error(
                "bad_frame", "via must be 'banner' or 'api'", sid=cursor.sid, field="via"
            )
        cursor.via = via or "change"
        cursor.consent = [c for c in consent if c in CONSENT_CATEGORIES]
        if "analytics" not in cursor.consent:
            del self.sessions[cursor.sid]
        return cursor, {"t": "consent", "sid": cursor.sid, "consent": cursor.consent}
