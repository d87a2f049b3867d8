"""Tracer and meter providers from ``[telemetry]`` and the standard ``OTEL_*`` variables.

Resolution, in order:

1. ``[telemetry] enabled = false`` or ``OTEL_SDK_DISABLED=true``: off.
2. Providers handed in by the caller (tests, hosts that wire their own): used as they are.
3. A global TracerProvider / MeterProvider the host application already installed (anything
   other than the API's proxy): used, never replaced, never shut down by routegate.
4. An OTLP endpoint (``[telemetry] otlp_endpoint``, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` or the
   per-signal ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``): routegate builds its own SDK
   providers with OTLP exporters (protocol from ``otlp_protocol``, else
   ``OTEL_EXPORTER_OTLP_PROTOCOL``, else grpc for port 4317 and http/protobuf otherwise).
   Traces: the SDK's ``TracerProvider`` (a ``BatchSpanProcessor`` with the exporter package's
   OTLP span exporter, with encode.py's span encoder); metrics: routegate's own aggregation
   (aggregate.py, ~10x cheaper per request than the SDK's instruments) exported through the
   package's OTLP metric exporter.
   Private to routegate (not installed as the global providers), flushed and shut down by
   :meth:`Telemetry.shutdown`.
5. Nothing configured: off, and the gateway runs with no observer at all.

Everything the exporters read themselves keeps working: ``OTEL_EXPORTER_OTLP_HEADERS``,
``..._TIMEOUT``, ``..._COMPRESSION``, certificates; the sampler comes from
``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` (default: parent-based, always on), batch
sizes from ``OTEL_BSP_*`` (read by the SDK from the process environment, not from
``environ``); the export interval and timeout from ``OTEL_METRIC_EXPORT_INTERVAL``/``_TIMEOUT``
and the metric temporality from ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``
(cumulative, delta or lowmemory, with the exporter's meaning) are read from ``environ``.
``OTEL_TRACES_EXPORTER=none`` / ``OTEL_METRICS_EXPORTER=none`` switch one signal off.
The SDK and exporter packages are imported only here, only when telemetry is on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

from opentelemetry import metrics, trace

from routegate.otel.sinks import MetricSink, SdkSink
from routegate.otel.version import INSTRUMENTATION_NAME, __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

    from routegate.otel.aggregate import FastSink

__all__ = ["OtlpProtocol", "Telemetry", "TelemetrySettings", "resolve_protocol",
           "setup_telemetry"]

log = logging.getLogger("routegate.otel")

OtlpProtocol = Literal["grpc", "http/protobuf"]
Environ = Callable[[str], "str | None"]


class TelemetrySettings(Protocol):
    """The ``[telemetry]`` section (``middleware.config.TelemetryConfig`` has this shape; otel
    reads it through this protocol so that it never imports the middleware)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def service_name(self) -> str: ...
    @property
    def otlp_endpoint(self) -> str: ...
    @property
    def otlp_protocol(self) -> str: ...
    @property
    def capture_content(self) -> bool: ...


@dataclass(slots=True)
class Telemetry:
    """The providers the observer uses, and which of them routegate owns."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    owned: list[object] = field(default_factory=list)  # SDK providers routegate created
    light_tracer: trace.Tracer | None = None  # for the provider routegate built (light.py)
    fast_sink: FastSink | None = None  # for the metrics pipeline routegate built (aggregate.py)

    def tracer(self) -> trace.Tracer:
        if self.light_tracer is not None:
            return self.light_tracer
        return self.tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__)

    def meter(self) -> metrics.Meter:
        return self.meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)

    def sink(self) -> MetricSink:
        return self.fast_sink if self.fast_sink is not None else SdkSink(self.meter())

    def force_flush(self) -> None:
        for provider in (self.tracer_provider, self.meter_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush()

    def shutdown(self) -> None:
        """Flush and stop the providers routegate created (never the host's)."""
        for provider in self.owned:
            provider.shutdown()  # type: ignore[attr-defined]  # SDK providers, MetricsPusher
        self.owned.clear()


def _env_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _host_tracer_provider() -> trace.TracerProvider | None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def _host_meter_provider() -> metrics.MeterProvider | None:
    provider = metrics.get_meter_provider()
    # The API's stand-ins (its no-op provider and the proxy it returns until a provider is
    # set) live in the API package; the proxy's class is not public, so tell them by module.
    if type(provider).__module__.startswith("opentelemetry.metrics"):
        return None
    return provider


def resolve_protocol(configured: str, environ: Environ, endpoint: str,
                     signal: Literal["TRACES", "METRICS"]) -> OtlpProtocol:
    """``otlp_protocol``, else the OTEL_* variables, else by port (4317 is OTLP/gRPC)."""
    value = (configured or environ(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
             or environ("OTEL_EXPORTER_OTLP_PROTOCOL") or "").strip()
    if value in ("grpc", "http/protobuf"):
        return value  # type: ignore[return-value]  # narrowed by the membership test
    if value:
        log.warning("OTLP protocol %r is not supported; using http/protobuf", value)
        return "http/protobuf"
    try:
        port = urlsplit(endpoint if "//" in endpoint else "//" + endpoint).port
    except ValueError:
        port = None
    return "grpc" if port == 4317 else "http/protobuf"


def _endpoint(config: TelemetrySettings, environ: Environ,
              signal: Literal["TRACES", "METRICS"]) -> str:
    return (config.otlp_endpoint or environ(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
            or environ("OTEL_EXPORTER_OTLP_ENDPOINT") or "")


def _span_exporter(config: TelemetrySettings, environ: Environ, endpoint: str) -> SpanExporter:
    protocol = resolve_protocol(config.otlp_protocol, environ, endpoint, "TRACES")
    # An endpoint from gateway.toml is a base URL like OTEL_EXPORTER_OTLP_ENDPOINT; one from
    # the environment is left for the exporter to read with the spec's own rules.
    explicit = config.otlp_endpoint.rstrip("/") or None
    # The package's exporters with routegate's span encoder (encode.py: ~10 % of the CPU per
    # request in the exporter thread).
    from routegate.otel.encode import FastGrpcSpanExporter, FastHttpSpanExporter

    if protocol == "grpc":
        return FastGrpcSpanExporter(endpoint=explicit, insecure=_insecure(explicit))
    return FastHttpSpanExporter(endpoint=None if explicit is None else explicit + "/v1/traces")


def _metric_exporter(config: TelemetrySettings, environ: Environ, endpoint: str) -> MetricExporter:
    protocol = resolve_protocol(config.otlp_protocol, environ, endpoint, "METRICS")
    explicit = config.otlp_endpoint.rstrip("/") or None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as G,
        )

        return G(endpoint=explicit, insecure=_insecure(explicit))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as H

    return H(endpoint=None if explicit is None else explicit + "/v1/metrics")


def _insecure(endpoint: str | None) -> bool | None:
    """A plain ``http://`` endpoint from the config means no TLS; otherwise let the exporter
    decide from its environment (OTEL_EXPORTER_OTLP_INSECURE, certificates)."""
    if endpoint is None:
        return None
    return endpoint.startswith("http://") or None


def _resource(config: TelemetrySettings, environ: Environ) -> Resource:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME, the deployment's
    # word, wins over gateway.toml's default.
    name = environ("OTEL_SERVICE_NAME") or config.service_name
    return Resource.create({SERVICE_NAME: name, "service.version": __version__})


def _tracer_provider(resource: Resource,
                     processor: SpanProcessor) -> tuple[trace.TracerProvider, trace.Tracer]:
    """The SDK's provider (sampler from OTEL_TRACES_SAMPLER) feeding ``processor``, and the
    light tracer that feeds that processor directly (see light.py: measured ~10 % cheaper)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from routegate.otel.light import LightTracer

    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    scope = InstrumentationScope(INSTRUMENTATION_NAME, __version__)
    return provider, LightTracer(provider, processor, scope)


def setup_telemetry(config: TelemetrySettings, *,
                    tracer_provider: trace.TracerProvider | None = None,
                    meter_provider: metrics.MeterProvider | None = None,
                    span_processor: SpanProcessor | None = None,
                    environ: Environ = os.environ.get) -> Telemetry | None:
    """Providers for the gateway's observer, or None when telemetry is off (see module doc).

    ``span_processor`` (tests): spans go to it through an SDK TracerProvider routegate builds
    and its light tracer, the path used in production when an OTLP endpoint is configured.
    """
    if not config.enabled or _env_true(environ("OTEL_SDK_DISABLED")):
        return None
    owned: list[object] = []
    light_tracer: trace.Tracer | None = None
    resource: Resource | None = None
    if span_processor is not None and tracer_provider is None:
        resource = _resource(config, environ)
        tracer_provider, light_tracer = _tracer_provider(resource, span_processor)
    tracer_provider = tracer_provider or _host_tracer_provider()
    meter_provider = meter_provider or _host_meter_provider()
    if tracer_provider is None:
        endpoint = _endpoint(config, environ, "TRACES")
        if endpoint and (environ("OTEL_TRACES_EXPORTER") or "otlp").strip() != "none":
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            resource = resource or _resource(config, environ)
            tracer_provider, light_tracer = _tracer_provider(resource, BatchSpanProcessor(
                _span_exporter(config, environ, endpoint)))
            owned.append(tracer_provider)
    fast_sink: FastSink | None = None
    if meter_provider is None:
        endpoint = _endpoint(config, environ, "METRICS")
        if endpoint and (environ("OTEL_METRICS_EXPORTER") or "otlp").strip() != "none":
            fast_sink = _metrics_pipeline(config, environ, endpoint,
                                          resource or _resource(config, environ), owned)
    if tracer_provider is None and meter_provider is None and fast_sink is None:
        return None
    log.info("telemetry on: traces %s, metrics %s",
             "off" if tracer_provider is None else type(tracer_provider).__name__,
             "OTLP" if fast_sink is not None else
             "off" if meter_provider is None else type(meter_provider).__name__)
    return Telemetry(tracer_provider or trace.NoOpTracerProvider(),
                     meter_provider or metrics.NoOpMeterProvider(), owned, light_tracer,
                     fast_sink)


def _metrics_pipeline(config: TelemetrySettings, environ: Environ, endpoint: str,
                      resource: Resource, owned: list[object]) -> FastSink:
    """routegate's aggregation and its exporting thread (aggregate.py: the SDK's instruments
    cost ~40 CPU-us more per request), with the temporality the exporter's preference names."""
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from routegate.otel.aggregate import FastSink, MetricsPusher, temporality

    sink = FastSink(temporality(environ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")))
    owned.append(MetricsPusher(
        sink, _metric_exporter(config, environ, endpoint), resource,
        InstrumentationScope(INSTRUMENTATION_NAME, __version__),
        interval_s=_millis(environ, "OTEL_METRIC_EXPORT_INTERVAL", 60000) / 1000,
        timeout_s=_millis(environ, "OTEL_METRIC_EXPORT_TIMEOUT", 30000) / 1000))
    return sink


def _millis(environ: Environ, name: str, default: int) -> int:
    value = (environ(name) or "").strip()
    try:
        return max(1, int(value)) if value else default
    except ValueError:
        log.warning("%s=%r is not a number of milliseconds; using %d", name, value, default)
        return default
