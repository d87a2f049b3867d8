"""Guards for the exporter package's private members otel/encode.py uses (see its docstring).

Each test fails when a member disappears or changes shape, so an exporter upgrade cannot
silently bypass routegate's encoder or break its exporters: re-verify encode.py and this file,
then widen the pin in pyproject.toml.
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from packaging.requirements import Requirement

from routegate.otel.encode import FastGrpcSpanExporter, FastHttpSpanExporter, SpanEncoder
from tests.otel.otlp_receivers import grpc_receiver, http_receiver

PINNED = ("opentelemetry-exporter-otlp", "opentelemetry-exporter-otlp-proto-grpc",
          "opentelemetry-exporter-otlp-proto-http", "opentelemetry-exporter-otlp-proto-common")


class CountingEncoder(SpanEncoder):
    """Counts the batches it encodes (tells whether the exporter went through it)."""

    calls = 0

    def encode(self, spans: Any) -> bytes:
        self.calls += 1
        return super().encode(spans)


def some_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("s", attributes={"k": "v"}):
        pass
    return list(exporter.get_finished_spans())


def params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_installed_exporters_are_within_the_verified_pin() -> None:
    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    requirements = {r.name: r for r in map(Requirement, tomllib.loads(
        pyproject.read_text())["project"]["dependencies"])}
    for name in PINNED:
        assert name in requirements, f"{name} must stay pinned (otel/encode.py)"
        spec = requirements[name].specifier
        assert spec and any(s.operator == "<" for s in spec), f"{name}: needs an upper bound"
        assert spec.contains(version(name)), f"{name} {version(name)} outside {spec}"


# -- gRPC: OTLPExporterMixin._export asks self._translate_data(data) for the request ----------

def test_grpc_translate_data_hook_has_the_pinned_shape() -> None:
    assert "_translate_data" in OTLPExporterMixin.__abstractmethods__
    assert params(OTLPExporterMixin._translate_data) == ["self", "data"]
    assert params(GrpcSpanExporter._translate_data) == ["self", "data"]
    assert "self._translate_data(data)" in inspect.getsource(OTLPExporterMixin._export)
    assert FastGrpcSpanExporter._translate_data is not GrpcSpanExporter._translate_data


def test_grpc_export_goes_through_routegates_encoder() -> None:
    spans = some_spans()
    with grpc_receiver() as (endpoint, received):
        exporter = FastGrpcSpanExporter(endpoint=endpoint, insecure=True)
        exporter._encoder = encoder = CountingEncoder()
        assert exporter.export(spans).name == "SUCCESS"
        exporter.shutdown()
    assert encoder.calls == 1, "the exporter no longer calls _translate_data"
    assert len(received.traces) == 1


# -- http/protobuf: self._client.export(bytes) -> .success, self._max_request_size --------------

def test_http_client_and_size_limit_have_the_pinned_shape() -> None:
    exporter = HttpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", max_request_size=123)
    try:
        assert exporter._max_request_size == 123
        default = HttpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
        assert isinstance(default._max_request_size, int) and default._max_request_size > 0
        default.shutdown()  # type: ignore[no-untyped-call]
        export = exporter._client.export
        assert callable(export)
        assert params(export) == ["data"]
        result_type = get_type_hints(type(exporter._client).export)["return"]
        assert dataclasses.is_dataclass(result_type)
        assert get_type_hints(result_type)["success"] is bool
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("limit", [0, -1])
def test_http_non_positive_limit_means_no_limit(limit: int) -> None:
    """encode.py mirrors the package's rule for max_request_size <= 0."""
    from opentelemetry.exporter.otlp.proto.http._common import _is_request_too_large

    assert _is_request_too_large(b"x" * 100, limit) is False
    assert _is_request_too_large(b"x" * 100, 99) is True
    assert _is_request_too_large(b"x" * 100, 100) is False


def test_http_export_goes_through_routegates_encoder_and_client() -> None:
    spans = some_spans()
    with http_receiver() as (endpoint, received):
        exporter = FastHttpSpanExporter(endpoint=endpoint + "/v1/traces")
        exporter._encoder = encoder = CountingEncoder()
        assert exporter.export(spans).name == "SUCCESS"
        small = FastHttpSpanExporter(endpoint=endpoint + "/v1/traces", max_request_size=10)
        assert small.export(spans).name == "FAILURE"  # over the limit: not sent
        small.shutdown()
        exporter.shutdown()
        assert exporter.export(spans).name == "FAILURE"  # after shutdown
    assert encoder.calls == 1
    assert len(received.traces) == 1
