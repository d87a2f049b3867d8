"""A real gateway whose telemetry goes to in-memory exporters, and helpers to read it back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bench.fakes import serve_in_thread
from routegate.middleware import Gateway, GatewayConfig, RouterMiddleware
from routegate.middleware.asgi_types import Receive, Scope, Send
from routegate.middleware.request.gateway import GatewayExtension
from routegate.otel import TelemetryExtension


async def host_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The app RouterMiddleware wraps: answers lifespan, 404 for everything else."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class Traced:
    url: str
    spans_exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    extension: TelemetryExtension

    def wait_requests(self, count: int, timeout: float = 5.0) -> list[ReadableSpan]:
        """All finished spans once ``count`` SERVER spans exist (the gateway ends the server
        span just after the last byte, so the client can be a moment ahead)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = list(self.spans_exporter.get_finished_spans())
            if sum(s.kind == SpanKind.SERVER for s in spans) >= count:
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} server spans, got {spans!r}")
            time.sleep(0.005)

    def metric_points(self) -> dict[str, list[Any]]:
        """Metric name -> data points (NumberDataPoint or HistogramDataPoint)."""
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        if data is None:
            return points
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points


PATHS = ["sdk", "own"]  # an injected SDK provider, or the provider routegate builds itself


@contextmanager
def traced_gateway(config: GatewayConfig, path: str = "sdk", *,
                   also: list[GatewayExtension] | None = None) -> Iterator[Traced]:
    """``path="sdk"``: an injected SDK TracerProvider (what a host's provider gets);
    ``"own"``: the SDK TracerProvider and light tracer routegate builds for itself, feeding a
    test processor. ``also``: more extensions, started after telemetry."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    if path == "own":
        extension = TelemetryExtension(config.telemetry, meter_provider=meter_provider,
                                       span_processor=SimpleSpanProcessor(exporter))
    else:
        extension = TelemetryExtension(config.telemetry, tracer_provider=tracer_provider,
                                       meter_provider=meter_provider)
    app = RouterMiddleware(host_app, gateway=Gateway(config, extensions=[extension, *(also or [])]))
    try:
        with serve_in_thread(app, lifespan="on") as url:
            yield Traced(url, exporter, reader, extension)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


def by_kind(spans: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def point_attrs(point: NumberDataPoint | HistogramDataPoint) -> dict[str, Any]:
    return dict(point.attributes or {})
