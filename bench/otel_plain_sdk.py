"""``routegate serve`` on the plain OpenTelemetry SDK, for bench/otel_bench.py's side-by-side variant.

Installs the SDK's own pipeline as the global providers, as a host application would: a
``TracerProvider`` with a ``BatchSpanProcessor`` and the exporter package's OTLP/HTTP span
exporter, and a ``MeterProvider`` with a ``PeriodicExportingMetricReader`` and the OTLP/HTTP
metric exporter (endpoint, interval, sampler and temporality from the same ``OTEL_*``
variables). Then it runs ``routegate serve``, whose telemetry setup uses a host's providers
through the API only (otel/setup.py, step 3): no light tracer (otel/light.py), no own
aggregation (otel/aggregate.py), no own span encoder (otel/encode.py). The difference to the
"on" gateway is what those hand-written parts buy.

    python -m bench.otel_plain_sdk serve --config gateway.toml --port 8080
"""

from __future__ import annotations

import sys

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def install_plain_sdk() -> None:
    """The SDK's tracer and meter providers with OTLP/HTTP exporters, installed globally."""
    resource = Resource.create({SERVICE_NAME: "routegate"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]))


def main(argv: list[str] | None = None) -> int:
    install_plain_sdk()
    from routegate.middleware.standalone.cli import main as serve

    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
