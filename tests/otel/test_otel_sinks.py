"""The observer's metric sink: the SDK's instruments with the names, units and buckets the
Grafana dashboard and the deploy tests rely on."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

from routegate.otel import attributes as a
from routegate.otel.sinks import SdkSink

CALL = (a.GEN_AI_OPERATION_NAME, a.GEN_AI_PROVIDER_NAME, a.GEN_AI_REQUEST_MODEL, a.RG_MODEL)
REQUEST = (a.RG_MODEL, a.RG_CATEGORY, a.RG_OUTCOME, a.RG_FALLBACK)


def test_every_metric_with_its_unit_kind_and_buckets() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sink = SdkSink(provider.get_meter("routegate"))
    labels = ("cheap", "chat", "success", False)
    for spec in a.METRICS.values():
        if spec.kind == "histogram":
            sink.record(spec.name, 0.25, REQUEST, labels)
        else:
            sink.add(spec.name, 2, REQUEST, labels)
            sink.add(spec.name, 3, REQUEST, labels)
    data = reader.get_metrics_data()
    assert data is not None
    [resource_metrics] = data.resource_metrics
    [scope_metrics] = resource_metrics.scope_metrics
    by_name = {metric.name: metric for metric in scope_metrics.metrics}
    assert set(by_name) == set(a.METRICS)
    for spec in a.METRICS.values():
        metric = by_name[spec.name]
        assert (metric.unit, metric.description) == (spec.unit, spec.description)
        [point] = metric.data.data_points
        assert dict(point.attributes or {}) == dict(zip(REQUEST, labels, strict=True))
        assert metric.data.aggregation_temporality == AggregationTemporality.CUMULATIVE  # type: ignore[union-attr]
        if spec.kind == "histogram":
            if spec.buckets is not None:
                assert tuple(point.explicit_bounds) == spec.buckets  # type: ignore[union-attr]
            assert point.count == 1  # type: ignore[union-attr]
        else:
            assert metric.data.is_monotonic and point.value == 5  # type: ignore[union-attr]
    provider.shutdown()
