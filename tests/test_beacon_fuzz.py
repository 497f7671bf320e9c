"""Property-based fuzzing of ``POST /beacon``, over the real HTTP listener of the real stack.

Any body (bytes, JSON of any nesting and type, maps with odd field types,
any event lists, several beacons in a row for one session or others) must
get one of the documented answers (docs/PROTOCOL.md, Beacon) and never a
500; an answer's ``acked`` never covers an event that is neither in the log
nor refused by name; and no beacon changes the log of a session it does not
name (nor shortens its own). Each beacon is a real request through the
gateway's pipeline to Redis, so the example count stays modest (the file runs
in well under 40 s); the frame path is fuzzed in tests/test_fuzz_gateway.py.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.dev.pyclient import LifelineClient
from tests.test_fuzz_gateway import EDGE_NUMBERS, EVENT_TYPES, FIELD_NAMES, VALUES

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"
PROTOCOL = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"
# The error codes docs/PROTOCOL.md's table lists, and the beacon's own (its section).
DOCUMENTED_CODES = set(re.findall(r"`([a-z_]+)`", "".join(
    line.split("|")[1] for line in PROTOCOL.read_text().splitlines() if line.startswith("| `")
))) | {"forbidden"}  # fmt: skip
STATUSES = {200, 400, 403, 409, 413, 429, 503}  # the Beacon section's answers


class Bench:
    """The fuzzed sessions and a bystander with events (any of them may be a beacon's target)."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.tokens: dict[str, str] = {}
        self.refused: dict[str, set[int]] = {}  # per session: seqs a reply refused by name
        self.http: aiohttp.ClientSession | None = None
        self.ready = False

    async def start(self) -> None:
        if self.ready:
            return
        self.http = aiohttp.ClientSession()
        for tag in ("a", "b", "by"):
            sid = f"t-bfz-{tag}-{uuid.uuid4().hex[:10]}"
            client = LifelineClient(self.stack.ws_url, "demo", sid, ORIGIN)
            assert (await client.connect())["t"] == "welcome"
            if tag == "by":  # the bystander has events of its own, which must stay as they are
                now = int(time.time() * 1000)
                await client.send_events(
                    [{"type": "page_view", "seq": s, "ts": now, "path": f"/p{s}"} for s in (1, 2)]
                )
                await client.wait_acked(2)
            await client.close()
            self.tokens[sid] = client.token or ""
            self.refused[sid] = set()
        self.ready = True

    async def logs(self) -> dict[str, list[dict[str, Any]]]:
        store = self.stack.gateway.store
        return {sid: await store.read_events("demo", sid) for sid in self.tokens}


@pytest.fixture(scope="module")
def bench(lifeline_stack: Any) -> Bench:
    return Bench(lifeline_stack)


# An event list is drawn before the session's stored seq is known (a drawing must not
# depend on outside state): ``("next", n)`` becomes n page views numbered on from it,
# anything else is sent as drawn.
EVENT_LISTS = st.one_of(
    st.tuples(st.just("next"), st.integers(min_value=0, max_value=4)),
    st.tuples(st.just("next"), st.integers(min_value=1, max_value=4)),
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(EVENT_TYPES),
                    "seq": st.one_of(st.integers(min_value=-1, max_value=3), EDGE_NUMBERS, VALUES),
                    "ts": st.one_of(VALUES, EDGE_NUMBERS),
                },
                optional={name: VALUES for name in FIELD_NAMES},
            ),
            VALUES,
        ),
        max_size=4,
    ),
    VALUES,
)


def resolve(events: Any, stored: int) -> Any:
    """A drawn event list with ``("next", n)`` made the n events after ``stored``."""
    if isinstance(events, tuple):
        now = int(time.time() * 1000)
        return [
            {"type": "page_view", "seq": s, "ts": now, "path": f"/f{s}"}
            for s in range(stored + 1, stored + 1 + events[1])
        ]
    return events


@st.composite
def beacon(draw: st.DrawFn, sids: list[str], tokens: list[str]) -> Callable[[dict], bytes]:
    """One beacon's body, aimed at one of the bench's sessions (or at none), as a function of
    the sessions' stored seqs."""
    kind = draw(st.sampled_from(["map", "map", "map", "json", "bytes", "deep", "huge"]))
    if kind == "bytes":
        raw = draw(st.binary(max_size=128))
        return lambda seqs: raw
    if kind == "json":
        raw = json.dumps(draw(VALUES)).encode()
        return lambda seqs: raw
    if kind == "deep":
        depth = draw(st.integers(min_value=10, max_value=40))
        raw = ('{"sid":' * depth + "1" + "}" * depth).encode()
        return lambda seqs: raw
    # Mostly right where it matters (sid, its token, a good clock), so that many reach
    # the append; an odd value in one field, or a field missing, otherwise.
    i = draw(st.integers(min_value=0, max_value=len(sids) - 1))
    sid, token = sids[i], tokens[i]
    body: dict[str, Any] = {"sid": sid, "token": token, "now": None}
    events = draw(EVENT_LISTS)
    how = draw(st.sampled_from(["right", "right", "odd", "missing"]))
    field = draw(st.sampled_from(["sid", "token", "now", "events"]))
    odd = {
        "sid": VALUES,
        "token": st.one_of(st.sampled_from(tokens), VALUES),
        "now": st.one_of(EDGE_NUMBERS, VALUES),
        "events": VALUES,
    }
    if how == "odd":
        body[field] = draw(odd[field])
    pad = "x" * 70_000 if kind == "huge" else None

    def build(seqs: dict[str, int]) -> bytes:
        out = dict(body, events=resolve(events, seqs[sid]))
        if how == "odd" and field == "events":
            out["events"] = body["events"]
        if out["now"] is None and not (how == "odd" and field == "now"):
            out["now"] = int(time.time() * 1000)
        if how == "missing":
            del out[field]
        if pad is not None:
            out["pad"] = pad
        return json.dumps(out).encode()

    return build


async def send(bench: Bench, raw: bytes) -> None:
    """POST one beacon and check its answer against the logs before and after it."""
    assert bench.http is not None
    gw = bench.stack.gateway
    before = await bench.logs()
    url = f"{bench.stack.http_url}/beacon?site=demo"
    async with bench.http.post(url, data=raw, headers={"Origin": ORIGIN}) as resp:
        status, text = resp.status, await resp.text()
    assert status in STATUSES, (status, text)
    reply = json.loads(text)  # every answer is JSON
    assert isinstance(reply, dict), reply
    if "code" in reply:
        assert reply["code"] in DOCUMENTED_CODES, reply
        assert status != 200, reply
    else:
        assert status in (200, 409, 503) and isinstance(reply["acked"], int), (status, reply)
    after = await bench.logs()
    try:
        named = json.loads(raw).get("sid")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        named = None
    for sid, log in after.items():
        if sid != named or status != 200:
            # Only a 200 may have added (a 409/503 may have too: its events then are acked
            # by the next beacon), and only to the session it names.
            assert log == before[sid] or (sid == named and status in (409, 503)), (sid, status)
        assert log[: len(before[sid])] == before[sid], "a beacon never shortens a log"
        for e in log:
            json.dumps(e, allow_nan=False)  # every stored value is finite JSON
    if "acked" in reply and isinstance(named, str) and named in after:
        refused = bench.refused[named]
        refused.update(e["seq"] for e in reply.get("errors", ()) if isinstance(e.get("seq"), int))
        stored = {e["seq"] for e in after[named]}
        for seq in range(1, reply["acked"] + 1):
            assert seq in stored or seq in refused, (seq, reply, after[named])
    assert gw.loops.healthy


KNOWN = {
    "over 64 KiB": b'{"sid":"' + b"x" * 70_000 + b'"}',
    "NaN now": b'{"sid":"abcdefgh","token":"t","now":NaN,"events":[]}',
    "not UTF-8": b"\xff\xfe{}",
    "nested past the limit": b"[" * 40 + b"]" * 40,
    "an array": b"[]",
    "empty": b"",
}


@pytest.mark.parametrize("name", list(KNOWN))
async def test_bodies_that_are_refused_with_a_documented_answer(bench: Bench, name: str) -> None:
    await bench.start()
    await send(bench, KNOWN[name])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_any_beacons_get_documented_answers_and_touch_only_their_session(
    bench: Bench, data: st.DataObject
) -> None:
    await bench.start()
    store = bench.stack.gateway.store
    sids = list(bench.tokens)
    builds = data.draw(
        st.lists(beacon(sids, [bench.tokens[s] for s in sids]), min_size=1, max_size=3)
    )
    for build in builds:  # one after the other: the same session's, or others'
        seqs = {sid: (await store.session_info("demo", sid)).seq for sid in sids}
        await send(bench, build(seqs))


async def test_zz_the_fuzzed_sessions_took_events(bench: Bench) -> None:
    """The run reached the append path, not only the refusals (run after the fuzzing)."""
    logs = await bench.logs()
    assert bench.http is not None
    await bench.http.close()
    grown = [sid for sid, log in logs.items() if "-by-" not in sid and log]
    assert grown, "no fuzzed beacon was ever stored: the strategies miss the append path"
