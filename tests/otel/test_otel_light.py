"""Guard for routegate.otel.light: its spans are the SDK tracer's spans, field for field.

The light tracer builds ``ReadableSpan`` through the SDK's public constructor and reads the
provider's public ``sampler``, ``id_generator`` and ``resource``. If the SDK changes what a
finished span carries (new fields, other defaults, other JSON), these tests fail.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from routegate.otel.light import LightTracer
from routegate.otel.version import INSTRUMENTATION_NAME, __version__

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def record(tracer: trace.Tracer) -> None:
    """What the observer does for one request with a classify step and two attempts."""
    parent = TraceContextTextMapPropagator().extract({"traceparent": CALLER})
    server = tracer.start_span("/v1/chat/completions", context=parent, kind=SpanKind.SERVER,
                               start_time=1_000, attributes={"routegate.request_id": "r1"})
    context = trace.set_span_in_context(server)
    classify = tracer.start_span("routegate.classify", context=context, start_time=1_100,
                                 attributes={"routegate.category": "chat",
                                             "routegate.classifier.confidence": 0.75})
    classify.end(end_time=1_200)
    for index, start in enumerate((1_300, 1_500)):
        attrs: dict[str, Any] = {"gen_ai.request.model": "m-up", "server.port": 8080}
        if index:
            attrs["routegate.attempt.index"] = index
            server.add_event("routegate.fallback", {"routegate.fallback.from": "m"},
                             timestamp=start)
        client = tracer.start_span("chat m-up", context=context, kind=SpanKind.CLIENT,
                                   start_time=start, attributes=attrs)
        if index == 0:
            client.set_status(Status(StatusCode.ERROR, "upstream 500"))
        client.set_attributes({"gen_ai.response.finish_reasons": ("stop",),
                               "gen_ai.usage.input_tokens": 5, "routegate.fallback": True})
        client.end(end_time=start + 100)
    server.update_name("chat auto")
    server.set_attributes({"http.response.status_code": 200, "routegate.cost_usd": 0.5})
    server.set_attribute("routegate.outcome", "success")
    server.end(end_time=2_000)


def normalized(spans: tuple[ReadableSpan, ...]) -> list[dict[str, Any]]:
    """Each span's OTLP-like JSON, with IDs replaced by their role (they are random)."""
    names: dict[str, str] = {"0x4bf92f3577b34da6a3ce929d0e0e4736": "caller-trace",
                             "0x00f067aa0ba902b7": "caller-span"}
    out = []
    for span in spans:
        data = json.loads(span.to_json())
        own = data["context"]["span_id"]
        names.setdefault(own, f"span-{span.name}-{span.start_time}")
        out.append(data)
    text = json.dumps(out, sort_keys=True)
    for raw, role in names.items():
        text = text.replace(raw, role)
    loaded: list[dict[str, Any]] = json.loads(text)
    return loaded


def run(sampler: Sampler, light: bool) -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(processor)
    scope = InstrumentationScope(INSTRUMENTATION_NAME, __version__)
    tracer: trace.Tracer = (LightTracer(provider, processor, scope) if light
                            else provider.get_tracer(INSTRUMENTATION_NAME, __version__))
    record(tracer)
    provider.shutdown()
    return exporter.get_finished_spans()


def test_light_spans_equal_the_sdk_tracers() -> None:
    sdk, light = run(ALWAYS_ON, light=False), run(ALWAYS_ON, light=True)
    assert len(sdk) == 4
    assert normalized(light) == normalized(sdk)
    for ours, theirs in zip(light, sdk, strict=True):  # what to_json leaves out
        assert ours.instrumentation_scope == theirs.instrumentation_scope
        assert ours.resource == theirs.resource
        mine, sdks = ours.get_span_context(), theirs.get_span_context()
        assert mine is not None and sdks is not None
        assert (mine.trace_flags, mine.is_remote) == (sdks.trace_flags, sdks.is_remote)
        assert (ours.parent is None) == (theirs.parent is None)
        assert ours.parent is None or theirs.parent is None or (
            ours.parent.is_remote == theirs.parent.is_remote)
        assert (ours.dropped_attributes, ours.dropped_events, ours.dropped_links) == (
            theirs.dropped_attributes, theirs.dropped_events, theirs.dropped_links)


@pytest.mark.parametrize("light", [False, True])
def test_the_providers_sampler_decides(light: bool) -> None:
    assert run(ALWAYS_OFF, light) == ()
