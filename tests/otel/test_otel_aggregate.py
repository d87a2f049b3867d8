"""routegate's own metric aggregation (otel/aggregate.py) exports what the SDK's instruments
would, in either temporality, through the SDK's public metric data types (pinned here)."""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics import export as sdk_export
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from routegate.otel import attributes as a
from routegate.otel.aggregate import FastSink, MetricsPusher, temporality
from routegate.otel.sinks import SdkSink

CALL = (a.GEN_AI_OPERATION_NAME, a.GEN_AI_PROVIDER_NAME, a.GEN_AI_REQUEST_MODEL, a.RG_MODEL)
REQUEST = (a.RG_MODEL, a.RG_CATEGORY, a.RG_OUTCOME, a.RG_FALLBACK)
DELTA, CUMULATIVE = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE


def feed(sink: SdkSink | FastSink, seed: int, count: int) -> None:
    rng = random.Random(seed)
    for i in range(count):
        model = rng.choice(["cheap", "mid"])
        call = ("chat", "openai", f"{model}-up", model)
        # Values on bucket boundaries, below the first and above the last too.
        duration = rng.choice([0.0, 0.01, 0.02, 0.3, 1.28, 100.0, rng.random()])
        if i % 7 == 0:
            sink.record(a.METRIC_OPERATION_DURATION, duration, (*CALL, a.ERROR_TYPE),
                        (*call, "500"))
            continue
        sink.record(a.METRIC_OPERATION_DURATION, duration, CALL, call)
        sink.record(a.METRIC_TOKEN_USAGE, rng.choice([1, 4, 5, 300]), (*CALL, a.GEN_AI_TOKEN_TYPE),
                    (*call, "input"))
        sink.record(a.METRIC_TOKEN_USAGE, rng.randint(0, 5000), (*CALL, a.GEN_AI_TOKEN_TYPE),
                    (*call, "output"))
        sink.record(a.METRIC_TIME_TO_FIRST_CHUNK, duration / 2, CALL, call)
        sink.record(a.METRIC_CLASSIFIER_DURATION, rng.random() / 100, (a.RG_CLASSIFIER_METHOD,),
                    (rng.choice(["lexical", "embedding"]),))
        labels = (model, rng.choice(["chat", "code"]), "success", i % 5 == 0)
        sink.add(a.METRIC_REQUESTS, 1, REQUEST, labels)
        sink.record(a.METRIC_REQUEST_DURATION, duration * 1.1, REQUEST, labels)
        sink.record(a.METRIC_REQUEST_TTFT, duration / 3, (a.RG_MODEL, a.GEN_AI_REQUEST_STREAM),
                    (model, i % 2 == 0))
        sink.add(a.METRIC_COST, rng.random() / 1000, (a.RG_MODEL, a.GEN_AI_PROVIDER_NAME),
                 (model, "openai"))


def normalized(metrics: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in metrics:
        points = {}
        for p in metric.data.data_points:
            key = tuple(sorted((p.attributes or {}).items()))
            if hasattr(p, "bucket_counts"):
                points[key] = (p.count, round(p.sum, 9), tuple(p.bucket_counts),
                               tuple(p.explicit_bounds), p.min, p.max)
            else:
                points[key] = round(p.value, 12)
        if points:  # the SDK leaves out a DELTA metric without new measurements
            out[metric.name] = (metric.unit, metric.description, type(metric.data).__name__,
                                getattr(metric.data, "is_monotonic", None),
                                int(metric.data.aggregation_temporality), points)
    return out


def sdk_metrics(reader: InMemoryMetricReader) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


@pytest.mark.parametrize("kind", [CUMULATIVE, DELTA], ids=["cumulative", "delta"])
def test_fast_sink_matches_the_sdk_instruments(kind: AggregationTemporality) -> None:
    """Three collections (a full one, one with a few series, an empty one) give the SDK's
    data point for data point, with the temporality the SDK's reader was asked for."""
    reader = InMemoryMetricReader(preferred_temporality={Counter: kind, Histogram: kind})
    provider = MeterProvider(metric_readers=[reader])
    sdk, fast = SdkSink(provider.get_meter("routegate")), FastSink(kind)
    for seed, count in ((7, 500), (8, 3), (9, 0)):
        feed(sdk, seed, count)
        feed(fast, seed, count)
        expected = normalized(sdk_metrics(reader))
        if count == 500:
            assert set(expected) == set(a.METRICS)
        assert normalized(fast.collect()) == expected
    provider.shutdown()


@pytest.mark.parametrize(("preference", "expected"), [
    (None, CUMULATIVE), ("", CUMULATIVE), ("cumulative", CUMULATIVE), ("Cumulative", CUMULATIVE),
    ("delta", DELTA), (" DELTA ", DELTA), ("lowmemory", DELTA), ("LowMemory", DELTA),
    ("sideways", CUMULATIVE)])
def test_temporality_preference(preference: str | None, expected: AggregationTemporality) -> None:
    """The OTLP exporter's meaning for synchronous counters and histograms."""
    assert temporality(preference) == expected


class _Keep(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exports: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def test_pusher_exports_on_flush_and_at_shutdown() -> None:
    sink, exporter = FastSink(), _Keep()
    pusher = MetricsPusher(sink, exporter, Resource.create({"service.name": "t"}),
                           InstrumentationScope("routegate", "0"), interval_s=3600,
                           timeout_s=5)
    assert pusher.force_flush() and not exporter.exports  # nothing recorded yet
    feed(sink, 7, 500)
    assert pusher.force_flush()
    pusher.shutdown()
    assert len(exporter.exports) == 2
    [resource_metrics] = exporter.exports[-1].resource_metrics
    assert resource_metrics.resource.attributes["service.name"] == "t"
    [scope_metrics] = resource_metrics.scope_metrics
    assert (scope_metrics.scope.name, scope_metrics.scope.version) == ("routegate", "0")
    assert {m.name for m in scope_metrics.metrics} == set(a.METRICS)


# The SDK's metric data types aggregate.py builds with keyword arguments: parameter names in
# order, and whether each is required. A change here (a renamed, added required or removed
# field) must be looked at before the SDK's upper bound moves.
PINNED = {
    "MetricsData": [("resource_metrics", True)],
    "ResourceMetrics": [("resource", True), ("scope_metrics", True), ("schema_url", True)],
    "ScopeMetrics": [("scope", True), ("metrics", True), ("schema_url", True)],
    "Metric": [("name", True), ("description", True), ("unit", True), ("data", True)],
    "Sum": [("data_points", True), ("aggregation_temporality", True), ("is_monotonic", True)],
    "Histogram": [("data_points", True), ("aggregation_temporality", True)],
    "NumberDataPoint": [("attributes", True), ("start_time_unix_nano", True),
                        ("time_unix_nano", True), ("value", True), ("exemplars", False)],
    "HistogramDataPoint": [("attributes", True), ("start_time_unix_nano", True),
                           ("time_unix_nano", True), ("count", True), ("sum", True),
                           ("bucket_counts", True), ("explicit_bounds", True), ("min", True),
                           ("max", True), ("exemplars", False)],
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_sdk_metric_data_signatures_are_pinned(name: str) -> None:
    parameters = inspect.signature(getattr(sdk_export, name)).parameters.values()
    assert [(p.name, p.default is inspect.Parameter.empty) for p in parameters] == PINNED[name]


def test_sdk_temporality_values_are_pinned() -> None:
    assert (int(DELTA), int(CUMULATIVE)) == (1, 2)  # OTLP's AggregationTemporality numbers
