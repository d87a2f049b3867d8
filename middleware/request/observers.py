"""The observer fan-out: one call per event reaches every observer the gateway has.

Telemetry (spans, metrics) and live health (windows, breakers) are observers (the protocol is in
:mod:`routegate.middleware.contracts`): the relay calls them at fixed points and never knows what
they do. An observer must be fast and must not raise; each call is guarded so a broken observer
can never fail a request.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from routegate.middleware.contracts import AttemptInfo, Observer, RequestContext, RequestOutcome

__all__ = ["Observers"]

log = logging.getLogger("routegate")


class Observers:
    """Fans each event out to every observer; an observer's exception is logged, not raised.
    (The bound methods are listed once per event when an observer is added: this runs five
    times per request.)"""

    __slots__ = ("_attempt_end", "_attempt_start", "_classified", "_observers", "_request",
                 "_request_end")

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self._observers: list[Observer] = []
        self._request: list[Any] = []
        self._classified: list[Any] = []
        self._attempt_start: list[Any] = []
        self._attempt_end: list[Any] = []
        self._request_end: list[Any] = []
        for observer in observers or []:
            self.add(observer)

    def add(self, observer: Observer) -> None:
        self._observers.append(observer)
        self._request.append(observer.on_request)
        self._classified.append(observer.on_classified)
        self._attempt_start.append(observer.on_attempt_start)
        self._attempt_end.append(observer.on_attempt_end)
        self._request_end.append(observer.on_request_end)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def on_request(self, ctx: RequestContext) -> None:
        for method in self._request:
            try:
                method(ctx)
            except Exception:  # noqa: BLE001 -- an observer must never fail a request
                _failed(method)

    def on_classified(self, ctx: RequestContext) -> None:
        for method in self._classified:
            try:
                method(ctx)
            except Exception:  # noqa: BLE001
                _failed(method)

    def on_attempt_start(self, ctx: RequestContext, attempt: AttemptInfo,
                         request: httpx.Request) -> None:
        for method in self._attempt_start:
            try:
                method(ctx, attempt, request)
            except Exception:  # noqa: BLE001
                _failed(method)

    def on_attempt_end(self, ctx: RequestContext, attempt: AttemptInfo) -> None:
        for method in self._attempt_end:
            try:
                method(ctx, attempt)
            except Exception:  # noqa: BLE001
                _failed(method)

    def on_request_end(self, ctx: RequestContext, outcome: RequestOutcome) -> None:
        for method in self._request_end:
            try:
                method(ctx, outcome)
            except Exception:  # noqa: BLE001
                _failed(method)


def _failed(method: Any) -> None:
    log.exception("observer %r failed", method)
