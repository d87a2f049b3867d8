"""The contracts every room shares, in one leaf module that imports nothing of the project.

``routegate.sidecar`` and ``routegate.otel`` depend on these and never on the rest of
``routegate.middleware``, which wires them in one place (``middleware/extensions.py``):

* what a classifier answers and the protocol the router asks it through;
* one request's context as observers see it (attempts, failures, usage, outcome), and the
  observer protocol;
* extensions (features started beside the core) and the chat policy an extension installs;
* the shared-state protocol: live state the replicas of one deployment share (Redis/Valkey,
  ``middleware/state/``); the memory backend is the absence of one (each process alone).

``tests/test_import_graph.py`` fails if this module imports anything from ``routegate``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import httpx
import msgspec

__all__ = [
    "AttemptInfo",
    "ChatPolicy",
    "Classification",
    "Classifier",
    "Complexity",
    "Extension",
    "ExtensionHost",
    "FailureKind",
    "Method",
    "Observer",
    "ObserverRegistry",
    "RequestContext",
    "RequestOutcome",
    "ReserveVerdict",
    "SharedEvent",
    "SharedState",
    "StateUnavailable",
    "UpstreamFailure",
    "Usage",
]

# --- classification ----------------------------------------------------------------------

Complexity = Literal["simple", "complex"]
# Which stage decided: a cached answer, the fast lexical stage, the model, the generative
# (instruct model) stage, or the fallback used when the sidecar is down, overloaded or the
# budget ran out.
Method = Literal["cache", "lexical", "model", "llm", "fallback"]


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    category: str
    complexity: Complexity
    confidence: float
    method: Method
    latency_ms: float


class Classifier(Protocol):
    """Anything the router can ask. Must answer within its budget, never raise."""

    async def classify(self, text: str) -> Classification: ...


# --- one request, as observers see it ----------------------------------------------------

FailureKind = Literal[
    "connect",  # could not connect / connection refused / DNS
    "timeout",  # connect or first-token deadline passed
    "status",  # an HTTP error status
    "malformed",  # 200 with a body that is not a valid answer
    "reset",  # connection broken before the first event
]


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """Why one attempt failed, and what that means for the plan."""

    kind: FailureKind
    detail: str  # short, secret-free: shown to clients in the all-failed error
    status: int | None = None
    retry_after_s: float | None = None
    context_exceeded: bool = False  # try only candidates with a larger context window
    client_fault: bool = False  # the request itself is bad: return it, never retry
    client_body: bytes | None = None  # OpenAI-format error body to return when client_fault
    code: str | None = None


class Usage(msgspec.Struct):
    """Token counts of one answer (OpenAI's ``usage`` object)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


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


class ObserverRegistry(Protocol):
    def add(self, observer: Observer) -> None: ...


# --- extensions ----------------------------------------------------------------------------

HostT = TypeVar("HostT", contravariant=True)
ViewT = TypeVar("ViewT", covariant=True)
RequestT = TypeVar("RequestT", contravariant=True)
PlanT = TypeVar("PlanT", contravariant=True)


class ExtensionHost(Protocol):
    """What an extension from another room may use of the gateway: the classifier slot, the
    observer registry and the parts of /readyz."""

    classifier: Classifier
    status: dict[str, Callable[[], object]]

    @property
    def observers(self) -> ObserverRegistry: ...


class Extension(Protocol[HostT]):
    """A feature that lives beside the core (telemetry, the classifier sidecar, admin, other
    ingress formats), started after the pool is built. ``HostT`` is what it needs of the
    gateway: :class:`ExtensionHost` for the sidecar and telemetry, the whole gateway for the
    request path's own extensions."""

    async def start(self, gateway: HostT) -> None: ...
    async def stop(self) -> None: ...


class ChatPolicy(Protocol[ViewT, RequestT, PlanT]):
    """Live routing inputs and admission for chat requests (health, weights, client budgets),
    installed by an extension as ``gateway.policy``; the request path fixes the types."""

    def route_view(self, ctx: RequestContext) -> ViewT: ...
    async def admit(self, ctx: RequestContext, request: RequestT, plan: PlanT) -> None: ...
    def settle(self, ctx: RequestContext) -> None: ...


# --- shared state ----------------------------------------------------------------------------


class StateUnavailable(Exception):
    """The shared state did not answer within its command timeout (or refused the connection)."""


class SharedEvent(msgspec.Struct, frozen=True):
    """One message to the other replicas (a replica never hears its own)."""

    topic: str
    origin: str  # the replica that sent it
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReserveVerdict:
    outcome: Literal["ok", "rate", "daily", "monthly"]
    spent: float = 0.0  # the day's (or month's) spend before this request
    reserved: float = 0.0  # held by requests in flight (this one included when ok)
    retry_after_s: float = 0.0


class SharedState(Protocol):
    """Live state shared by the replicas of one deployment. Budget checks are awaited (one
    atomic step, bounded by a timeout, StateUnavailable past it); everything else is queued
    and sent in batches, and arrives at the other replicas as :class:`SharedEvent`; routing
    never waits on it. ``Client`` is the backend's client handed to flush and resync hooks."""

    replica_id: str

    async def reserve(self, client: str, hold_id: str, amount: float, *, daily_usd: float,
                      monthly_usd: float, requests_per_minute: int, day: str, month: str,
                      hold_ttl_s: float) -> ReserveVerdict: ...
    def settle(self, client: str, hold_id: str, charged: float, *, day: str,
               month: str) -> None: ...
    async def client_totals(self, clients: list[str], day: str,
                            month: str) -> dict[str, dict[str, float]]: ...
    def publish(self, topic: str, payload: dict[str, Any]) -> None: ...
    def subscribe(self, topic: str, handler: Callable[[SharedEvent], None]) -> None: ...
    def add_flush_hook(self, hook: Callable[[Any], Awaitable[None]]) -> None: ...
    def add_resync_hook(self, hook: Callable[[Any], Awaitable[None]]) -> None: ...
    def set_heartbeat(self, describe: Callable[[], dict[str, Any]]) -> None: ...
    async def replicas(self) -> dict[str, dict[str, Any]]: ...
    def status(self) -> dict[str, object]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
