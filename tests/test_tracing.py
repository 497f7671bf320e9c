"""OpenTelemetry traces end to end: gateway -> shard actor -> Serve replica, on a real stack.

The stack has tracing on and exports every process's spans over OTLP/HTTP to
a receiver in this process (serve/dev/otlp_sink.py), which decodes them into
the SDK's ``InMemorySpanExporter``: the gateway (this process), the shard
actors and the Serve replicas (processes of their own) all land there. A
struggling visitor's intervention must leave one trace whose spans link up
from the frame to the LLM call, whether or not the head drew the frame; a
calm frame must leave a trace only when drawn.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
import pytest_asyncio

from cluster.redis_server import delete_prefix
from serve.dev.llm_stub import StubLLM
from serve.dev.otlp_sink import OtlpSink
from serve.dev.pyclient import LifelineClient
from training.simulator import scripted

pytestmark = pytest.mark.asyncio(loop_scope="module")

ORIGIN = "http://127.0.0.1:8080"
CONSENT = ("necessary", "analytics", "personalization")

# One strong signal is enough to intervene, never risk alone (so calm events stay calm).
SITES = """
[sites.demo]
origins = ["http://127.0.0.1:*"]
[sites.demo.policy]
min_signals = 1
risk_threshold = 0.99
holdout = 0.0
"""

GATEWAY_SPANS = ("lifeline.gateway.append", "lifeline.gateway.shard_call", "lifeline.gateway.push")
SHARD_STEPS = ("lifeline.shard.apply", "lifeline.shard.score", "lifeline.shard.decide")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced(ray_cluster, redis_url, tmp_path_factory):
    from cluster.config import Settings
    from cluster.stack import Stack

    sites = tmp_path_factory.mktemp("tracing") / "sites.toml"
    sites.write_text(SITES)
    sink = await OtlpSink().start()
    stub = StubLLM(api_key="test-key", seed=3)
    await stub.start()
    prefix = f"lltest-trace-{uuid.uuid4().hex[:8]}:"
    settings = Settings(
        redis_url=redis_url,
        prefix=prefix,
        ws_port=0,
        http_port=0,
        console_port=0,
        sites_file=str(sites),
        anthropic_api_key="test-key",
        anthropic_base_url=stub.url,
        trace_sample=1.0,
        trace_endpoint=sink.url,
    )
    stack = await Stack(settings).start(
        with_serve=True, shard_name_suffix=f"-{uuid.uuid4().hex[:6]}"
    )
    tracing = stack.gateway.pipeline.tracing
    assert tracing is not None, "tracing is on with a share above 0 and an endpoint"
    tracing.sample = 0.0  # the head draws nothing until a test says otherwise
    yield stack, sink
    await stack.stop()
    await stub.close()
    await sink.stop()
    delete_prefix(redis_url, prefix)


def by_trace(spans) -> dict[int, list]:
    out = defaultdict(list)
    for s in spans:
        out[s.context.trace_id].append(s)
    return out


def service(span) -> str:
    return span.resource.attributes["service.name"]


def one(spans, name: str):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {len(found)} spans"
    return found[0]


def parent_is(child, parent) -> None:
    assert child.parent is not None, f"{child.name} has no parent"
    assert child.parent.span_id == parent.context.span_id, f"{child.name} under {parent.name}?"
    assert child.context.trace_id == parent.context.trace_id


async def struggle(stack) -> tuple[LifelineClient, dict]:
    sid = f"t-trace-{uuid.uuid4().hex[:10]}"
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN, consent=CONSENT)
    assert (await client.connect())["t"] == "welcome"
    events = scripted("struggling", client.sid, 0)
    now = int(time.time() * 1000)
    for i in range(0, len(events), 4):
        await client.send_events([dict(e, ts=now) for e in events[i : i + 4]])
    iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=20)
    await client.wait_for(lambda f: f["t"] == "update" and f["iid"] == iv["iid"], timeout=10)
    return client, iv


def intervention_trace(spans, iid: str) -> list | None:
    """The spans of the trace whose decide span made intervention ``iid``, once all have arrived."""
    for trace in by_trace(spans).values():
        decide = [s for s in trace if s.name == "lifeline.shard.decide"]
        if not decide or iid not in (decide[0].attributes.get("lifeline.iids") or ()):
            continue
        names = {s.name for s in trace}
        if {"lifeline.frame", "lifeline.gateway.push", "lifeline.serve.llm"} <= names:
            return trace
    return None


def check_intervention_trace(trace: list, sampled: bool) -> None:
    frame = one(trace, "lifeline.frame")
    assert frame.parent is None and service(frame) == "lifeline-gateway"
    assert frame.attributes["lifeline.triggered"] is True
    assert frame.attributes["lifeline.sampled"] is sampled
    gw = {name: one(trace, name) for name in GATEWAY_SPANS}
    for s in gw.values():
        parent_is(s, frame)
        assert service(s) == "lifeline-gateway"
    # The ack comes before the shard call, the push after it; all inside the frame's span.
    append, call, push = gw.values()
    assert frame.start_time == append.start_time <= append.end_time <= call.start_time
    assert call.end_time <= push.start_time <= push.end_time <= frame.end_time
    # Across the link: the shard's batch span is a child of the gateway's call span.
    batch = one(trace, "lifeline.shard.batch")
    parent_is(batch, call)
    assert service(batch) == "lifeline-shard"
    steps = [one(trace, name) for name in SHARD_STEPS]
    for s in steps:
        parent_is(s, batch)
    apply, score, decide = steps
    assert apply.end_time <= score.start_time <= score.end_time <= decide.start_time
    assert decide.attributes["lifeline.decisions"] >= 1
    # Into Serve: the follow-up call, the replica's span, the LLM call, each under the last.
    follow = one(trace, "lifeline.follow_up.nudge")
    parent_is(follow, decide)
    assert service(follow) == "lifeline-shard"
    nudge = one(trace, "lifeline.serve.nudge")
    parent_is(nudge, follow)
    assert service(nudge) == "lifeline-serve"
    assert nudge.attributes["lifeline.source"] in ("llm", "cache")
    llm = one(trace, "lifeline.serve.llm")
    parent_is(llm, nudge)
    # Nothing that identifies the visitor rides along.
    for s in trace:
        assert all("sid" not in k for k in s.attributes), s.name


async def test_unsampled_intervention_is_traced_and_calm_frames_are_not(traced):
    """Head share 0: the retroactive path. The intervention's trace is complete; nothing else is."""
    stack, sink = traced
    stack.gateway.pipeline.tracing.sample = 0.0
    sink.exporter.clear()
    client, iv = await struggle(stack)
    trace = await sink.wait_for(lambda spans: intervention_trace(spans, iv["iid"]), timeout=30)
    check_intervention_trace(trace, sampled=False)
    # The struggling journey's other frames (drawn: none, triggering: one or two) left no trace:
    # each process exports in order, so their spans would have come before the trace above.
    frames = [s for s in sink.spans() if s.name == "lifeline.frame"]
    assert frames and all(f.attributes["lifeline.triggered"] for f in frames)
    assert len(frames) < -(-len(scripted("struggling", client.sid, 0)) // 4)
    batches = [s for s in sink.spans() if s.name == "lifeline.shard.batch"]
    triggered = {f.context.trace_id for f in frames}
    assert {b.context.trace_id for b in batches} <= triggered
    await client.close()


async def test_sampled_intervention_trace(traced):
    """Head share 1: the ids travel from the head; the same spans, marked sampled."""
    stack, sink = traced
    stack.gateway.pipeline.tracing.sample = 1.0
    try:
        client, iv = await struggle(stack)
        trace = await sink.wait_for(lambda spans: intervention_trace(spans, iv["iid"]), timeout=30)
    finally:
        stack.gateway.pipeline.tracing.sample = 0.0
    check_intervention_trace(trace, sampled=True)
    await client.close()


def calm_trace(spans, last_seq: int) -> list | None:
    """The trace of an untriggered frame ending at ``last_seq``, once its shard spans arrived."""
    for trace in by_trace(spans).values():
        frames = [s for s in trace if s.name == "lifeline.frame"]
        if not frames or frames[0].attributes["lifeline.triggered"]:
            continue
        if frames[0].attributes["lifeline.last_seq"] != last_seq:
            continue
        if any(s.name == "lifeline.shard.decide" for s in trace):
            return trace
    return None


async def calm(stack, events: int) -> LifelineClient:
    """A new session sends ``events`` calm events in one frame, and they are scored."""
    client = LifelineClient(stack.ws_url, "demo", f"t-calm-{uuid.uuid4().hex[:10]}", ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    now = int(time.time() * 1000)
    seqs = range(1, events + 1)
    await client.send_events(
        [{"type": "page_view", "path": "/", "page_type": "home", "seq": s, "ts": now} for s in seqs]
    )
    await stack.gateway.wait_scored(client.sid, events)
    return client


async def test_calm_frame_traced_only_when_drawn(traced):
    """An untriggered frame: no trace at share 0, a whole gateway + shard trace at share 1."""
    stack, sink = traced
    tracing = stack.gateway.pipeline.tracing
    tracing.sample = 0.0
    assert tracing.flush()  # the earlier tests' gateway spans are out before the slate is wiped
    sink.exporter.clear()
    quiet = await calm(stack, events=2)
    tracing.sample = 1.0
    try:
        drawn = await calm(stack, events=3)
    finally:
        tracing.sample = 0.0
    trace = await sink.wait_for(lambda spans: calm_trace(spans, 3), timeout=30)
    frame = one(trace, "lifeline.frame")
    assert frame.attributes["lifeline.sampled"] is True
    assert frame.attributes["lifeline.first_seq"] == 1
    call = one(trace, "lifeline.gateway.shard_call")
    parent_is(call, frame)
    parent_is(one(trace, "lifeline.gateway.append"), frame)
    batch = one(trace, "lifeline.shard.batch")
    parent_is(batch, call)
    decide = one(trace, "lifeline.shard.decide")
    parent_is(decide, batch)
    assert decide.attributes["lifeline.decisions"] == 0
    assert not [s for s in trace if s.name == "lifeline.gateway.push"]
    # The undrawn frame (seqs 1-2) left nothing: it was scored before the drawn one was
    # sent, and the gateway exports in order.
    frames = [s for s in sink.spans() if s.name == "lifeline.frame"]
    assert [f.attributes["lifeline.last_seq"] for f in frames] == [3]
    await quiet.close()
    await drawn.close()


async def test_tracing_is_off_without_a_share_or_an_endpoint():
    from cluster.config import _traces_endpoint
    from cluster.tracing import TraceConfig, tracing_for

    assert tracing_for("t", TraceConfig(0.0, "http://127.0.0.1:4318/v1/traces")) is None
    assert tracing_for("t", TraceConfig(0.01, "")) is None
    assert tracing_for("t", None) is None
    # As the SDK reads them: the traces URL as is, else the base plus /v1/traces.
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}
    assert _traces_endpoint(base) == "http://c:4318/v1/traces"
    both = base | {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/x"}
    assert _traces_endpoint(both) == "http://t:9/x"
    assert _traces_endpoint({}) == ""


async def test_traceparent_round_trip_and_malformed_context():
    from cluster.tracing import Tracing

    tp = Tracing.traceparent(0x1234, 0x56)
    assert tp == "00-00000000000000000000000000001234-0000000000000056-01"
    parent = Tracing.parent_of(tp)
    assert parent is not None and (parent.trace_id, parent.span_id) == (0x1234, 0x56)
    # A malformed context starts a trace of its own instead of failing the batch.
    assert Tracing.parent_of("00-zz-yy-01") is None
    assert Tracing.parent_of("") is None
