"""Interventions go out at once; LLM text and recommendations follow as updates.

The whole stack with the Serve deployments, the real ``anthropic`` client
talking to the local Messages API stand-in, real WebSockets, Ray and Redis.
"""

from __future__ import annotations

import time
import uuid

import pytest
import pytest_asyncio

from actors.core.kinds import RECOMMENDATIONS
from cluster.redis_server import delete_prefix
from serve.dev.llm_stub import StubLLM
from serve.dev.pyclient import LifelineClient
from training.simulator import scripted

pytestmark = pytest.mark.asyncio(loop_scope="module")

ORIGIN = "http://127.0.0.1:8080"
CONSENT = ("necessary", "analytics", "personalization")

# This module tests the wiring to Serve, not the model: one strong signal is
# enough to intervene, and two seconds on the cart page is full hesitation.
SITES = """
[sites.demo]
origins = ["http://127.0.0.1:*"]
[sites.demo.policy]
min_signals = 1
risk_threshold = 0.99
holdout = 0.0
[sites.demo.detectors]
cart_hesitation_s = 2.0
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def serve_stack(ray_cluster, redis_url, tmp_path_factory):
    from cluster.config import Settings
    from cluster.stack import Stack

    sites = tmp_path_factory.mktemp("serve") / "sites.toml"
    sites.write_text(SITES)
    stub = StubLLM(api_key="test-key", seed=5)
    await stub.start()
    prefix = f"lltest-serve-{uuid.uuid4().hex[:8]}:"
    settings = Settings(
        redis_url=redis_url,
        prefix=prefix,
        ws_port=0,
        http_port=0,
        console_port=0,
        sites_file=str(sites),
        anthropic_api_key="test-key",
        anthropic_base_url=stub.url,
    )
    stack = await Stack(settings).start(
        with_serve=True, shard_name_suffix=f"-{uuid.uuid4().hex[:6]}"
    )
    yield stack, stub
    await stack.stop()
    await stub.close()
    delete_prefix(redis_url, prefix)


def new_sid() -> str:
    return f"t-serve-{uuid.uuid4().hex[:12]}"


async def open_session(
    stack, consent: tuple[str, ...] = CONSENT, sid: str | None = None
) -> LifelineClient:
    client = LifelineClient(stack.ws_url, "demo", sid or new_sid(), ORIGIN, consent=consent)
    assert (await client.connect())["t"] == "welcome"
    return client


async def send_now(client: LifelineClient, events: list[dict], ahead_ms: int = 0) -> None:
    """Send events stamped with the current time, as a live client would."""
    now = int(time.time() * 1000) + ahead_ms
    await client.send_events([dict(e, ts=now) for e in events])


def cart_journey() -> list[dict]:
    events = [
        {
            "type": "page_view",
            "path": "/product.html?id=p03",
            "page_type": "product",
            "item": "p03",
        },
        {"type": "add_to_cart", "item": "p03", "qty": 1, "price": 89.0},
        {
            "type": "page_view",
            "path": "/product.html?id=p07",
            "page_type": "product",
            "item": "p07",
        },
        {"type": "page_view", "path": "/cart.html", "page_type": "cart"},
    ]
    return [dict(ev, seq=i + 1) for i, ev in enumerate(events)]


LINGER = [{"type": "scroll", "seq": 5, "depth": 0.3, "dir": "down"}]


async def test_struggling_journey_gets_template_then_llm_text(serve_stack):
    stack, stub = serve_stack
    calls_before = len(stub.requests)
    client = await open_session(stack)
    events = scripted("struggling", client.sid, 0)
    for i in range(0, len(events), 4):
        await send_now(client, events[i : i + 4])
    iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=20)
    assert iv["text"], "the templated text never waits for the LLM"
    update = await client.wait_for(
        lambda f: f["t"] == "update" and f["iid"] == iv["iid"], timeout=10
    )
    assert update["source"] in ("llm", "cache") and update["text"] != iv["text"]
    # The LLM was asked, and nothing that identifies the visitor reached it.
    prompts = [str(r) for r in stub.requests[calls_before:]]
    assert prompts and all(client.sid not in p and client.token not in p for p in prompts)
    # Within the 2.5 s budget of the triggering event.
    arrived = next(t for t, f in client.frames if f is update)
    assert arrived - client.sent_at[iv["seq"]] < 2.5
    await client.close()


async def test_cart_hesitation_gets_recommendations(serve_stack):
    stack, _ = serve_stack
    client = await open_session(stack)
    await send_now(client, cart_journey())
    await send_now(client, LINGER, ahead_ms=2500)  # the next event comes 2.5 s later
    iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=20)
    assert iv["kind"] == RECOMMENDATIONS, iv
    update = await client.wait_for(
        lambda f: f["t"] == "update" and f["iid"] == iv["iid"], timeout=10
    )
    items = update["items"]
    assert items and all({"id", "name", "url"} <= set(i) for i in items)
    assert "p03" not in {i["id"] for i in items}, "never recommends what is already in the cart"
    await client.close()


async def test_without_personalization_no_llm_and_no_recommendations(serve_stack):
    stack, stub = serve_stack
    client = await open_session(stack, consent=("necessary", "analytics"))
    shard = stack.shard_for(client.sid)
    scheduled = (await shard.ping.remote()).get("followups_scheduled", 0)
    llm_calls = len(stub.requests)
    await send_now(client, cart_journey())
    await send_now(client, LINGER, ahead_ms=2500)
    await client.wait_acked(5)
    await stack.gateway.wait_scored(client.sid, 5)
    await client.roundtrip()
    ivs = client.of_type("intervention")
    assert ivs and all(iv["kind"] != RECOMMENDATIONS for iv in ivs)
    # Updates come seconds after their intervention, so "none yet" proves nothing. A
    # personalised session on the same shard runs the same journey after it: the shard
    # schedules follow-ups in the order it decided (one I/O loop), so once this session's
    # update has arrived, any follow-up of the first session was scheduled before it.
    other = new_sid()
    while stack.gateway.ring.shard_of(other) != stack.gateway.ring.shard_of(client.sid):
        other = new_sid()
    control = await open_session(stack, sid=other)
    await send_now(control, cart_journey())
    await send_now(control, LINGER, ahead_ms=2500)
    await control.wait_acked(5)
    await stack.gateway.wait_scored(control.sid, 5)
    await control.roundtrip()
    (iv,) = control.of_type("intervention")
    assert iv["kind"] == RECOMMENDATIONS, iv
    await control.wait_for(lambda f: f["t"] == "update" and f["iid"] == iv["iid"], timeout=10)
    # One follow-up on that shard since the first session began: the control's.
    assert (await shard.ping.remote())["followups_scheduled"] - scheduled == 1
    assert len(stub.requests) == llm_calls  # no LLM asked (recommendations need none)
    await client.roundtrip()
    assert client.of_type("update") == []
    await client.close()
    await control.close()
