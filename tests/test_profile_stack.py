"""Visitor memory on the real stack: a visitor's first visit ends, their next one remembers it.

A first session (analytics and personalisation consent) is offered help and
dismisses it; its shard retires it (the idle sweep, triggered with a clock past
the idle horizon instead of waiting for it) and writes the visitor's profile.
The visitor's next session, with personalisation consent, starts with their
returning features and is never offered the dismissed kind again; the same
visitor without personalisation consent is decided for exactly as a
first-time visitor.
"""

from __future__ import annotations

import json
import time
import uuid

from actors.core.features import RETURNING_FEATURES
from actors.core.profile import FIRST_VISIT, HISTORY_ITEMS, unpack
from actors.core.retention import PROFILE_TTL_S
from serve.dev.pyclient import LifelineClient
from tests.test_spine import ORIGIN, journey, send_all, treated_sid

VISITS_BEFORE = RETURNING_FEATURES.index("visits_before")
PERSONAL = ("necessary", "analytics", "personalization")


async def visit(stack, vid: str, consent: tuple[str, ...], dismiss: bool = False):
    """One session of visitor ``vid`` through the gateway: (sid, its intervention frames)."""
    sid = treated_sid("profile")  # outside the holdout: its help is shown
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN, consent=consent, vid=vid)
    assert (await client.connect())["t"] == "welcome"
    events = journey("struggling", sid)
    await send_all(client, events)
    n = len(events)
    if dismiss:
        iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
        await client.send_events(
            [
                {
                    "type": "intervention_dismissed",
                    "iid": iv["iid"],
                    "seq": n + 1,
                    "ts": events[-1]["ts"] + 500,
                }
            ]
        )
        n += 1
    await client.wait_acked(n)
    await stack.gateway.wait_scored(sid, n)
    await client.roundtrip()  # every frame for this socket has arrived
    await client.close()
    return sid, client.of_type("intervention")


async def test_a_returning_visitor_is_remembered_only_with_personalisation_consent(
    any_stack,
) -> None:
    stack = any_stack
    keys, r = stack.gateway.keys, stack.gateway.redis
    vid = f"v-{uuid.uuid4().hex[:16]}"

    # 1. First visit: help is offered, the visitor dismisses it, the session ends.
    first, ivs = await visit(stack, vid, PERSONAL, dismiss=True)
    assert ivs, "the struggling journey is offered help"
    dismissed = ivs[0]["kind"]
    shard = stack.shard_for(first)
    assert await shard.session_history.remote(first) == [list(FIRST_VISIT), {}, []]
    assert await r.get(keys.visitor_profile("demo", vid)) is None, "written when it ends"
    horizon = stack.settings.idle_deactivate_s * 1000.0
    assert await shard.retire_idle.remote(time.time() * 1000.0 + horizon + 60_000) >= 1
    profile = unpack(await r.get(keys.visitor_profile("demo", vid)))
    assert profile is not None and profile.visits == 1
    assert (dismissed, "dismissed") in [(o.kind, o.outcome) for o in profile.offers]
    assert (
        0 < await r.ttl(keys.visitor_profile("demo", vid)) <= PROFILE_TTL_S
    )  # the demo site keeps profiles the default 180 days

    # 2. Next visit with personalisation consent: returning features, no repeat of the kind.
    second, ivs2 = await visit(stack, vid, PERSONAL)
    history = await stack.shard_for(second).session_history.remote(second)
    assert history is not None and history[0][VISITS_BEFORE] == 1
    assert dismissed in history[1] and history[2] == list(profile.items[-HISTORY_ITEMS:])
    assert ivs2 and dismissed not in [iv["kind"] for iv in ivs2], ivs2

    # 3. The same visitor without personalisation consent: nothing of the profile is used,
    # and the decisions are a first-time visitor's (the first visit's, same journey and consent
    # but personalisation, which only the recommendations kind needs).
    third, ivs3 = await visit(stack, vid, ("necessary", "analytics"))
    assert await stack.shard_for(third).session_history.remote(third) is None
    newcomer, ivs4 = await visit(stack, f"v-{uuid.uuid4().hex[:16]}", ("necessary", "analytics"))
    assert ivs3 and [(iv["kind"], iv["seq"]) for iv in ivs3] == [
        (iv["kind"], iv["seq"]) for iv in ivs4
    ]
    assert ivs3[0]["kind"] == dismissed or dismissed == "recommendations"
    # The decisions' records say what the profile told the policy: only with the consent.
    for sid in (second, third):
        await stack.shard_for(sid).flush.remote()  # records written
    for iv in ivs2:
        returning = json.loads(await r.hget(keys.intervention(iv["iid"]), "returning"))
        assert returning[VISITS_BEFORE] == 1
    for iv in ivs3:
        assert await r.hget(keys.intervention(iv["iid"]), "returning") == b""
