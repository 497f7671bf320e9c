"""Property-based fuzzing of the protocol core: any frame, any numbers, any nesting.

Whatever arrives (undecodable bytes, JSON with NaN or 1e999, msgpack with
64-bit extremes, ints past 64 bits, lone surrogates, deep nesting, plausible
events with one field wrong), the sans-I/O core must

* never raise (the gateway would drop the socket, or its append loop);
* plan only events that msgpack and JSON can store, and that survive a
  round trip through the store's decoder unchanged;
* plan only for the frame's own session, leaving every other cursor alone;
* keep its sequence bookkeeping: a plan consumes exactly the numbers from
  the cursor's next one up, each either appended or refused with an error;
* acknowledge nothing the store has not made durable.
"""

from __future__ import annotations

import json
import math

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.core.events import EVENT_TYPES, FIELDS, EventError, validate_event
from serve.edge.protocol import (
    CONSENT_CATEGORIES,
    Connection,
    EventsPlan,
    HelloRequest,
    Limits,
    decode,
    sign_token,
)

SECRET = b"k"
SITE = "demo"
NOW = 1_700_000_000_000
SID, SID2 = "sess-0001", "sess-0002"
# A few seconds in all; database=None: no example database is written.
FAST = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

EXTREMES = [0, -1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**63)]
numbers = st.one_of(
    st.integers(-5, 10**6),
    st.integers(),
    st.sampled_from(EXTREMES),
    st.floats(allow_nan=True, allow_infinity=True),
)


def mostly(usual: st.SearchStrategy, unusual: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` four times in five. (one_of weighs its branches alike, duplicates too.)"""
    return st.sampled_from((True, True, True, True, False)).flatmap(
        lambda usually: usual if usually else unusual
    )


# Hypothesis draws no lone surrogates by itself; a JSON "\ud800" escape makes one.
text = mostly(st.text(max_size=12), st.text(max_size=6).map(lambda s: s + "\ud800"))
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)


def deep(levels: int, leaf: object = 1) -> object:
    for _ in range(levels):
        leaf = [leaf]
    return leaf


# Depths around validation's limit and past msgpack's packer (512). Deeper
# ones (past the interpreter's recursion limit) come as messages, in HOSTILE:
# as values, Hypothesis could not print a failing example holding them.
nested_deep = st.sampled_from([7, 8, 9, 40, 600]).map(deep)
any_value = st.one_of(json_values, nested_deep)
FIELD_NAMES = sorted({name for spec in FIELDS.values() for name in spec})


ENUMS = {"dir": ["up", "down"], "state": ["hidden", "visible"]}


def plausible(name: str, types: tuple[type, ...]) -> st.SearchStrategy:
    """Mostly a right value for the field, sometimes a wrong one of its kind."""
    if str in types:
        return mostly(st.sampled_from(ENUMS[name]), text) if name in ENUMS else text
    if bool in types:
        return st.booleans()
    if float in types:
        return mostly(st.one_of(st.floats(-1e6, 1e6), st.integers(0, 10**6)), numbers)
    if int in types:
        return mostly(st.integers(0, 100), numbers)
    if list in types:
        return st.lists(mostly(numbers, json_values), max_size=6)
    return st.dictionaries(text, any_value, max_size=4)


@st.composite
def events(draw: st.DrawFn) -> object:
    """Mostly well-formed events with one thing wrong, sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(any_value)
    ev: dict = {
        "type": draw(mostly(st.sampled_from(EVENT_TYPES), text)),
        "seq": draw(mostly(st.integers(1, 6), st.one_of(numbers, any_value))),
        "ts": draw(
            mostly(
                st.one_of(st.just(NOW), st.integers(NOW - 10**7, NOW + 10**4)),
                st.one_of(numbers, any_value),
            )
        ),
    }
    for name, (types, _required) in FIELDS.get(ev["type"], {}).items():
        choice = draw(st.integers(0, 9))
        if choice < 8:
            ev[name] = draw(plausible(name, types))
        elif choice == 8:
            ev[name] = draw(any_value)
    ev.update(draw(st.dictionaries(st.sampled_from(FIELD_NAMES), any_value, max_size=1)))
    return ev


sids = st.one_of(st.sampled_from([SID, SID2, SID + "\n", "short"]), st.none(), any_value)
frames = st.one_of(
    st.fixed_dictionaries(
        {
            "t": st.just("events"),
            "sid": sids,
            "now": st.one_of(st.just(NOW), st.none(), numbers, any_value),
            "events": st.one_of(st.lists(events(), max_size=6), any_value),
        }
    ),
    st.fixed_dictionaries(
        {
            "t": st.just("hello"),
            "v": st.one_of(st.just(1), any_value),
            "sid": st.one_of(sids, st.just("sess-0003")),
            "token": st.one_of(
                st.none(), st.just(sign_token(SECRET, SITE, "sess-0003")), text, any_value
            ),
            "consent": st.one_of(
                st.just(["analytics"]),
                st.lists(st.one_of(st.sampled_from(CONSENT_CATEGORIES), text)),
                any_value,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "t": st.just("consent"),
            "sid": sids,
            "consent": st.one_of(
                st.just(["analytics", "personalization"]), st.lists(text), any_value
            ),
        }
    ),
    st.just({"t": "ping"}),
    st.dictionaries(st.one_of(st.just("t"), text), any_value, max_size=3),
)


def as_json(value: object) -> str:
    """JSON text, NaN and Infinity as the non-standard constants on purpose."""
    try:
        return json.dumps(value)
    except (ValueError, RecursionError):  # an int past 4300 digits, nesting past the stack
        return "{}"


def as_msgpack(value: object) -> bytes | str:
    try:
        return msgpack.packb(value)
    except (OverflowError, ValueError, TypeError):  # ints past 64 bits, surrogates, depth
        return as_json(value)


# Messages that once broke the core, by name: a failing
# example then prints a name, not 60,000 brackets.
HOSTILE: dict[str, str | bytes] = {
    "json 60000 [": "[" * 60_000,
    "json 30000 maps": '{"a":' * 30_000,
    "msgpack 60000 arrays": b"\x91" * 60_000,
    "now NaN": '{"t":"events","now":NaN,"events":[]}',
    "now 1e999": '{"t":"events","sid":"sess-0001","now":1e999,"events":[]}',
    "ts 1e999": '{"t":"events","sid":"sess-0001","events":[{"type":"click","seq":1,"ts":1e999}]}',
    "non-ASCII token": '{"t":"hello","sid":"sess-0003","token":"\\u00e9","consent":["analytics"]}',
    "msgpack ext": msgpack.packb({"t": "ping", "x": msgpack.ExtType(1, b"")}),
    "msgpack timestamp": b"\xd6\xff\x00\x00\x00\x01",
}
messages = st.one_of(
    frames.map(as_json),
    frames.map(as_msgpack),
    st.binary(max_size=64),
    st.text(max_size=64),
    st.sampled_from(sorted(HOSTILE)).map(HOSTILE.__getitem__),
)


def assert_storable(ev: dict) -> None:
    packed = msgpack.packb(ev)
    again = msgpack.unpackb(packed)  # as the store and the shards read it back
    assert msgpack.packb(again) == packed
    json.dumps(ev, allow_nan=False)  # finite numbers, valid text: JSON holds it too
    for value in ev.values():
        if isinstance(value, float):
            assert math.isfinite(value)


@settings(FAST, max_examples=250)
@given(raw=events(), offset=st.integers(-(10**12), 10**12))
def test_validate_event_never_raises_and_returns_only_storable_events(raw, offset):
    out = validate_event(raw, NOW, offset)
    if isinstance(out, EventError):
        json.dumps(out.to_wire())
        msgpack.packb(out.to_wire())
    else:
        assert out["type"] == raw["type"] and out["seq"] == raw["seq"]
        assert_storable(out)


def connected() -> Connection:
    c = Connection(SITE, SECRET, Limits(), now=0.0)
    for sid in (SID, SID2):
        req = c.hello({"t": "hello", "sid": sid, "consent": ["analytics"]})
        assert isinstance(req, HelloRequest)
        assert c.accept_hello(req, known=False, stored_seq=0)["t"] == "welcome"
    return c


def check_plan(c: Connection, before: dict, frame: dict, plan: EventsPlan) -> None:
    # Planned for the frame's own session only.
    sid = frame.get("sid")
    if isinstance(sid, str):
        assert plan.sid == sid
    else:
        assert list(before) == [plan.sid]  # no sid: only when one session is open
    for other, cursor in before.items():
        if other != plan.sid:
            assert (c.sessions[other].acked, c.sessions[other].next) == cursor
    acked, nxt = before[plan.sid]
    cursor = c.sessions[plan.sid]
    appended = [e["seq"] for e in plan.append]
    refused = [
        r["seq"]
        for r in plan.replies
        if r["t"] == "error" and "seq" in r and r["code"] != "sequence_gap"
    ]
    if plan.last:
        # The plan consumes nxt .. last, each number appended or refused, once.
        assert plan.first == nxt and plan.last >= nxt and cursor.next == plan.last + 1
        assert sorted(appended + refused) == list(range(nxt, plan.last + 1))
        assert appended == sorted(appended)
    else:
        assert appended == [] and refused == [] and cursor.next == nxt
    # Nothing unstored is acknowledged: an ack here repeats what was durable.
    assert all(r["seq"] == acked for r in plan.replies if r["t"] == "ack")
    for ev in plan.append:
        assert_storable(ev)


def handle(c: Connection, frame: dict, known: bool, stored: int, now: float):
    """What the gateway does with a decoded frame (serve/edge/gateway.py on_message)."""
    kind = frame["t"]
    if kind == "events":
        return c.events(frame, NOW, now=now)
    if kind == "hello":
        req = c.hello(frame)
        return c.accept_hello(req, known, stored) if isinstance(req, HelloRequest) else req
    if kind == "consent":
        return c.consent(frame)[1]
    return {"t": "pong"}


@FAST
@given(
    steps=st.lists(
        st.tuples(
            st.one_of(messages, frames),  # a frame: passed on without decoding
            st.booleans(),
            st.integers(0, 5),
        ),
        max_size=8,
    )
)
def test_connection_survives_any_frames_and_keeps_its_books(steps):
    c = connected()
    for i, (message, known, stored) in enumerate(steps):
        if c.close:
            break  # the gateway reads nothing after a close
        now = float(i)
        if isinstance(message, dict):
            frame, err = message, None
            if frame.get("t") not in ("hello", "events", "consent", "ping"):
                continue  # receive() would refuse it; that path is the other branch
        else:
            frame, err = c.receive(message, now=now)
        if err is not None:
            replies = [err]
        else:
            before = {s: (cur.acked, cur.next) for s, cur in c.sessions.items()}
            out = handle(c, frame, known, stored if known else 0, now)
            if isinstance(out, EventsPlan):
                check_plan(c, before, frame, out)
                replies = out.replies
                if out.last:  # the store takes it: the ack covers the plan
                    replies = [*replies, c.appended(out.sid, out.last)]
            else:
                replies = [out]
        for reply in replies:
            json.dumps(reply, allow_nan=False)
            msgpack.packb(reply)
            c.encode(reply)


@FAST
@given(message=messages)
def test_decode_never_raises(message):
    frame, why = decode(message)
    assert (frame is None) != (why is None)
    assert frame is None or isinstance(frame, dict)
