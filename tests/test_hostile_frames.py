"""Hostile frames against the real gateway: an error frame or a 4xx, and the service goes on.

Each frame here used to close the socket without a close frame (an exception
out of the protocol core), stop the gateway's appends, get no reply at all,
or make the beacon answer 500. The protocol rules themselves are unit-tested
in tests/test_protocol.py; this checks that the socket and HTTP shells carry
them out.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest
import websockets

from serve.edge.protocol import sign_token

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"


def new_sid(tag: str) -> str:
    return f"t-{tag}-{uuid.uuid4().hex[:12]}"


async def open_session(stack, sid: str):
    ws = await websockets.connect(f"{stack.ws_url}?site=demo", origin=ORIGIN, compression=None)
    await ws.send(json.dumps({"t": "hello", "v": 1, "sid": sid, "consent": ["analytics"]}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert welcome["t"] == "welcome", welcome
    return ws


async def reply(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def acked(ws, seq: int) -> None:
    """Read acks until one covers ``seq`` (a refused event's number is acked too)."""
    while True:
        f = await reply(ws)
        assert f["t"] == "ack", f
        if f["seq"] >= seq:
            assert f["seq"] == seq, f
            return


async def still_open(ws) -> None:
    await ws.send(json.dumps({"t": "ping"}))
    assert (await reply(ws))["t"] == "pong"


def click(seq: int, **kw) -> dict:
    return {
        "type": "click",
        "seq": seq,
        "ts": int(time.time() * 1000),
        "selector": "#b",
        "x": 1,
        "y": 2,
        "reacted": True,
        **kw,
    }


async def test_non_finite_and_deep_frames_get_error_frames_and_the_socket_stays(lifeline_stack):
    sid = new_sid("hostile")
    ws = await open_session(lifeline_stack, sid)
    for text in (
        json.dumps({"t": "events", "sid": sid, "now": 1, "events": []}).replace(
            '"now": 1', '"now": NaN'
        ),
        json.dumps({"t": "events", "sid": sid, "now": 1, "events": []}).replace(
            '"now": 1', '"now": 1e999'
        ),
        "[" * 60_000,
    ):
        await ws.send(text)
        err = await reply(ws)
        assert err["t"] == "error" and err["code"] == "bad_frame", err
        await still_open(ws)
    # In an event's ts, 1e999 refuses that event only: it consumes its number.
    frame = json.dumps({"t": "events", "sid": sid, "events": [click(1, ts=7)]})
    await ws.send(frame.replace('"ts": 7', '"ts": 1e999'))
    err = await reply(ws)
    assert (err["code"], err["seq"], err["field"]) == ("out_of_range", 1, "ts")
    await ws.send(json.dumps({"t": "events", "sid": sid, "events": [click(2)]}))
    await acked(ws, 2)
    await ws.close()


async def test_a_qty_past_64_bits_is_refused_and_appends_go_on(lifeline_stack):
    # It used to pass validation and end the gateway's append loop: no acks for anyone.
    sid = new_sid("qty")
    ws = await open_session(lifeline_stack, sid)
    cart = {"type": "add_to_cart", "seq": 1, "ts": int(time.time() * 1000), "item": "p"}
    await ws.send(json.dumps({"t": "events", "sid": sid, "events": [{**cart, "qty": 2**70}]}))
    err = await reply(ws)
    assert (err["code"], err["seq"], err["field"]) == ("out_of_range", 1, "qty")
    await acked(ws, 1)
    other = new_sid("qty-other")
    ws2 = await open_session(lifeline_stack, other)
    await ws2.send(json.dumps({"t": "events", "sid": other, "events": [click(1)]}))
    await acked(ws2, 1)
    await ws.close()
    await ws2.close()


async def test_hello_with_a_non_ascii_token_gets_bad_token(lifeline_stack):
    sid = new_sid("token")
    ws = await open_session(lifeline_stack, sid)
    await ws.close()
    ws = await websockets.connect(f"{lifeline_stack.ws_url}?site=demo", origin=ORIGIN)
    hello = {"t": "hello", "v": 1, "sid": sid, "token": "é" * 32, "consent": ["analytics"]}
    await ws.send(json.dumps(hello, ensure_ascii=False))
    err = await reply(ws)
    assert (err["code"], err["sid"]) == ("bad_token", sid)
    await still_open(ws)
    await ws.close()


async def test_a_flood_of_pings_is_rate_limited_then_closed(lifeline_stack):
    limits = lifeline_stack.gateway.limits
    ws = await open_session(lifeline_stack, new_sid("flood"))
    n = int(limits.burst) + limits.abuse_strikes + 50
    start = time.monotonic()
    for _ in range(n):
        await ws.send('{"t":"ping"}')
    codes: dict[str, int] = {}
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(n):  # every ping answered by a pong: the flood was free
            f = await reply(ws)
            key = f.get("code", f["t"])
            codes[key] = codes.get(key, 0) + 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429, codes
    refilled = limits.events_per_s * (time.monotonic() - start)
    assert codes["rate_limited"] == limits.abuse_strikes, codes
    assert codes["pong"] <= limits.burst + refilled, (codes, refilled)


async def test_beacon_bodies_that_broke_decoding_get_400(lifeline_stack):
    sid = new_sid("beacon")
    ws = await open_session(lifeline_stack, sid)  # a beacon adds only to a known session
    token = sign_token(lifeline_stack.settings.secret.encode(), "demo", sid)
    url = f"{lifeline_stack.http_url}/beacon?site=demo"
    events = json.dumps([click(1)])
    head = f'"sid":"{sid}","token":"{token}"'
    bodies = [
        f'{{{head},"now":NaN,"events":{events}}}',
        f'{{{head},"now":1e999,"events":{events}}}',
        f'{{{head},"now":Infinity,"events":{events}}}',
        "[" * 60_000,
        f'{{{head},"events":{"[" * 30}{"]" * 30}}}',  # nested past the body's limit
        b"\xff\xfe",  # not UTF-8
    ]
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(url, data=body, headers={"Origin": ORIGIN}) as resp:
                assert resp.status == 400, (body[:40], resp.status, await resp.text())
                answer = await resp.json()
                assert answer["code"] == "bad_frame", answer
    await ws.close()
