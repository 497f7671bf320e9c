"""The gateway's sans-I/O protocol core: handshake, sequence numbers, limits."""

from __future__ import annotations

import json

import msgpack
import pytest

from serve.edge.protocol import (
    CLOSE_BAD_FRAMES,
    CLOSE_RATE_ABUSE,
    Connection,
    EventsPlan,
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


# -- hostile frames: an error frame and a bad-frame strike, never an exception ----


@pytest.mark.parametrize(
    "message",
    [
        '{"t":"events","sid":"sess-0001","now":NaN,"events":[]}',
        '{"t":"events","sid":"sess-0001","now":Infinity,"events":[]}',
        '{"t":"events","sid":"sess-0001","now":-Infinity,"events":[]}',
        '{"t":"events","sid":"sess-0001","events":[{"type":"click","seq":1,"ts":NaN}]}',
        "[" * 60_000,
        '{"a":' * 60_000,
        b"\x91" * 60_000,  # msgpack: 60,000 nested arrays
        msgpack.packb({"t": "ping", "x": msgpack.ExtType(3, b"x")}),
        json.dumps({"t": "ping", "n": 1}).replace("1", "1" + "0" * 5000),  # int past 4300 digits
    ],
)
def test_undecodable_frames_are_bad_frames(message):
    c = Connection("demo", SECRET, Limits(frame_bytes=1024 * 1024))
    f, err = c.receive(message)
    assert f is None and err["code"] == "bad_frame"
    assert c.bad_frames == 1 and c.close is None


@pytest.mark.parametrize(
    "now", [float("nan"), float("inf"), float("-inf"), 1e300, 2**70, "soon", [1], True]
)
def test_a_bad_now_refuses_the_frame_as_a_bad_frame(now):
    c = connected()
    err = c.events({"t": "events", "sid": SID, "now": now, "events": [ev(1)]}, NOW)
    assert (err["code"], err["sid"], err["field"]) == ("bad_frame", SID, "now")
    assert c.bad_frames == 1
    assert c.sessions[SID].next == 1  # nothing consumed: the client resends with a good clock
    assert c.events(frame(ev(1)), NOW).append[0]["seq"] == 1


def test_1e999_in_json_reaches_no_int_conversion():
    # JSON 1e999 decodes to inf: in "now" it refuses the frame, in "ts" the event.
    c = connected()
    f, err = c.receive('{"t":"events","sid":"sess-0001","now":1e999,"events":[]}')
    assert err is None
    assert c.events(f, NOW)["code"] == "bad_frame" and c.bad_frames == 1
    text = json.dumps(frame(ev(1))).replace(f'"ts": {NOW}', '"ts": 1e999')
    f, err = c.receive(text)
    plan = c.events(f, NOW)
    assert plan.append == [] and (plan.first, plan.last) == (1, 1)  # refused, seq consumed
    assert [(r["code"], r["seq"], r["field"]) for r in plan.replies] == [("out_of_range", 1, "ts")]


def test_bad_frames_close_after_the_budget_whatever_makes_them_bad():
    c = connected(Limits(bad_frames=3))
    for message in ('{"t":"ping","x":NaN}', "[" * 60_000, b"\x91" * 5000):
        c.receive(message)
    c.events({"t": "events", "sid": SID, "now": float("inf"), "events": []}, NOW)
    assert c.close == (CLOSE_BAD_FRAMES, "too many bad frames")


def test_qty_past_64_bits_is_refused_and_consumes_its_seq():
    # It used to pass validation and then stop the gateway's append loop (msgpack overflow).
    c = connected()
    big = {"type": "add_to_cart", "seq": 2, "ts": NOW, "item": "p", "qty": 2**70}
    plan = c.events(frame(ev(1), big, ev(3)), NOW)
    assert [e["seq"] for e in plan.append] == [1, 3] and (plan.first, plan.last) == (1, 3)
    assert [(r["code"], r["seq"]) for r in plan.replies] == [("out_of_range", 2)]
    msgpack.packb(plan.append)


def test_hello_with_a_non_ascii_token_gets_bad_token():
    c = Connection("demo", SECRET)
    f, err = c.receive(
        json.dumps({"t": "hello", "sid": SID, "token": "é" * 32, "consent": ["analytics"]})
    )
    reply = c.hello(f)
    assert reply["code"] == "bad_token" and reply["sid"] == SID
    # Even a request built without hello() is compared without raising.
    reply = c.accept_hello(HelloRequest(SID, "\ud800é", ["analytics"]), known=True, stored_seq=3)
    assert reply["code"] == "bad_token"


def test_sid_with_a_trailing_newline_is_refused():
    c = Connection("demo", SECRET)
    reply = c.hello({"t": "hello", "sid": SID + "\n", "consent": ["analytics"]})
    assert reply["code"] == "bad_sid"
    assert c.hello({"t": "hello", "sid": SID, "consent": ["analytics"]}).sid == SID


def test_unknown_session_echoes_only_a_valid_sid():
    c = connected()
    err = c.events({"t": "events", "sid": "\ud800" * 10, "events": []}, NOW)
    assert err["code"] == "unknown_session" and "sid" not in err
    msgpack.packb(err)


# -- every frame costs against the rate limit -----------------------------------


@pytest.mark.parametrize(
    "message",
    [
        json.dumps({"t": "ping"}),
        json.dumps({"t": "events", "sid": SID, "now": NOW, "events": []}),
        json.dumps({"t": "events", "sid": "sess-9999", "events": []}),  # unknown session
        json.dumps({"t": "events", "sid": SID, "events": "nope"}),
        json.dumps({"t": "hello", "sid": "x", "consent": []}),
        json.dumps({"t": "consent", "sid": SID, "consent": "x"}),
    ],
)
def test_a_flood_of_eventless_frames_is_rate_limited_then_closed(message):
    c = connected(Limits(events_per_s=10, burst=10, abuse_strikes=3))
    codes = []
    for _ in range(13):
        f, err = c.receive(message, now=0.0)
        if err is None:
            kind = f["t"]
            reply = (
                c.events(f, NOW, now=0.0)
                if kind == "events"
                else c.hello(f)
                if kind == "hello"
                else c.consent(f)[1]
                if kind == "consent"
                else {"t": "pong"}
            )
        else:
            reply = err
        if isinstance(reply, EventsPlan):  # an empty frame: answered with an ack
            reply = reply.replies[0]
        codes.append(reply.get("code", reply["t"]))
    assert "rate_limited" not in codes[:10], codes
    assert codes[10:] == ["rate_limited"] * 3, codes
    assert c.close[0] == CLOSE_RATE_ABUSE


def test_pings_at_the_clients_pace_are_never_limited():
    c = connected(Limits(events_per_s=1, burst=2))
    for i in range(100):  # a ping every 20 s (serve/static/lifeline.js); here every second
        f, err = c.receive(json.dumps({"t": "ping"}), now=float(i))
        assert err is None, (i, err)


def test_events_still_cost_their_number_not_one_more():
    c = connected(Limits(events_per_s=10, burst=10))
    assert c.events(frame(*[ev(i) for i in range(1, 11)]), NOW, now=0.0).last == 10
    assert c.events(frame(ev(11)), NOW, now=0.0)["code"] == "rate_limited"


def test_product_page_pattern_needs_a_full_match():
    # The same "$" defect in training's product-page pattern: "/products/p1\n" was p1.
    from training.recommender_data import item_of_page

    assert item_of_page("/products/p1") == "p1"
    assert item_of_page("/products/p1\n") is None


def test_chat_frames_are_checked_and_each_costs_a_rate_limit_token():
    from serve.edge.protocol import ChatRequest

    c = connected(Limits(events_per_s=1, burst=3, abuse_strikes=100))
    send = {"t": "chat_send", "sid": SID, "text": "where is my parcel", "mid": "m1"}
    for _ in range(3):
        got, err = c.receive(json.dumps(send), now=0.0)
        assert err is None
        req = c.chat(got)
        assert isinstance(req, ChatRequest) and req.text == "where is my parcel"
        assert (req.kind, req.mid, req.site, req.consent) == (
            "chat_send",
            "m1",
            "demo",
            ["analytics"],
        )
    got, err = c.receive(json.dumps(send), now=0.0)
    assert got is None and err["code"] == "rate_limited" and err["sid"] == SID
    c = connected()
    bad = [
        ({"t": "chat_send", "sid": SID, "text": "x"}, "bad_frame", "mid"),
        ({"t": "chat_send", "sid": SID, "text": "x", "mid": "\n"}, "bad_frame", "mid"),
        ({"t": "chat_leave", "sid": SID, "text": ["x"], "mid": "a"}, "bad_frame", "text"),
        ({"t": "chat_open", "sid": SID, "iid": 7}, "bad_frame", "iid"),
        ({"t": "chat_send", "sid": SID, "text": "\t ", "mid": "a"}, "empty_message", None),
        ({"t": "chat_send", "sid": SID, "text": "x" * 1001, "mid": "a"}, "message_too_long", None),
        ({"t": "chat_close", "sid": "sess-other"}, "unknown_session", None),
    ]
    for f, code, field in bad:
        err = c.chat(c.receive(json.dumps(f), now=0.0)[0])
        assert isinstance(err, dict) and err["code"] == code and err.get("field") == field, f
    ok = c.chat(c.receive(json.dumps({"t": "chat_open", "sid": SID, "iid": "i-x-1"}), now=0.0)[0])
    assert isinstance(ok, ChatRequest) and ok.iid == "i-x-1"
    _, err = c.receive(json.dumps({"t": "chat_typing", "sid": SID}), now=0.0)
    assert err["code"] == "bad_frame"  # not a frame of the protocol
