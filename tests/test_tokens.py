"""Resume tokens: key ids, expiry, rotation (cluster/tokens.py) and the hello's refusals."""

from __future__ import annotations

import pytest

from cluster.tokens import DAY_S, Keyring, KeyringError
from serve.edge.protocol import Connection, HelloRequest

NOW = 1_800_000_000.0


def test_token_verifies_only_for_what_it_was_signed_for() -> None:
    ring = Keyring("k2", b"current-key", ttl_s=DAY_S)
    tok = ring.sign("resume", "demo", "sess-0001", NOW)
    assert tok.startswith("k2.")
    assert ring.check(tok, "resume", "demo", "sess-0001", NOW) is None
    assert ring.check(tok, "resume", "demo", "sess-0002", NOW) == "mismatch"
    assert ring.check(tok, "resume", "other", "sess-0001", NOW) == "mismatch"
    assert ring.check(tok, "visitor", "demo", "sess-0001", NOW) == "mismatch"
    assert ring.check(tok, "resume", "demo", "sess-0001", NOW + DAY_S + 1) == "expired"
    assert ring.check("deadbeef" * 4, "resume", "demo", "sess-0001", NOW) == "malformed"
    forged_later = tok.rsplit(".", 2)[0] + ".zzzzzzzz." + tok.rsplit(".", 1)[1]
    assert ring.check(forged_later, "resume", "demo", "sess-0001", NOW) == "mismatch"


def test_rotation_keeps_previous_keys_until_they_are_removed() -> None:
    old = Keyring("a", b"old-key")
    tok = old.sign("resume", "demo", "sess-0001", NOW)
    rotated = Keyring.parse("new-key", "b", "a:old-key")
    assert rotated.check(tok, "resume", "demo", "sess-0001", NOW) is None
    assert rotated.sign("resume", "demo", "sess-0001", NOW).startswith("b.")
    retired = Keyring.parse("new-key", "b", "")
    assert retired.check(tok, "resume", "demo", "sess-0001", NOW) == "retired"


@pytest.mark.parametrize(
    ("kid", "previous"), [("bad id", ""), ("a", "a:x"), ("a", "nocolon"), ("a", "b:")]
)
def test_bad_key_settings_are_refused(kid: str, previous: str) -> None:
    with pytest.raises(KeyringError):
        Keyring.parse("key", kid, previous)


def test_hello_refuses_expired_and_retired_tokens_with_a_reason() -> None:
    ring = Keyring("b", b"new-key", {"a": b"old-key"}, ttl_s=60)
    conn = Connection("demo", ring)
    expired = Keyring("b", b"new-key", ttl_s=-1).sign("resume", "demo", "sess-0001")
    frame = conn.accept_hello(HelloRequest("sess-0001", expired, ["analytics"]), True, 3)
    assert (frame["code"], frame["reason"]) == ("bad_token", "expired")
    gone = Keyring("z", b"gone-key").sign("resume", "demo", "sess-0001")
    frame = conn.accept_hello(HelloRequest("sess-0001", gone, ["analytics"]), True, 3)
    assert (frame["code"], frame["reason"]) == ("bad_token", "retired")
    still = Keyring("a", b"old-key").sign("resume", "demo", "sess-0001")
    welcome = conn.accept_hello(HelloRequest("sess-0001", still, ["analytics"]), True, 3)
    assert welcome["t"] == "welcome" and welcome["acked"] == 3
    # The welcome re-issues the token under the current key with a fresh expiry.
    assert welcome["token"].startswith("b.") and welcome["token"] != still
    assert ring.check(welcome["token"], "resume", "demo", "sess-0001") is None
