"""routegate's own metric aggregation exports what the SDK's instruments would."""

from __future__ import annotations

import random
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from routegate.otel import attributes as a
from routegate.otel.sinks import FastSink, MetricsPusher, SdkSink

CALL = (a.GEN_AI_OPERATION_NAME, a.GEN_AI_PROVIDER_NAME, a.GEN_AI_REQUEST_MODEL, a.RG_MODEL)
REQUEST = (a.RG_MODEL, a.RG_CATEGORY, a.RG_OUTCOME, a.RG_FALLBACK)


def feed(sink: SdkSink | FastSink) -> None:
    rng = random.Random(7)
    for i in range(500):
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
        out[metric.name] = (metric.unit, metric.description, type(metric.data).__name__,
                            getattr(metric.data, "is_monotonic", None),
                            int(metric.data.aggregation_temporality), points)
    return out


def test_fast_sink_matches_the_sdk_instruments() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sdk, fast = SdkSink(provider.get_meter("routegate")), FastSink()
    feed(sdk)
    feed(fast)
    data = reader.get_metrics_data()
    assert data is not None
    [resource_metrics] = data.resource_metrics
    [scope_metrics] = resource_metrics.scope_metrics
    expected = normalized(list(scope_metrics.metrics))
    assert set(expected) == set(a.METRICS)
    assert normalized(fast.snapshot()) == expected
    provider.shutdown()


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
    feed(sink)
    assert pusher.force_flush()
    pusher.shutdown()
    assert len(exporter.exports) == 2
    [resource_metrics] = exporter.exports[-1].resource_metrics
    assert resource_metrics.resource.attributes["service.name"] == "t"
    [scope_metrics] = resource_metrics.scope_metrics
    assert {m.name for m in scope_metrics.metrics} == set(a.METRICS)
