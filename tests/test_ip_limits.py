"""Per-address socket limits (serve/edge/ip_limits.py) on a real gateway, over real sockets.

A side gateway over the shared stack counts loopback too (the default exempts
it); 127.0.0.2 is another address on this machine, so another client.
"""

from __future__ import annotations

import contextlib
import json
import time

import aiohttp
import pytest
import websockets
from aiohttp.test_utils import TestServer
from websockets.exceptions import InvalidStatus

from serve.edge.gateway import Gateway
from serve.edge.http import build_app
from serve.edge.ip_limits import IpLimits

pytestmark = pytest.mark.asyncio(loop_scope="session")
ORIGIN = "http://127.0.0.1:8080"


def test_counts_are_per_address_and_released() -> None:
    lim = IpLimits(connections=2, handshakes_per_s=1.0, burst=3, exempt_loopback=False)
    assert lim.admit("10.0.0.1", now=0) is None
    assert lim.admit("10.0.0.1", now=0) is None
    assert lim.admit("10.0.0.1", now=0) == "connections"
    assert lim.admit("10.0.0.2", now=0) is None
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.1", now=0) is None  # the third token of the burst
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.1", now=0) == "handshake_rate"
    assert lim.admit("10.0.0.1", now=1.0) is None  # a second later: one more token
    assert IpLimits(connections=0).admit("127.0.0.1") is None  # loopback exempt by default


def test_requests_without_a_socket_spend_the_handshake_budget_and_hold_no_slot() -> None:
    lim = IpLimits(connections=1, handshakes_per_s=1.0, burst=3, exempt_loopback=False)
    assert lim.admit("10.0.0.1", now=0) is None
    assert lim.take("10.0.0.1", now=0) is None  # a beacon: no open slot is counted
    assert lim.open == {"10.0.0.1": 1}
    assert lim.take("10.0.0.1", now=0) is None
    assert lim.take("10.0.0.1", now=0) == "address_rate"
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.1", now=0) == "handshake_rate"  # the same bucket, spent
    assert lim.take("10.0.0.2", now=0) is None
    assert lim.take("10.0.0.1", now=1.0) is None
    assert IpLimits(handshakes_per_s=0.0, burst=0.0).take("::1") is None  # loopback exempt


async def _gateway(stack, limits: IpLimits) -> tuple[Gateway, str]:
    gw = stack.side_gateway(ip_limits=limits)
    port = await gw.start("127.0.0.1", 0)
    return gw, f"ws://127.0.0.1:{port}/ws?site=demo"


async def _refusal(url: str, source: str = "127.0.0.1") -> dict:
    with pytest.raises(InvalidStatus) as exc:
        async with websockets.connect(url, origin=ORIGIN, local_addr=(source, 0)):
            pass
    assert exc.value.response.status_code == 429
    return json.loads(exc.value.response.body)


async def _welcome(ws, sid: str) -> dict:
    await ws.send(json.dumps({"t": "hello", "v": 1, "sid": sid, "consent": ["analytics"]}))
    return json.loads(await ws.recv())


async def test_concurrent_connection_limit(lifeline_stack) -> None:
    gw, url = await _gateway(lifeline_stack, IpLimits(2, 1000.0, 1000.0, exempt_loopback=False))
    try:
        async with contextlib.AsyncExitStack() as open_:
            a = await open_.enter_async_context(websockets.connect(url, origin=ORIGIN))
            await open_.enter_async_context(websockets.connect(url, origin=ORIGIN))
            assert (await _refusal(url))["code"] == "too_many_connections"
            assert gw.stats.ip_refused == 1
            # Another address is unaffected, and the open sockets keep working.
            async with websockets.connect(url, origin=ORIGIN, local_addr=("127.0.0.2", 0)) as b:
                assert (await _welcome(b, "iplim-other-0001"))["t"] == "welcome"
            assert (await _welcome(a, "iplim-first-0001"))["t"] == "welcome"
        # Closed sockets free their slots (the server sees the close, then counts down).
        async with websockets.connect(url, origin=ORIGIN) as c:
            assert (await _welcome(c, "iplim-again-0001"))["t"] == "welcome"
    finally:
        await gw.stop()


async def test_handshake_rate_limit(lifeline_stack) -> None:
    gw, url = await _gateway(lifeline_stack, IpLimits(100, 0.01, 2.0, exempt_loopback=False))
    try:
        for _ in range(2):
            async with websockets.connect(url, origin=ORIGIN):
                pass
        assert (await _refusal(url))["code"] == "handshake_rate"
        async with websockets.connect(url, origin=ORIGIN, local_addr=("127.0.0.2", 0)) as b:
            assert (await _welcome(b, "iplim-rate-0001"))["t"] == "welcome"
    finally:
        await gw.stop()


async def _post(source: str, url: str, body: dict) -> tuple[int, dict, aiohttp.ClientResponse]:
    """POST ``body`` from the local address ``source`` (another client on this machine)."""
    conn = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=conn) as http,
        http.post(url, data=json.dumps(body), headers={"Origin": ORIGIN}) as resp,
    ):
        return resp.status, await resp.json(), resp


async def test_beacons_and_data_requests_share_the_address_budget_of_handshakes(
    lifeline_stack,
) -> None:
    """One limiter: a socket, a beacon and a data request of one address spend one budget."""
    gw, url = await _gateway(lifeline_stack, IpLimits(100, 0.001, 3.0, exempt_loopback=False))
    http = TestServer(build_app(gw, url), host="127.0.0.1", port=0)
    await http.start_server()
    beacon_url = str(http.make_url("/beacon?site=demo"))
    access_url = str(http.make_url("/v1/visitor/access?site=demo"))
    sid = f"iplim-beacon-{time.monotonic_ns() % 10**9}"
    try:
        async with websockets.connect(url, origin=ORIGIN) as ws:  # 1: a handshake
            token = (await _welcome(ws, sid))["token"]

        def beacon(first: int, last: int) -> dict:
            now = int(time.time() * 1000)
            events = [
                {"type": "page_view", "seq": s, "ts": now, "path": f"/p{s}"}
                for s in range(first, last + 1)
            ]
            return {"sid": sid, "token": token, "now": now, "events": events}

        status, reply, _ = await _post("127.0.0.1", beacon_url, beacon(1, 2))  # 2
        assert (status, reply["acked"]) == (200, 2)
        status, doc, _ = await _post("127.0.0.1", access_url, {"sid": sid, "token": token})  # 3
        assert status == 200 and doc["sid"] == sid
        refused = gw.stats.ip_refused
        # The budget is spent: a beacon, a data request and a socket of this address are refused.
        status, reply, resp = await _post("127.0.0.1", beacon_url, beacon(3, 3))
        assert (status, reply["code"], reply["limit"]) == (429, "rate_limited", "address")
        assert resp.headers["Retry-After"] == "1"
        status, reply, _ = await _post("127.0.0.1", access_url, {"sid": sid, "token": token})
        assert (status, reply["code"], reply["limit"]) == (429, "rate_limited", "address")
        assert (await _refusal(url))["code"] == "handshake_rate"
        assert gw.stats.ip_refused == refused + 3
        assert (await gw.store.session_info("demo", sid)).seq == 2  # the refused beacon: nothing
        # Another address has its own budget.
        status, reply, _ = await _post("127.0.0.2", beacon_url, beacon(3, 4))
        assert (status, reply["acked"]) == (200, 4)
        status, _, _ = await _post("127.0.0.3", access_url, {"sid": sid, "token": token})
        assert status == 200
    finally:
        await http.close()
        await gw.stop()
