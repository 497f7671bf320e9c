"""A local OTLP/HTTP traces receiver: spans that Ray actors and Serve replicas export, in one list.

For tests and development. The processes of a stack each export their
spans over OTLP/HTTP (protobuf, ``POST /v1/traces``); this server decodes
them back into the SDK's ``ReadableSpan`` and hands them to an
``InMemorySpanExporter``, so a test can read every process's spans as if
they had been recorded in its own. Listens on loopback; keeps everything
in memory; no authentication (it is not a collector).
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable, Sequence

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags


def _value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    return getattr(v, kind) if kind else None


def _attributes(kvs: Sequence[KeyValue]) -> dict[str, object]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[ReadableSpan]:
    """The spans of one OTLP/HTTP protobuf export request."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = Resource(_attributes(rs.resource.attributes))
        for ss in rs.scope_spans:
            scope = InstrumentationScope(ss.scope.name, ss.scope.version or None)
            for sp in ss.spans:
                trace_id = int.from_bytes(sp.trace_id, "big")
                flags = TraceFlags(sp.flags & 0xFF)
                parent = (
                    SpanContext(trace_id, int.from_bytes(sp.parent_span_id, "big"), True, flags)
                    if sp.parent_span_id
                    else None
                )
                out.append(
                    ReadableSpan(
                        sp.name,
                        context=SpanContext(
                            trace_id, int.from_bytes(sp.span_id, "big"), False, flags
                        ),
                        parent=parent,
                        resource=resource,
                        attributes=_attributes(sp.attributes),
                        start_time=sp.start_time_unix_nano,
                        end_time=sp.end_time_unix_nano,
                        instrumentation_scope=scope,
                    )
                )
    return out


def count_spans(body: bytes) -> int:
    """How many spans one OTLP/HTTP protobuf export request carries (parsed, nothing kept)."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


class OtlpSink:
    """``await sink.start()``; point ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` at ``sink.url``.

    ``keep=False``: only count the spans (``received``), as a cheap stand-in
    collector for benchmarks.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: bool = True) -> None:
        self.host = host
        self.port = port
        self.keep = keep
        self.exporter = InMemorySpanExporter()
        self.requests = 0
        self.received = 0
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/traces"

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            spans = decode(body) if self.keep else []
            self.received += len(spans) if self.keep else count_spans(body)
        except Exception as exc:  # malformed: refused as a collector would
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)
        self.requests += 1
        if spans:
            self.exporter.export(spans)
        self._arrived.set()
        self._arrived = asyncio.Event()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_for(
        self, check: Callable[[tuple[ReadableSpan, ...]], object], timeout: float = 30.0
    ) -> object:
        """Wait until ``check(spans)`` is truthy (re-checked as each export arrives); returns it."""

        async def until() -> object:
            while True:
                arrived = self._arrived  # armed before checking, so no export slips between
                found = check(self.spans())
                if found:
                    return found
                await arrived.wait()

        return await asyncio.wait_for(until(), timeout)

    async def start(self) -> OtlpSink:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
