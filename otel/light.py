"""A light tracer for the SDK TracerProvider routegate builds itself.

The SDK's ``Tracer.start_span`` and its ``Span`` do a lot per span that routegate's request
path does not need (attribute validation of values the gateway produces itself, locks,
per-span self-metrics, tracer configurators). For the provider it owns, routegate records
each span as a plain object and, when it ends, hands one finished ``ReadableSpan`` (built
through its public keyword constructor) to the span processor routegate added to that
provider (the SDK's ``BatchSpanProcessor`` and the exporter package's OTLP exporter). IDs come
from the provider's public ``id_generator``, the root decision from its public ``sampler``
(``OTEL_TRACES_SAMPLER``), the resource from ``resource``; child spans follow their parent's
decision. ``tests/otel/test_otel_light.py`` checks that its spans equal the SDK tracer's.

Measured with ``python -m bench.otel_bench`` (same run, 2026-12-04): the plain SDK (its own
tracer, metrics pipeline and exporter, ``bench/otel_plain_sdk.py``) costs 28-54 % more CPU per
request than routegate's telemetry, of which this tracer, ``aggregate.py`` (metrics on the
SDK's public types) and ``encode.py`` (the span encoder, pinned to the exporter's version) are
the hand-written parts; bench/README.md has each part's share and history.
A host application's own provider is never handled this way: it gets ordinary API calls
(processors' ``on_start`` hooks run there, not here).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import Attributes, AttributeValue

__all__ = ["LightSpan", "LightTracer"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
_SAMPLED_DECISIONS = (Decision.RECORD_AND_SAMPLE,)


class LightTracer(trace.Tracer):
    """``start_span`` for routegate's own request path (see the module docstring)."""

    def __init__(self, provider: TracerProvider, processor: SpanProcessor,
                 scope: InstrumentationScope) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._resource = provider.resource
        self._processor = processor
        self._scope = scope

    def start_span(self, name: str, context: Context | None = None,
                   kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
                   links: Any = None, start_time: int | None = None,
                   record_exception: bool = True,
                   set_status_on_exception: bool = True) -> trace.Span:
        parent_span = trace.get_current_span(context)
        parent: SpanContext | None = parent_span.get_span_context()
        trace_state: TraceState | None
        if isinstance(parent_span, LightSpan):  # a local parent: follow its decision
            sampled, trace_state = parent_span.recording, parent_span.context.trace_state
            trace_id = parent_span.context.trace_id
        else:
            if parent is None or not parent.is_valid:
                parent = None
                trace_id = self._ids.generate_trace_id()
            else:
                trace_id = parent.trace_id
            result = self._sampler.should_sample(context, trace_id, name, kind, attributes)
            sampled = result.decision in _SAMPLED_DECISIONS
            trace_state = result.trace_state
        span_context = SpanContext(trace_id, self._ids.generate_span_id(), is_remote=False,
                                   trace_flags=_SAMPLED if sampled else _NOT_SAMPLED,
                                   trace_state=trace_state)
        return LightSpan(self, name, span_context, parent, kind,
                         start_time or time.time_ns(), dict(attributes or {}), sampled)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API's decorator is private
            self, name: str, context: Context | None = None,
                              kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
                              links: Any = None, start_time: int | None = None,
                              record_exception: bool = True,
                              set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(span, end_on_exit=end_on_exit):
            yield span

    def _finish(self, span: LightSpan, end_time: int) -> None:
        self._processor.on_end(ReadableSpan(
            name=span.name, context=span.context, parent=span.parent, resource=self._resource,
            attributes=span.attributes, events=span.events, kind=span.kind, status=span.status,
            start_time=span.start_time, end_time=end_time, instrumentation_scope=self._scope))


class LightSpan(trace.Span):
    """A span recorded as plain fields; becomes a ``ReadableSpan`` when it ends."""

    __slots__ = ("attributes", "context", "ended", "events", "kind", "name", "parent",
                 "recording", "start_time", "status", "tracer")

    def __init__(self, tracer: LightTracer, name: str, context: SpanContext,
                 parent: SpanContext | None, kind: SpanKind, start_time: int,
                 attributes: dict[str, AttributeValue], recording: bool) -> None:
        self.tracer = tracer
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.start_time = start_time
        self.attributes = attributes
        self.events: list[Event] = []
        self.status = _UNSET
        self.recording = recording
        self.ended = False

    def end(self, end_time: int | None = None) -> None:
        if self.recording and not self.ended:
            self.ended = True
            self.tracer._finish(self, end_time or time.time_ns())

    def get_span_context(self) -> SpanContext:
        return self.context

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.recording:
            self.attributes.update(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.recording:
            self.attributes[key] = value

    def add_event(self, name: str, attributes: Attributes = None,
                  timestamp: int | None = None) -> None:
        if self.recording:
            self.events.append(Event(name, attributes, timestamp or time.time_ns()))

    def update_name(self, name: str) -> None:
        self.name = name

    def is_recording(self) -> bool:
        return self.recording and not self.ended

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self.add_event("exception", {"exception.type": type(exception).__name__,
                                     **(attributes or {})}, timestamp)
