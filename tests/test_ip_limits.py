"""Per-address socket limits (serve/edge/ip_limits.py) on a real gateway, over real sockets.

A side gateway over the shared stack counts loopback too (the default exempts
it); 127.0.0.2 is another address on this machine, so another client.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from serve.edge.gateway import Gateway
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
