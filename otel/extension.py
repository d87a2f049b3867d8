"""TelemetryExtension: switches the observer on at gateway start, flushes at stop."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Protocol

from opentelemetry import metrics, trace

from routegate.otel.observer import TelemetryObserver
from routegate.otel.setup import Environ, Telemetry, TelemetrySettings, setup_telemetry

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

__all__ = ["ObservedGateway", "TelemetryExtension"]


class _Observers(Protocol):
    def add(self, observer: TelemetryObserver) -> None: ...


class ObservedGateway(Protocol):
    """What the extension needs of the gateway: its observer registry."""

    @property
    def observers(self) -> _Observers: ...


class TelemetryExtension:
    """A gateway extension (``start``/``stop``, see ``routegate.middleware.contracts.Extension``).

    ``start`` resolves the providers (see :mod:`routegate.otel.setup`); when telemetry is off
    it registers nothing, so the request path pays nothing. ``tracer_provider`` /
    ``meter_provider`` inject providers (tests with in-memory exporters, hosts that manage
    their own); routegate never shuts those down, it only flushes them. ``span_processor``
    (tests) receives the spans through the SDK provider and light tracer routegate builds.
    """

    def __init__(self, config: TelemetrySettings, *,
                 tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None,
                 span_processor: SpanProcessor | None = None,
                 environ: Environ = os.environ.get) -> None:
        self._config = config
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._span_processor = span_processor
        self._environ = environ
        self.telemetry: Telemetry | None = None
        self.observer: TelemetryObserver | None = None

    async def start(self, gateway: ObservedGateway) -> None:
        # Building gRPC channels and reading certificates is blocking work: keep it off the loop.
        self.telemetry = await asyncio.to_thread(
            setup_telemetry, self._config, tracer_provider=self._tracer_provider,
            meter_provider=self._meter_provider, span_processor=self._span_processor,
            environ=self._environ)
        if self.telemetry is None:
            return
        self.observer = TelemetryObserver(self.telemetry.tracer(), self.telemetry.sink(),
                                          capture_content=self._config.capture_content)
        gateway.observers.add(self.observer)

    async def stop(self) -> None:
        telemetry, self.telemetry = self.telemetry, None
        if telemetry is None:
            return
        # Export what is buffered: the last requests' spans must not die with the process.
        await asyncio.to_thread(telemetry.force_flush)
        await asyncio.to_thread(telemetry.shutdown)
