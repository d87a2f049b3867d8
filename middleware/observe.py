"""What one request and each of its attempts looked like, and the observers that hear about it.

Telemetry (spans, metrics) and live health (windows, breakers) are observers: the relay calls
them at fixed points and never knows what they do. An observer must be fast and must not raise;
the relay guards each call so a broken observer can never fail a request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from routegate.middleware.providers.base import UpstreamFailure
from routegate.middleware.wire.openai import Usage
from routegate.sidecar.protocol import Classification

__all__ = ["AttemptInfo", "Observer", "Observers", "RequestContext", "RequestOutcome"]

log = logging.getLogger("routegate")


@dataclass(slots=True)
class AttemptInfo:
    index: int  # 0-based position among this request's attempts
    model: str  # pool model name
    provider: str  # provider name from gateway.toml
    provider_type: str
    upstream_model: str
    started_at: float  # time.perf_counter()
    ended_at: float = 0.0
    first_token_at: float | None = None
    failure: UpstreamFailure | None = None
    usage: Usage | None = None
    response_model: str = ""
    finish_reasons: tuple[str, ...] = ()
    cost_usd: float | None = None
    committed: bool = False  # bytes of this attempt reached the client
    error_after_first_byte: str | None = None
    client_disconnected: bool = False
    continuation_of: int | None = None  # mid-stream recovery: index of the attempt continued
    retried: bool = False  # failed, and the next attempt retries the same model

    @property
    def usage_estimated(self) -> bool:
        """``usage`` was counted by the gateway: the provider reported none."""
        return getattr(self.usage, "estimated", False) is True

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at


@dataclass(slots=True)
class RequestOutcome:
    status: int
    result: Literal["success", "error", "client_error", "disconnected"]
    model: str | None = None  # pool model that answered
    error_type: str | None = None


@dataclass(slots=True)
class RequestContext:
    request_id: str
    path: str
    headers: dict[str, str]  # lower-case request headers (never logged or traced wholesale)
    started_at: float
    client: str | None = None  # the client key's name (None: the gateway has no client keys)
    requested_model: str = ""
    stream: bool = False
    category: str | None = None
    classification: Classification | None = None
    classify_started_at: float | None = None
    classify_ended_at: float | None = None
    attempts: list[AttemptInfo] = field(default_factory=list)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # per-observer scratch space
    recoveries: int = 0  # streams broken mid-answer and continued on another model
    probes: tuple[str, ...] = ()  # models this request probes (half-open breakers)

    @property
    def owner(self) -> str:
        """Unique among requests in flight, unlike ``request_id`` (a client may repeat its
        x-request-id): keys what one request holds, such as a breaker's probe."""
        return f"{id(self):x}"


class Observer(Protocol):
    def on_request(self, ctx: RequestContext) -> None: ...
    def on_classified(self, ctx: RequestContext) -> None: ...
    def on_attempt_start(self, ctx: RequestContext, attempt: AttemptInfo,
                         request: httpx.Request) -> None: ...
    def on_attempt_end(self, ctx: RequestContext, attempt: AttemptInfo) -> None: ...
    def on_request_end(self, ctx: RequestContext, outcome: RequestOutcome) -> None: ...


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
