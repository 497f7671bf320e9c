"""The gateway's sans-I/O protocol core: handshake, sequence numbers, limits."""

from __future__ import annotations

import json

import msgpack
import pytest

from serve.protocol import (
    CLOSE_BAD_FRAMES,
    CLOSE_RATE_ABUSE,
    Connection,
    HelloRequest,
    Limits,
    sign_token,
)

SECRET = b"k"
NOW = 1_700_000_000_000
SID = "sess-0001"


def ev(seq, **kw):
    return {"type": "scroll", "seq": seq, "ts": NOW, "depth": 0.5, "dir": "down", **kw}


def connected(limits: Limits | None = None, acked: int = 0) -> Connection:
    c = Connection("demo", SECRET, limits or Limits(), now=0.0)
    req = c.hello({"t": "hello", "v": 1, "sid": SID, "consent": ["analytics"]})
    assert isinstance(req, HelloRequest)
    welcome = c.accept_hello(
        HelloRequest(SID, sign_token(SECRET, "demo", SID) if acked else None, ["analytics"]),
        known=bool(acked),
        stored_seq=acked,
    )
    assert welcome["t"] == "welcome", welcome
    return c


def frame(*events, sid=SID):
    return {"t": "events", "sid": sid, "now": NOW, "events": list(events)}


def test_decode_json_and_msgpack_and_refuse_garbage():
    c = Connection("demo", SECRET)
    assert c.receive(json.dumps({"t": "ping"}))[0] == {"t": "ping"}
    assert c.receive(msgpack.packb({"t": "ping"}))[0] == {"t": "ping"} and c.binary
    for bad in ("{nope", "[1]", json.dumps({"t": "x"}), b"\xc1"):
        f, err = c.receive(bad)
        assert f is None and err["code"] == "bad_frame"


def test_too_many_bad_frames_close():
    c = Connection("demo", SECRET, Limits(bad_frames=3))
    for _ in range(4):
        c.receive("garbage")
    assert c.close == (CLOSE_BAD_FRAMES, "too many bad frames")


def test_hello_rules():
    c = Connection("demo", SECRET, Limits(sessions=1))
    assert c.hello({"t": "hello", "sid": "short", "consent": ["analytics"]})["code"] == "bad_sid"
    assert (
        c.hello({"t": "hello", "sid": SID, "consent": ["necessary"]})["code"] == "consent_required"
    )
    assert (
        c.hello({"t": "hello", "v": 2, "sid": SID, "consent": ["analytics"]})["code"] == "bad_frame"
    )
    req = c.hello({"t": "hello", "sid": SID, "consent": ["analytics", "bogus"]})
    assert req.consent == ["analytics"]
    # A known session needs its token; a wrong token is refused.
    assert c.accept_hello(req, known=True, stored_seq=5)["code"] == "bad_token"
    req.token = "0" * 32
    assert c.accept_hello(req, known=True, stored_seq=5)["code"] == "bad_token"
    req.token = sign_token(SECRET, "demo", SID)
    welcome = c.accept_hello(req, known=True, stored_seq=5)
    assert welcome["acked"] == 5 and welcome["token"] == req.token
    other = c.hello({"t": "hello", "sid": "sess-0002", "consent": ["analytics"]})
    assert other["code"] == "too_many_sessions"


def test_events_are_planned_in_order():
    c = connected()
    plan = c.events(frame(ev(1), ev(2), ev(3)), NOW)
    assert [e["seq"] for e in plan.append] == [1, 2, 3] and (plan.first, plan.last) == (1, 3)
    assert plan.replies == []
    assert c.appended(SID, 3) == {"t": "ack", "sid": SID, "seq": 3}


def test_resends_are_dropped_and_reacked():
    c = connected(acked=4)
    plan = c.events(frame(ev(3), ev(4)), NOW)
    assert plan.append == [] and plan.last == 0
    assert plan.replies == [{"t": "ack", "sid": SID, "seq": 4}]
    plan = c.events(frame(ev(4), ev(5)), NOW)
    assert [e["seq"] for e in plan.append] == [5]


def test_refused_event_consumes_its_number_and_the_rest_flows():
    c = connected()
    plan = c.events(frame(ev(1), {"type": "bogus", "seq": 2, "ts": NOW}, ev(3)), NOW)
    assert [e["seq"] for e in plan.append] == [1, 3]
    assert (plan.first, plan.last) == (1, 3)
    assert [(r["code"], r["seq"]) for r in plan.replies] == [("unknown_type", 2)]


def test_event_without_usable_seq_is_refused_alone():
    c = connected()
    plan = c.events(frame(ev(1), {"type": "scroll", "ts": NOW}, ev(2)), NOW)
    assert [e["seq"] for e in plan.append] == [1, 2]
    assert plan.replies[0]["code"] == "bad_type" and plan.replies[0]["field"] == "seq"


def test_gap_is_refused_with_the_expected_number():
    c = connected()
    plan = c.events(frame(ev(1), ev(3), ev(4)), NOW)
    assert [e["seq"] for e in plan.append] == [1]
    assert plan.replies == [
        {
            "t": "error",
            "code": "sequence_gap",
            "detail": "expected seq 2, got 3",
            "sid": SID,
            "seq": 3,
            "expected": 2,
        }
    ]


def test_store_refusal_rewinds_the_cursor():
    c = connected()
    c.events(frame(ev(1), ev(2)), NOW)
    err = c.append_failed(SID, 7, "sequence_gap")  # another connection got further
    assert err["expected"] == 8
    assert c.events(frame(ev(8)), NOW).append[0]["seq"] == 8
    err = c.append_failed(SID, -1, "overloaded")  # Redis failed: resend from what is durable
    assert err["code"] == "overloaded" and err["expected"] == 8


def test_rate_limit_then_abuse_close():
    c = connected(Limits(events_per_s=10, burst=10, abuse_strikes=3))
    assert c.events(frame(*[ev(i) for i in range(1, 11)]), NOW, now=0.0).last == 10
    err = c.events(frame(ev(11)), NOW, now=0.0)
    assert err["code"] == "rate_limited"
    assert c.events(frame(ev(11)), NOW, now=0.5).last == 11  # refilled 5 tokens
    for _ in range(3):
        c.events(frame(*[ev(i) for i in range(12, 30)]), NOW, now=0.6)
    assert c.close[0] == CLOSE_RATE_ABUSE


def test_frame_limits():
    c = connected(Limits(frame_bytes=100, batch=2))
    assert c.receive("x" * 101)[1]["code"] == "frame_too_large"
    assert c.events(frame(ev(1), ev(2), ev(3)), NOW)["code"] == "too_large"
    assert (
        c.events({"t": "events", "sid": "sess-9999", "events": []}, NOW)["code"]
        == "unknown_session"
    )


def test_clock_offset_from_frame():
    c = connected()
    plan = c.events(
        {"t": "events", "sid": SID, "now": NOW - 60_000, "events": [ev(1, ts=NOW - 60_000)]}, NOW
    )
    assert plan.append[0]["ts"] == NOW


def test_consent_withdrawal_ends_the_session_on_this_connection():
    c = connected()
    cursor, reply = c.consent({"t": "consent", "sid": SID, "consent": ["necessary"]})
    assert reply == {"t": "consent", "sid": SID, "consent": ["necessary"]}
    assert SID not in c.sessions
    assert c.events(frame(ev(1)), NOW)["code"] == "unknown_session"


@pytest.mark.parametrize("binary", [True, False])
def test_replies_use_the_clients_encoding(binary):
    c = Connection("demo", SECRET)
    c.receive(msgpack.packb({"t": "ping"}) if binary else json.dumps({"t": "ping"}))
    out = c.encode({"t": "pong"})
    assert isinstance(out, bytes) is binary
