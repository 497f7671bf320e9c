"""OpenTelemetry tracing of the spine: one trace per traced frame, gateway -> shard -> Serve.

What is traced: a share ``LIFELINE_TRACE_SAMPLE`` (default 1 %) of events
frames, chosen at the gateway (the head), and **every frame whose events
trigger an intervention**, which the head cannot know. Tracing is on in a
process when that share is above 0 and an OTLP/HTTP endpoint is configured
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_EXPORTER_OTLP_ENDPOINT``
plus ``/v1/traces``); otherwise :func:`tracing_for` returns None and the hot
path pays one ``is None`` test per frame and per batch.

How the hot path stays cheap: the gateway and the shards already measure
when a frame was read, acknowledged, sent to its shard, and when a batch
was applied, scored and decided. Those spans are never opened live; they are
recorded *after the fact*, with their measured start and end times, only for
a frame that turned out to be traced (:meth:`Tracing.record`, which hands a
finished ``ReadableSpan`` to the span processor). A sampled frame gets its ids
at the head (a few microseconds, 1 % of frames); an unsampled one gets none,
and when its events trigger an intervention the shard makes up the trace's
ids and returns them with its reply, so the gateway records its own spans in
that same trace. An untraced frame costs the gateway one random draw.

The trace of a frame::

    lifeline.frame                      gateway: frame read -> intervention pushed (or reply)
      lifeline.gateway.append           frame read -> acknowledged (durable in Redis)
      lifeline.gateway.shard_call       the batch's call over the shard link
        lifeline.shard.batch            the shard handles the batch (W3C traceparent on the link)
          lifeline.shard.apply          events applied, feature rows made
          lifeline.shard.score          the batch's one XGBoost prediction
          lifeline.shard.decide         the policy; the decision's kind and iid as attributes
            lifeline.follow_up.nudge    the shard's call of Serve (live span; traceparent to Serve)
              lifeline.serve.nudge      NudgeWriter.write in its replica
                lifeline.serve.llm      the Messages API call
            lifeline.follow_up.recommend / lifeline.serve.recommend
      lifeline.gateway.push             the intervention frame written to the socket

Limits: the shard's spans time the whole batch the frame was part of (the
batch is scored in one call, so that is what the frame waited for). Spans
hold no session id, event content or text: site, counts, sequence numbers,
kinds and intervention ids only. Spans are batched by the SDK's
``BatchSpanProcessor`` (a few seconds); a process killed hard loses what it
had not sent.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SCOPE = InstrumentationScope("lifeline", "0.1.0")
PROPAGATOR = TraceContextTextMapPropagator()
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_IDS = RandomIdGenerator()

Carrier = dict[str, str]


@dataclass(frozen=True)
class TraceConfig:
    """What a process needs to trace: the head share and where spans go (picklable for Ray)."""

    sample: float = 0.0
    endpoint: str = ""

    @classmethod
    def of(cls, settings: Any) -> TraceConfig:
        return cls(float(settings.trace_sample), str(settings.trace_endpoint))

    @property
    def on(self) -> bool:
        return self.sample > 0.0 and bool(self.endpoint)


def _epoch_offset_ns() -> int:
    """time.time_ns() - perf_counter_ns(): turns this process's perf_counter readings into epoch time."""
    return time.time_ns() - time.perf_counter_ns()


class Tracing:
    """One process's tracing: the head share, a tracer for live spans, and after-the-fact recording.

    ``sample`` may be changed at run time (the gateway reads it per frame);
    only the gateway draws from it, everything downstream follows the
    trace context it is given.
    """

    def __init__(
        self, service: str, sample: float, exporter: SpanExporter, processor: SpanProcessor | None
    ) -> None:
        self.sample = sample
        self._draw = random.random  # bound once: this runs per frame
        self.resource = Resource.create({"service.name": service})
        self.processor = processor or BatchSpanProcessor(exporter)
        # Live spans (the follow-ups) go through a provider of our own, never the global one:
        # a Ray worker or a test process may host more than one of us.
        self.provider = TracerProvider(
            resource=self.resource,
            sampler=ParentBased(root=TraceIdRatioBased(sample), remote_parent_sampled=ALWAYS_ON),
            shutdown_on_exit=True,
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("lifeline")
        self._offset_ns = _epoch_offset_ns()

    # -- the head ---------------------------------------------------------------------

    def head(self) -> tuple[int, int, int] | None:
        """(trace id, root span id, shard-call span id) for a frame drawn into the sample, else None."""
        if self._draw() >= self.sample:
            return None
        return _IDS.generate_trace_id(), _IDS.generate_span_id(), _IDS.generate_span_id()

    # -- ids and context on the wire ----------------------------------------------------

    @staticmethod
    def new_span_id() -> int:
        return _IDS.generate_span_id()

    @staticmethod
    def new_trace_id() -> int:
        return _IDS.generate_trace_id()

    @staticmethod
    def traceparent(trace_id: int, span_id: int) -> str:
        """The W3C ``traceparent`` naming span ``span_id`` of trace ``trace_id`` (sampled)."""
        carrier: Carrier = {}
        ctx = trace.set_span_in_context(
            NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=SAMPLED))
        )
        PROPAGATOR.inject(carrier, context=ctx)
        return carrier["traceparent"]

    @staticmethod
    def parent_of(traceparent: str) -> SpanContext | None:
        """The span context a ``traceparent`` names, or None when it is malformed."""
        ctx = PROPAGATOR.extract({"traceparent": traceparent})
        sc = trace.get_current_span(ctx).get_span_context()
        return sc if sc.is_valid else None

    # -- after-the-fact spans ----------------------------------------------------------

    def epoch_ns(self, perf_s: float) -> int:
        """A ``time.perf_counter()`` reading of this process as epoch nanoseconds."""
        return int(perf_s * 1e9) + self._offset_ns

    def record(
        self,
        name: str,
        trace_id: int,
        span_id: int,
        parent_id: int | None,
        start_s: float,
        end_s: float,
        attributes: Mapping[str, Any] | None = None,
        remote_parent: bool = False,
    ) -> None:
        """Export a finished span with the given ids and perf_counter times (the retroactive path)."""
        parent = (
            SpanContext(trace_id, parent_id, is_remote=remote_parent, trace_flags=SAMPLED)
            if parent_id
            else None
        )
        self.processor.on_end(
            ReadableSpan(
                name,
                context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=SAMPLED),
                parent=parent,
                resource=self.resource,
                attributes=dict(attributes or {}),
                start_time=self.epoch_ns(start_s),
                end_time=self.epoch_ns(max(end_s, start_s)),
                instrumentation_scope=SCOPE,
            )
        )

    # -- live spans (off the hot path) ---------------------------------------------------

    @contextlib.contextmanager
    def span(self, name: str, carrier: Mapping[str, str] | None = None, **attributes: Any):
        """A live span, child of the context in ``carrier`` (W3C headers) or of the current one."""
        ctx = PROPAGATOR.extract(dict(carrier)) if carrier else None
        with self.tracer.start_as_current_span(name, context=ctx, attributes=attributes) as s:
            yield s

    @staticmethod
    def inject() -> Carrier:
        """The current span's context as W3C headers, to carry with a call."""
        carrier: Carrier = {}
        PROPAGATOR.inject(carrier)
        return carrier

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self.processor.force_flush(int(timeout_s * 1000))


@contextlib.contextmanager
def span(
    tracing: Tracing | None, name: str, carrier: Mapping[str, str] | None = None, **attrs: Any
) -> Iterator[Any]:
    """``tracing.span(...)``, or nothing at all when tracing is off or no trace was carried."""
    if tracing is None or not carrier:
        yield None
        return
    with tracing.span(name, carrier, **attrs) as s:
        yield s


_BY_PROCESS: dict[tuple[str, TraceConfig], Tracing] = {}


def tracing_for(
    service: str, config: TraceConfig | None, exporter: SpanExporter | None = None
) -> Tracing | None:
    """This process's :class:`Tracing` for ``service``, or None when tracing is off.

    One per (service, config) and process, so the shards of a benchmark that
    share a process, or stacks a test starts one after the other, share one
    exporter. ``exporter``: instead of OTLP/HTTP to ``config.endpoint`` (tests).
    """
    if config is None or config.sample <= 0.0 or (exporter is None and not config.endpoint):
        return None
    key = (service, config)
    tr = _BY_PROCESS.get(key)
    if tr is None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint)
        tr = _BY_PROCESS[key] = Tracing(service, config.sample, exporter, None)
    return tr
