"""The per-site event budget (Gateway.site_bucket): over it, refused and not acked; other sites go on.

A side gateway over the shared stack with a budget of 5 events/s (burst 10).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import websockets

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _events(sid: str, first: int, last: int) -> str:
    now = int(time.time() * 1000)
    evs = [
        {"type": "page_view", "seq": s, "ts": now, "path": f"/p{s}"} for s in range(first, last + 1)
    ]
    return json.dumps({"t": "events", "sid": sid, "events": evs})


async def _hello(ws, sid: str) -> str:
    await ws.send(json.dumps({"t": "hello", "v": 1, "sid": sid, "consent": ["analytics"]}))
    welcome = json.loads(await ws.recv())
    assert welcome["t"] == "welcome"
    return welcome["token"]


async def _reply(ws) -> dict:
    while True:  # skip interventions and updates the shards may push
        frame = json.loads(await ws.recv())
        if frame["t"] in ("ack", "error"):
            return frame


async def test_a_site_over_its_budget_is_refused_and_others_are_not(any_stack) -> None:
    gw = any_stack.side_gateway(site_events_per_s=5.0)
    port = await gw.start("127.0.0.1", 0)
    base = f"ws://127.0.0.1:{port}/ws"
    demo, other = f"d-{uuid.uuid4().hex[:12]}", f"l-{uuid.uuid4().hex[:12]}"
    try:
        async with (
            websockets.connect(base + "?site=demo", origin="http://127.0.0.1:8080") as a,
            websockets.connect(base + "?site=loadtest", origin="http://loadtest.local") as b,
        ):
            token = await _hello(a, demo)
            await _hello(b, other)
            await a.send(_events(demo, 1, 10))  # the whole burst
            ack = await _reply(a)
            assert (ack["t"], ack["seq"]) == ("ack", 10)
            await a.send(_events(demo, 11, 15))
            refused = await _reply(a)
            assert (refused["code"], refused["limit"], refused["sid"]) == (
                "rate_limited", "site", demo,
            )  # fmt: skip
            # Another site on the same gateway is not held back by demo's budget.
            await b.send(_events(other, 1, 10))
            assert (await _reply(b))["seq"] == 10
            # The beacon spends the same budget: refused too, nothing stored.
            status, reply = await gw.beacons.receive(
                gw.sites["demo"],
                {"sid": demo, "token": token, "now": int(time.time() * 1000),
                 "events": json.loads(_events(demo, 11, 15))["events"]},
            )  # fmt: skip
            assert (status, reply["code"], reply["limit"]) == (429, "rate_limited", "site")
        # Nothing past 10 was stored for demo.
        assert (await gw.store.session_info("demo", demo)).seq == 10
    finally:
        await gw.stop()
