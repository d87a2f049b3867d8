"""Which providers telemetry uses: config, OTEL_* variables, a host's global provider, off."""

from __future__ import annotations

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from routegate.middleware import Gateway, parse_config
from routegate.middleware.config import TelemetryConfig
from routegate.otel import TelemetryExtension, setup_telemetry
from routegate.otel.aggregate import MetricsPusher
from routegate.otel.attributes import METRICS, prometheus_name
from routegate.otel.encode import FastGrpcSpanExporter, FastHttpSpanExporter
from routegate.otel.setup import resolve_protocol


def env(**values: str) -> dict[str, str]:
    return values


def span_exporter(provider: trace.TracerProvider) -> object:
    assert isinstance(provider, TracerProvider)
    processor = provider._active_span_processor._span_processors[0]
    assert isinstance(processor, BatchSpanProcessor)
    return processor._batch_processor._exporter


def test_off_when_nothing_is_configured() -> None:
    assert setup_telemetry(TelemetryConfig(), environ=env().get) is None


def test_off_when_disabled_even_with_an_endpoint() -> None:
    config = TelemetryConfig(enabled=False, otlp_endpoint="http://127.0.0.1:4318")
    assert setup_telemetry(config, environ=env().get) is None
    sdk_off = env(OTEL_SDK_DISABLED="true", OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318")
    assert setup_telemetry(TelemetryConfig(), environ=sdk_off.get) is None


async def test_no_observer_is_registered_when_off() -> None:
    gateway = Gateway(parse_config({}))
    extension = TelemetryExtension(TelemetryConfig(), environ=env().get)
    await extension.start(gateway)
    assert not gateway.observers and extension.observer is None
    await extension.stop()


@pytest.mark.parametrize(("configured", "variables", "endpoint", "expected"), [
    ("grpc", {}, "http://c:4318", "grpc"),
    ("", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http://c:9999", "grpc"),
    ("", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
          "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http://c:4317", "http/protobuf"),
    ("", {}, "http://collector:4317", "grpc"),
    ("", {}, "collector:4317", "grpc"),
    ("", {}, "http://collector:4318", "http/protobuf"),
    ("", {}, "https://otlp.example.com", "http/protobuf"),
    ("", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http://c:4317", "http/protobuf"),
])
def test_protocol_resolution(configured: str, variables: dict[str, str], endpoint: str,
                             expected: str) -> None:
    assert resolve_protocol(configured, variables.get, endpoint, "TRACES") == expected


@pytest.mark.parametrize(("protocol", "kind"), [("grpc", FastGrpcSpanExporter),
                                               ("http/protobuf", FastHttpSpanExporter)])
def test_own_providers_from_the_config_endpoint(protocol: str, kind: type) -> None:
    config = TelemetryConfig(otlp_endpoint="http://127.0.0.1:1", otlp_protocol=protocol,  # type: ignore[arg-type]
                             service_name="svc")
    telemetry = setup_telemetry(config, environ=env().get)
    assert telemetry is not None
    try:
        assert isinstance(telemetry.tracer_provider, TracerProvider)
        assert telemetry.fast_sink is not None and telemetry.sink() is telemetry.fast_sink
        assert telemetry.owned[0] is telemetry.tracer_provider
        assert isinstance(telemetry.owned[1], MetricsPusher) and len(telemetry.owned) == 2
        assert type(span_exporter(telemetry.tracer_provider)) is kind  # encode.py's encoder
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "svc"
        # Never installed as the process-wide provider.
        assert trace.get_tracer_provider() is not telemetry.tracer_provider
    finally:
        telemetry.owned.clear()  # nothing listens on port 1: skip the flush on shutdown


def test_service_name_from_the_environment_wins() -> None:
    variables = env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1", OTEL_SERVICE_NAME="env-svc",
                    OTEL_METRICS_EXPORTER="none")
    telemetry = setup_telemetry(TelemetryConfig(service_name="toml-svc"), environ=variables.get)
    assert telemetry is not None and isinstance(telemetry.tracer_provider, TracerProvider)
    assert telemetry.tracer_provider.resource.attributes["service.name"] == "env-svc"
    # OTEL_METRICS_EXPORTER=none: traces only.
    assert isinstance(telemetry.meter_provider, metrics.NoOpMeterProvider)
    assert telemetry.fast_sink is None
    assert telemetry.owned == [telemetry.tracer_provider]
    telemetry.owned.clear()


def test_the_hosts_global_providers_are_used_and_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    host_exporter = InMemorySpanExporter()
    host_tracer = TracerProvider()
    host_tracer.add_span_processor(SimpleSpanProcessor(host_exporter))
    host_meter = MeterProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: host_tracer)
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: host_meter)
    # No endpoint needed: the host decided where telemetry goes.
    telemetry = setup_telemetry(TelemetryConfig(), environ=env().get)
    assert telemetry is not None
    assert telemetry.tracer_provider is host_tracer and telemetry.meter_provider is host_meter
    assert telemetry.owned == []
    telemetry.shutdown()
    with telemetry.tracer().start_as_current_span("still-alive"):
        pass
    assert [s.name for s in host_exporter.get_finished_spans()] == ["still-alive"]


def test_prometheus_names() -> None:
    names = {spec.name: prometheus_name(spec.name, spec.unit, spec.kind)
             for spec in METRICS.values()}
    assert names["gen_ai.client.token.usage"] == "gen_ai_client_token_usage"
    assert names["gen_ai.client.operation.duration"] == "gen_ai_client_operation_duration_seconds"
    assert names["routegate.requests"] == "routegate_requests_total"
    assert names["routegate.cost.usd"] == "routegate_cost_usd_total"
