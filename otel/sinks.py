"""Where the observer's measurements go: the :class:`MetricSink` protocol and :class:`SdkSink`.

:class:`SdkSink` records through a MeterProvider's instruments; it serves a host's provider
(and injected ones). For the pipeline routegate builds itself, measurements go to
:class:`routegate.otel.aggregate.FastSink` instead (same names, units, label sets, buckets).
"""

from __future__ import annotations

from typing import Protocol

from opentelemetry import metrics
from opentelemetry.util.types import AttributeValue

from routegate.otel.attributes import METRICS

__all__ = ["Labels", "MetricSink", "Names", "SdkSink"]

Labels = tuple[AttributeValue, ...]
Names = tuple[str, ...]


class MetricSink(Protocol):
    def record(self, name: str, value: float, names: Names, values: Labels) -> None:
        """One measurement of the histogram ``name`` with labels ``zip(names, values)``."""

    def add(self, name: str, amount: float, names: Names, values: Labels) -> None:
        """Add to the monotonic counter ``name``."""


class SdkSink:
    """Measurements through a MeterProvider's histograms and counters."""

    def __init__(self, meter: metrics.Meter) -> None:
        self._histograms: dict[str, metrics.Histogram] = {}
        self._counters: dict[str, metrics.Counter] = {}
        for spec in METRICS.values():
            if spec.kind == "histogram":
                self._histograms[spec.name] = meter.create_histogram(
                    spec.name, spec.unit, spec.description,
                    explicit_bucket_boundaries_advisory=spec.buckets)
            else:
                self._counters[spec.name] = meter.create_counter(spec.name, spec.unit,
                                                                 spec.description)

    def record(self, name: str, value: float, names: Names, values: Labels) -> None:
        self._histograms[name].record(value, dict(zip(names, values, strict=True)))

    def add(self, name: str, amount: float, names: Names, values: Labels) -> None:
        self._counters[name].add(amount, dict(zip(names, values, strict=True)))
