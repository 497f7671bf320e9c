"""Signals, kinds and features are declared once; everything else follows the declarations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from actors.core.detectors import DetectorConfig
from actors.core.features import COUNTERS, FEATURE_NAMES, FEATURES, N_FEATURES
from actors.core.kinds import DECLARED as KINDS_DECLARED
from actors.core.kinds import KIND
from actors.core.policy import Decision, Reason
from actors.core.session import Session
from actors.core.signals import DECLARED as SIGNALS_DECLARED
from actors.core.signals import INTENT_QUERY, SIGNALS
from actors.shard.actor import decision_frame
from serve.apps.nudge import (
    KIND_TEXT,
    SIGNAL_TEXT,
    TEMPLATES,
    build_prompt,
    derive_intent,
    render_template,
)

CLIENT = Path(__file__).resolve().parent.parent / "serve" / "static" / "lifeline.js"
CLIENT_UI = CLIENT.with_name("lifeline-ui.js")  # the cards, which the tracker loads on demand
CLIENT_CHAT = CLIENT.with_name("lifeline-chat.js")  # the help chat, loaded on demand too


@pytest.mark.parametrize("signal", SIGNALS_DECLARED, ids=lambda s: s.name)
def test_every_declared_signal_has_its_text_template_intent_and_settings(signal):
    assert signal.text and SIGNAL_TEXT[signal.name] == signal.text
    assert signal.templates.get("help_offer"), "the kind any decision may fall back to"
    for kind, text in signal.templates.items():
        assert kind in KIND and TEMPLATES[(kind, signal.name)] == text
        assert render_template(kind, {signal.name: 0.9}) == text
    assert signal.intent in INTENT_QUERY
    assert derive_intent({"kind": "help_offer", "signals": {signal.name: 0.9}}) == (
        f"help_offer.{signal.intent}"
    )
    # Its full strength is a site setting, and the prompt describes it when it is active.
    assert isinstance(getattr(DetectorConfig(), signal.full), (int, float))
    _, user = build_prompt({"kind": "help_offer", "signals": {signal.name: 0.9}}, [])
    assert signal.text in user
    assert signal.suggests is None or signal.suggests in KIND


def test_the_signal_vector_and_its_features_come_from_the_declarations():
    assert tuple(s.name for s in SIGNALS_DECLARED) == SIGNALS
    sig_cols = [n for n in FEATURE_NAMES if n.startswith("sig_")]
    assert sig_cols == [f"sig_{s}" for s in SIGNALS]
    # Contiguous: the policy reads them as one slice.
    first = FEATURE_NAMES.index(sig_cols[0])
    assert list(FEATURE_NAMES[first : first + len(sig_cols)]) == sig_cols
    s = Session("s")
    s.apply({"type": "page_view", "seq": 1, "ts": 1000, "path": "/"})
    assert list(s.signals()) == list(SIGNALS)


def test_a_signal_without_a_template_or_text_is_refused():
    from actors.core import signals

    bare = signals.Signal("x", full="full_rage", text="did x", intent="re_engage", templates={})
    with pytest.raises(ValueError, match="help_offer template"):
        _check_with(signals, bare)
    mute = signals.Signal("x", full="full_rage", text="", intent="re_engage", templates={})
    with pytest.raises(ValueError, match="text"):
        _check_with(signals, mute)


def _check_with(module, extra) -> None:
    saved = module.DECLARED
    module.DECLARED = (*saved, extra)
    try:
        module._check()
    finally:
        module.DECLARED = saved


def test_every_kind_has_prompt_template_and_its_frame_follows_its_follow_up():
    for kind in KINDS_DECLARED:
        assert KIND_TEXT[kind.name] == kind.prompt
        assert render_template(kind.name, {}) == TEMPLATES[(kind.name, None)] == kind.template
        d = Decision("i-1", "s", 3, 1000, kind.name, 0.9, "risk", (Reason("x", 1.0),), False)
        frame = decision_frame(d, "text")
        assert frame["kind"] == kind.name
        assert ("items" in frame) == (kind.follow_up == "recommend")


def _client_kinds() -> dict[str, list[str]]:
    """The cards' ``KINDS`` table (``kind: [role, heading, accept, dismiss]``), parsed."""
    src = CLIENT_UI.read_text()
    m = re.search(r"const KINDS = \{(.*?)\n\s*\};", src, re.S)
    assert m, "lifeline-ui.js has no KINDS table"
    body = re.sub(r"(\w+):", r'"\1":', m.group(1))
    return json.loads("{" + body + "}")


def test_the_clients_kind_table_matches_the_servers_declarations():
    table = _client_kinds()
    assert list(table) == [k.name for k in KINDS_DECLARED]
    for kind in KINDS_DECLARED:
        row = table[kind.name] + [""] * (4 - len(table[kind.name]))
        assert row == [kind.role, kind.heading, kind.accept, kind.dismiss], kind.name
    # The tracker takes exactly the declared kinds (it drops any other before loading the cards).
    known = re.search(r"!/\^\(([a-z_|]+)\)\$/\.test\(f\.kind\)", CLIENT.read_text())
    assert known and known.group(1).split("|") == [k.name for k in KINDS_DECLARED]
    # What the client's renderer assumes of particular kinds holds for the declarations:
    # an item list for kinds starting with "r", a consent check and a field to point at.
    src = CLIENT.read_text() + CLIENT_UI.read_text()
    assert 'k[0] == "r"' in src
    for kind in KINDS_DECLARED:
        assert (kind.name[0] == "r") == (kind.follow_up == "recommend"), kind.name
        if kind.needs_consent:
            assert f'f.kind == "{kind.name}" && !granted("{kind.needs_consent}")' in src
        if kind.needs_target:
            assert f'iv.kind == "{kind.name}" && !f' in src


def test_the_row_is_built_from_the_feature_declarations():
    assert len(FEATURE_NAMES) == N_FEATURES == sum(len(f.names) for f in FEATURES)
    assert len(set(FEATURE_NAMES)) == N_FEATURES
    s = Session("s")
    evs = [
        {"type": "page_view", "seq": 1, "ts": 1000, "path": "/cart", "page_type": "cart"},
        {"type": "click", "seq": 2, "ts": 2000, "x": 1.0, "y": 1.0, "reacted": False},
    ]
    for ev in evs:
        row = s.apply(ev)
    assert len(row) == N_FEATURES
    named = dict(zip(FEATURE_NAMES, row, strict=True))
    # Counter features are the session's counts, in declaration order.
    assert [named[n] for n in COUNTERS] == s.counts
    assert named["n_clicks"] == named["dead_clicks"] == 1 and named["dead_click_ratio"] == 1.0
    assert named["page_cart"] == 1.0 and named["page_home"] == 0.0
    assert named["session_age_s"] == 1.0 and named["n_events"] == 2


def test_the_chat_panel_follows_the_chat_declarations():
    from actors.core.chat import OPEN_STATES, REFUSALS, ROLES, STATES, ChatLimits

    src = CLIENT_CHAT.read_text()
    opened = re.search(r"const OPEN = \(s\) => /\^\(([a-z_|]+)\)\$/", src)
    assert opened and opened.group(1).split("|") == list(OPEN_STATES)
    # The tracker tells an open chat_state (which loads the chat) by its first letter.
    first = re.search(r"/\^\[([a-z]+)\]/\.test\(f\.state\)", CLIENT.read_text())
    assert first and set(first.group(1)) == {s[0] for s in OPEN_STATES}
    assert not [s for s in STATES if s not in OPEN_STATES and s[0] in first.group(1)]
    roles = re.search(r"/\^\(([a-z|]+)\)\$/\.test\(t\.role\)", src)
    assert roles and roles.group(1).split("|") == list(ROLES)
    assert re.search(r"const MAX = (\d+);", src).group(1) == str(ChatLimits().max_chars)
    # Every refusal the visitor can cause reads as friendly text (already_open is silent:
    # the chat_state that follows says everything).
    say = re.search(r"const SAY = \{(.*?)\n\s*\};", src, re.S)
    assert say
    codes = set(re.findall(r"^\s*(\w+):", say.group(1), re.M))
    assert (set(REFUSALS) - {"already_open"}) | {"chat_unavailable"} <= codes
