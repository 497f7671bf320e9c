"""Property-based fuzzing of the gateway's frame path, over a real socket to the real stack.

Any frame (JSON or msgpack, any values, any numbers, any nesting, or bytes
that are neither), sent on a session's socket after its hello, must leave
the gateway as it was: no exception escapes a callback or a loop, nothing
that is not in the event log is acknowledged, and no other session changes.
Each example costs a round trip, so the example count stays modest; the
protocol core is fuzzed much harder in tests/test_fuzz_protocol.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.dev.pyclient import LifelineClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"

# Numbers at and past every edge the system stores: 64-bit limits, floats that
# JSON cannot carry, and values msgpack cannot pack.
EDGE_NUMBERS = st.sampled_from(
    [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64 - 1, 2**64, 2**70, -(2**70)]
    + [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, 1e999]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    EDGE_NUMBERS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
EVENT_TYPES = ["click", "add_to_cart", "page_view", "mouse", "purchase", "custom", "nope"]
FIELD_NAMES = ["qty", "price", "x", "y", "turns", "items", "props", "value"]


def event(seq_hint: st.SearchStrategy) -> st.SearchStrategy:
    """An event-like map: real field names with hostile values, plus anything else."""
    return st.fixed_dictionaries(
        {
            "type": st.sampled_from(EVENT_TYPES),
            "seq": seq_hint,
            "ts": st.one_of(VALUES, EDGE_NUMBERS),
        },
        optional={name: VALUES for name in FIELD_NAMES},
    )


def frames(sid: str) -> st.SearchStrategy:
    seqs = st.one_of(st.integers(min_value=1, max_value=6), EDGE_NUMBERS, VALUES)
    events = st.fixed_dictionaries(
        {"t": st.just("events"), "events": st.lists(event(seqs), max_size=5)},
        optional={
            "sid": st.sampled_from([sid, "x" * 8, ""]),
            "now": st.one_of(VALUES, EDGE_NUMBERS),
        },
    )
    other = st.fixed_dictionaries(
        {"t": st.sampled_from(["ping", "consent", "hello", "bogus", None])},
        optional={"sid": VALUES, "consent": VALUES, "token": VALUES, "v": VALUES},
    )
    return st.one_of(events, other, VALUES)


def encode(frame, how: str) -> str | bytes | None:
    """The frame as a JSON text frame, a msgpack binary frame, or None if it has no such form."""
    try:
        if how == "json":
            return json.dumps(frame)  # NaN and Infinity as JSON's non-standard tokens
        return msgpack.packb(frame)
    except (ValueError, TypeError, OverflowError):
        return None


class Bench:
    """One fuzzed session and one bystander, connected for the whole run."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.bystander: LifelineClient | None = None
        self.before: list[dict] = []

    async def fresh(self, tag: str, binary: bool) -> LifelineClient:
        client = LifelineClient(
            self.stack.ws_url, "demo", f"t-fz-{tag}-{uuid.uuid4().hex[:10]}", ORIGIN, binary=binary
        )
        assert (await client.connect())["t"] == "welcome"
        return client


@pytest.fixture(scope="module")
def bench(lifeline_stack) -> Bench:
    return Bench(lifeline_stack)


async def check_frame(bench: Bench, how: str, message: str | bytes | None) -> None:
    """Send ``message`` on a fresh session's socket and check that it harmed nothing."""
    stack = bench.stack
    gw = stack.gateway
    store = gw.store
    loop = asyncio.get_running_loop()
    escaped: list[dict] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
    try:
        if bench.bystander is None:
            bench.bystander = await bench.fresh("bystander", True)
            now = int(time.time() * 1000)
            await bench.bystander.send_events(
                [{"type": "page_view", "seq": s, "ts": now, "path": f"/p{s}"} for s in (1, 2, 3)]
            )
            await bench.bystander.wait_acked(3)
            bench.before = await store.read_events("demo", bench.bystander.sid)
        client = await bench.fresh("sess", binary=how == "msgpack")
        if callable(message):
            message = message(client.sid)
        if message is not None:
            await client.send_raw(message)
        failures_before = dict(gw.loops.counts)
        try:
            await client.roundtrip(timeout=10)  # everything the frame caused has arrived
        except ConnectionError:
            # Closed by the server for a reason it gives: never cut without a close frame.
            assert client.closed is not None and client.closed[0] not in (None, 1006), client.closed
        acked = client.acked
        stored = [e["seq"] for e in await store.read_events("demo", client.sid)]
        # Nothing unstored is acknowledged: every acked number is stored or was refused
        # with an error frame naming it.
        refused = {f.get("seq") for f in client.of_type("error")}
        for seq in range(1, acked + 1):
            assert seq in stored or seq in refused, (seq, stored, refused, client.frames)
        for e in await store.read_events("demo", client.sid):
            json.dumps(e, allow_nan=False)  # every stored value is finite JSON
            msgpack.packb(e)
        assert await store.read_events("demo", bench.bystander.sid) == bench.before
        assert gw.loops.counts == failures_before and gw.loops.healthy
        assert escaped == [], escaped
        await client.close()
    finally:
        loop.set_exception_handler(previous_handler)


def _events_json(sid: str, body: str) -> str:
    return f'{{"t":"events","sid":"{sid}","events":[{body}]}}'


NOW = int(time.time() * 1000)
CART = {"type": "add_to_cart", "item": "x", "ts": NOW}
# Frames that once broke the gateway: a number past 64 bits, non-finite numbers, deep nesting,
# a token that is not ASCII.
KNOWN = {
    "qty 2**70 in JSON": (
        "json",
        lambda sid: json.dumps(
            {"t": "events", "sid": sid, "events": [{**CART, "seq": 1, "qty": 2**70}]}
        ),
    ),
    "two qty 2**64-1 in msgpack": (
        "msgpack",
        lambda sid: msgpack.packb(
            {
                "t": "events",
                "sid": sid,
                "events": [{**CART, "seq": s, "qty": 2**64 - 1} for s in (1, 2)],
            }
        ),
    ),
    "NaN ts": (
        "json",
        lambda sid: _events_json(sid, '{"type":"scroll","seq":1,"ts":NaN,"depth":1,"dir":"up"}'),
    ),
    "Infinity now": (
        "json",
        lambda sid: f'{{"t":"events","sid":"{sid}","now":Infinity,"events":[]}}',
    ),
    "1e999 ts": (
        "json",
        lambda sid: _events_json(sid, '{"type":"scroll","seq":1,"ts":1e999,"depth":1,"dir":"up"}'),
    ),
    "60,000 [": ("json", lambda sid: "[" * 60_000),
    "deep msgpack": ("msgpack", lambda sid: b"\x91" * 60_000 + b"\xc0"),
    "non-ASCII token": (
        "json",
        lambda sid: json.dumps(
            {"t": "hello", "v": 1, "sid": sid, "token": "é" * 32, "consent": ["analytics"]}
        ),
    ),
}


@pytest.mark.parametrize("name", list(KNOWN))
async def test_frames_that_once_broke_the_gateway(bench: Bench, name: str) -> None:
    how, message = KNOWN[name]
    await check_frame(bench, how, message)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_any_frame_leaves_the_gateway_and_other_sessions_as_they_were(
    bench: Bench, data
) -> None:
    how = data.draw(st.sampled_from(["json", "msgpack", "raw"]))
    if how == "raw":
        await check_frame(bench, how, data.draw(st.binary(max_size=64)))
        return
    await check_frame(bench, how, lambda sid: encode(data.draw(frames(sid)), how))
