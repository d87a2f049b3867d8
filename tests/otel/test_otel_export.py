"""The real OTLP exporters (gRPC and HTTP/protobuf) into receivers started on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import openai
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    AGGREGATION_TEMPORALITY_DELTA,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from bench.fakes import FakeProvider
from routegate.otel import attributes as a
from tests.conftest import pool_config, running_gateway
from tests.otel.otlp_receivers import Received, grpc_receiver, http_receiver, span_attributes

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"

Receiver = Callable[[], AbstractContextManager[tuple[str, Received]]]
RECEIVERS: dict[str, Receiver] = {"grpc": grpc_receiver, "http/protobuf": http_receiver}


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    yield


def ask_with_sdk(url: str) -> tuple[str, int, int]:
    """One non-streaming request with the openai SDK: (x-trace-id, prompt, completion tokens)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-client-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": "Say hello"}],
        extra_headers={"traceparent": TRACEPARENT})
    completion = raw.parse()
    assert completion.usage is not None
    return (raw.headers["x-trace-id"], completion.usage.prompt_tokens,
            completion.usage.completion_tokens)


def check_export(received: Received, prompt_tokens: int, completion_tokens: int,
                 service_name: str) -> None:
    spans = received.spans()
    assert spans, "no spans reached the receiver"
    assert {resource["service.name"] for resource, _ in spans} == {service_name}
    assert {span.trace_id.hex() for _, span in spans} == {TRACE_ID}
    kinds = {span.kind for _, span in spans}
    assert kinds == {Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT}
    [server] = [span for _, span in spans if span.kind == Span.SPAN_KIND_SERVER]
    [client] = [span for _, span in spans if span.kind == Span.SPAN_KIND_CLIENT]
    assert server.parent_span_id.hex() == "b7ad6b7169203331"
    assert client.parent_span_id == server.span_id
    s, c = span_attributes(server), span_attributes(client)
    assert s[a.RG_MODEL] == c[a.RG_MODEL] == "cheap"
    assert c[a.GEN_AI_RESPONSE_MODEL] == "cheap-up" and client.name == "chat cheap-up"
    assert c[a.GEN_AI_USAGE_INPUT_TOKENS] == prompt_tokens
    assert c[a.GEN_AI_USAGE_OUTPUT_TOKENS] == completion_tokens
    assert s[a.RG_COST_USD] > 0
    # Metrics travel the same way (flushed when the gateway stops).
    assert {a.METRIC_TOKEN_USAGE, a.METRIC_OPERATION_DURATION, a.METRIC_REQUESTS,
            a.METRIC_COST, a.METRIC_REQUEST_DURATION} <= received.metric_names()


@pytest.mark.parametrize("protocol", list(RECEIVERS))
def test_otlp_export_from_gateway_toml(protocol: str,
                                       fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    with RECEIVERS[protocol]() as (endpoint, received):
        config = pool_config({"f": fake_url}, extra={"telemetry": {
            "otlp_endpoint": endpoint, "otlp_protocol": protocol, "service_name": "rg-toml"}})
        with running_gateway(config) as url:
            trace_id, prompt_tokens, completion_tokens = ask_with_sdk(url)
        # Leaving running_gateway stopped the gateway, which flushed both providers.
        assert trace_id == TRACE_ID
        check_export(received, prompt_tokens, completion_tokens, "rg-toml")


@pytest.mark.parametrize("protocol", list(RECEIVERS))
def test_otlp_export_from_standard_environment(protocol: str, monkeypatch: pytest.MonkeyPatch,
                                               fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    with RECEIVERS[protocol]() as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "rg-env")
        with running_gateway(pool_config({"f": fake_url})) as url:
            _, prompt_tokens, completion_tokens = ask_with_sdk(url)
        check_export(received, prompt_tokens, completion_tokens, "rg-env")
        assert all(headers.get("x-tenant") == "acme" for headers in received.headers)


def test_sampler_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                      fake_openai: tuple[FakeProvider, str]) -> None:
    """OTEL_TRACES_SAMPLER=always_off: nothing is exported and the response says so."""
    fake, fake_url = fake_openai
    with http_receiver() as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        with running_gateway(pool_config({"f": fake_url})) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="cheap", messages=[{"role": "user", "content": "Hi"}])
        flags = int(raw.headers["traceresponse"].rsplit("-", 1)[1], 16)
        assert flags & 0x01 == 0  # the sampled bit is clear
        # The upstream call still joins the trace (as unsampled), through the server span.
        upstream = fake.requests[-1].headers["traceparent"].split("-")
        assert upstream[1:3] == raw.headers["traceresponse"].split("-")[1:3]
        assert int(upstream[3], 16) & 0x01 == 0
        assert not received.spans()
        assert a.METRIC_REQUESTS in received.metric_names()  # metrics do not sample


def temporalities(received: Received) -> dict[str, int]:
    """Metric name -> the aggregation temporality of its data as exported."""
    out: dict[str, int] = {}
    with received.lock:
        for request in received.metrics:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        if kind in ("sum", "histogram"):
                            out[metric.name] = getattr(metric, kind).aggregation_temporality
    return out


@pytest.mark.parametrize(("preference", "expected"), [
    ("delta", AGGREGATION_TEMPORALITY_DELTA), ("lowmemory", AGGREGATION_TEMPORALITY_DELTA),
    ("", AGGREGATION_TEMPORALITY_CUMULATIVE)])
def test_metric_temporality_preference_is_honoured(preference: str, expected: int,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   fake_openai: tuple[FakeProvider, str]) -> None:
    """OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta (or lowmemory): counters and
    histograms are exported as deltas (unset: cumulative, the OTLP default)."""
    _, fake_url = fake_openai
    with http_receiver() as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        if preference:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
        with running_gateway(pool_config({"f": fake_url})) as url:
            ask_with_sdk(url)
        found = temporalities(received)
        assert {a.METRIC_REQUESTS, a.METRIC_COST, a.METRIC_REQUEST_DURATION,
                a.METRIC_TOKEN_USAGE} <= set(found)
        assert set(found.values()) == {expected}, found
