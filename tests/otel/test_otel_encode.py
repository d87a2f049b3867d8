"""The fast OTLP span encoder writes exactly the bytes the exporter package's encoder does, and
routegate's exporters deliver them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.otel.encode import (
    FastGrpcSpanExporter,
    FastHttpSpanExporter,
    SpanEncoder,
    encode_spans,
)
from tests.conftest import pool_config
from tests.otel.otel_harness import traced_gateway
from tests.otel.otlp_receivers import grpc_receiver, http_receiver


def recorded(resource: Resource, limits: SpanLimits | None = None) -> tuple[
        TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def assorted_spans() -> list[ReadableSpan]:
    spans: list[ReadableSpan] = []
    first, exporter = recorded(Resource.create({"service.name": "svc", "k": 7}))
    tracer = first.get_tracer("scope-a", "1.2.3", schema_url="https://example.com/s")
    remote = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                         trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "v1"), ("other", "x")]))
    with tracer.start_as_current_span("parent", context=set_span_in_context(
            NonRecordingSpan(remote)), kind=SpanKind.SERVER, attributes={
                "str": "value", "unicode": "héllo ✓", "empty": "", "bool": True, "false": False,
                "int": 42, "negative": -5, "big": 2**62, "zero": 0, "float": 0.25,
                "negfloat": -1e-9, "strs": ("a", "b"), "ints": (1, -2, 3), "floats": (0.5,),
                "bools": (True, False), "none_seq": ()}) as parent:
        parent.add_event("fallback", {"from": "cheap", "index": 1})
        parent.add_event("bare")
        parent.set_status(Status(StatusCode.ERROR, "all attempts failed"))
        for kind in (SpanKind.CLIENT, SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
            with tracer.start_as_current_span(f"child {kind.name}", kind=kind) as child:
                child.set_attribute("gen_ai.usage.input_tokens", 12)
                child.set_status(Status(StatusCode.OK))
    other_scope = first.get_tracer("scope-b")
    other_scope.start_span("no attributes").end()
    spans += exporter.get_finished_spans()
    # A second resource with attribute limits (dropped counts are encoded too).
    second, exporter2 = recorded(Resource.create({"service.name": "other"}, schema_url="https://s"),
                                 SpanLimits(max_span_attributes=2, max_events=1,
                                            max_event_attributes=1))
    span = second.get_tracer("scope-c").start_span("limited", attributes={"a": 1, "b": 2, "c": 3})
    span.add_event("e1", {"x": 1, "y": 2})
    span.add_event("e2")
    span.end()
    spans += exporter2.get_finished_spans()
    return spans


def test_byte_identical_to_the_exporter_packages_encoding() -> None:
    spans = assorted_spans()
    expected = official(spans).SerializePartialToString()
    assert encode_spans(spans) == expected
    encoder = SpanEncoder()
    assert encoder.encode(spans) == expected
    assert encoder.encode(spans) == expected  # again, from its caches
    assert encoder.encode(spans[:1]) == official(spans[:1]).SerializePartialToString()
    assert encode_spans([]) == official([]).SerializePartialToString() == b""


@pytest.fixture
def gateway_spans() -> Iterator[list[ReadableSpan]]:
    """The spans of real requests: auto, streamed, a fallback and a total failure."""
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai")
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b, \
            traced_gateway(pool_config({"a": url_a, "b": url_b})) as tg:
        url = tg.url + "/v1/chat/completions"
        messages = [{"role": "user", "content": "Hello there"}]
        httpx.post(url, json={"model": "auto", "messages": messages}, timeout=15)
        httpx.post(url, json={"model": "cheap", "stream": True, "messages": messages}, timeout=15)
        first.inject(Fault.status(500), times=2)  # and its same-model retry: a fallback
        httpx.post(url, json={"model": "cheap", "messages": messages}, timeout=15)
        first.set_default(Fault.status(503))
        second.set_default(Fault.status(500))
        httpx.post(url, json={"model": "cheap", "messages": messages}, timeout=15)
        yield tg.wait_requests(4)


def test_gateway_spans_encode_identically(gateway_spans: list[ReadableSpan]) -> None:
    expected = official(gateway_spans).SerializePartialToString()
    assert encode_spans(gateway_spans) == expected
    decoded = ExportTraceServiceRequest.FromString(encode_spans(gateway_spans))
    assert sum(len(s.spans) for r in decoded.resource_spans for s in r.scope_spans) == \
        len(gateway_spans)


def test_fast_http_exporter_delivers(gateway_spans: list[ReadableSpan]) -> None:
    with http_receiver() as (endpoint, received):
        exporter = FastHttpSpanExporter(endpoint=endpoint + "/v1/traces")
        assert exporter.export(gateway_spans).name == "SUCCESS"
        exporter.shutdown()
    [request] = received.traces
    assert request.SerializeToString() == official(gateway_spans).SerializeToString()


def test_fast_grpc_exporter_delivers(gateway_spans: list[ReadableSpan]) -> None:
    with grpc_receiver() as (endpoint, received):
        exporter = FastGrpcSpanExporter(endpoint=endpoint, insecure=True)
        assert exporter.export(gateway_spans).name == "SUCCESS"
        exporter.shutdown()
    [request] = received.traces
    assert request.SerializeToString() == official(gateway_spans).SerializeToString()
