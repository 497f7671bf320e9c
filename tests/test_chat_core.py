"""The pure chat state machine (actors/core/chat.py)."""

from __future__ import annotations

import pytest

from actors.core import chat as C


def refused(code, fn, *a, **kw):
    with pytest.raises(C.ChatRefused) as e:
        fn(*a, **kw)
    assert e.value.code == code and code in C.REFUSALS
    return e.value


def test_assistant_chat_resolved_and_counted():
    c = C.Chat()
    refused(C.NOT_OPEN, c.visitor_says, "hi", 0.0)
    c.open(1.0, iid="i-1")
    refused(C.ALREADY_OPEN, c.open, 2.0)
    assert c.visitor_says("  how long is delivery? ", 2.0).text == "how long is delivery?"
    c.assistant_says("Standard delivery takes 2 to 4 working days.", 3.0)
    c.end(4.0)
    assert c.state == C.ENDED and c.ended_by == C.END_VISITOR
    assert c.outcome() == {
        "iid": "i-1",
        "opened": 1,
        "messages": 1,
        "resolved_by_assistant": 1,
        "handed_off": 0,
    }
    refused(C.NOT_OPEN, c.assistant_says, "late", 5.0)
    c.open(6.0)  # reopened by the Help button: the offer's iid stays
    assert c.opened == 2 and c.iid == "i-1"


def test_hand_off_to_a_person_is_not_resolved_by_assistant():
    c = C.Chat()
    c.open(0.0, iid="i-2")
    c.visitor_says("I need a human", 1.0)
    refused(C.WRONG_STATE, c.operator_joins, "ana", 1.5)  # nobody asked yet
    c.request_person(2.0)
    assert c.state == C.WAITING
    refused(C.WRONG_STATE, c.assistant_says, "still me", 2.5)  # the assistant stops answering
    c.visitor_says("hello?", 3.0)  # the visitor may keep typing while waiting
    joined = c.operator_joins("ana", 4.0)
    assert joined.role == C.SYSTEM and joined.name == "ana" and c.state == C.PERSON
    assert c.operator_says("Hi, Ana here.", 5.0).name == "ana"
    c.end(6.0, by=C.END_OPERATOR)
    out = c.outcome()
    assert (out["handed_off"], out["resolved_by_assistant"], out["messages"]) == (1, 0, 2)
    assert [t["role"] for t in c.history()] == [
        "visitor",
        "system",
        "visitor",
        "system",
        "operator",
    ]


def test_wait_expires_back_to_assistant():
    c = C.Chat(C.ChatLimits(person_wait_s=60))
    c.open(0.0)
    c.request_person(10.0)
    assert c.wait_expired(69.0) is None and c.state == C.WAITING
    note = c.wait_expired(70.0)
    assert note is not None and note.note == C.NOTE_WAIT_EXPIRED and c.state == C.ASSISTANT
    assert c.wait_expired(500.0) is None


def test_limits_length_rate_and_turns_kept():
    lim = C.ChatLimits(max_chars=20, turns_kept=3, rate_messages=2, rate_window_s=10)
    c = C.Chat(lim)
    c.open(0.0)
    refused(C.EMPTY, c.visitor_says, "   ", 1.0)
    refused(C.EMPTY, c.visitor_says, None, 1.0)
    refused(C.TOO_LONG, c.visitor_says, "x" * 21, 1.0)
    c.visitor_says("one", 1.0)
    c.visitor_says("two", 2.0)
    refused(C.RATE_LIMITED, c.visitor_says, "three", 5.0)
    assert c.messages == 2  # a refused message is not counted
    c.visitor_says("three", 11.0)  # the first left the window
    c.assistant_says("answer", 12.0)
    assert [t.text for t in c.turns] == ["two", "three", "answer"]


def test_round_trip_through_a_dict():
    c = C.Chat()
    c.open(0.0, iid="i-9")
    c.visitor_says("q", 1.0)
    c.request_person(2.0)
    d = c.to_dict()
    back = C.Chat.from_dict(d)
    assert back.to_dict() == d and back.state == C.WAITING
    back.operator_joins("bo", 3.0)
    assert back.outcome()["handed_off"] == 1
    with pytest.raises(ValueError):
        C.Chat.from_dict({**d, "state": "nope"})
