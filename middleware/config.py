"""gateway.toml decoded once into frozen msgspec Structs.

Every section is a Struct with ``forbid_unknown_fields``: a typo in a key fails at startup
with the TOML key path (``models."gpt-4o".capabilites: unknown key``) instead of being ignored.
Cross references (a model's provider, a route's candidates, fallback chains) are checked after
decoding so a dangling name fails the same way. Nothing here reads the environment except
:func:`resolve_config_path`; provider keys and the Redis URL (``StateConfig.resolve_url``)
are looked up by the app at start.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from routegate.middleware.config_schema import (
    DEFAULT_CATEGORIES,
    DEFAULT_CONTEXT_WINDOW,
    AdaptiveConfig,
    AdminConfig,
    BreakerConfig,
    ClassifierConfig,
    ClientConfig,
    ConfigError,
    GatewayConfig,
    LocalConfig,
    ModelConfig,
    ProviderConfig,
    RecoveryConfig,
    RetryConfig,
    RouteConfig,
    ServerConfig,
    SessionsConfig,
    SloConfig,
    StateConfig,
    TelemetryConfig,
    Timeouts,
    UsageConfig,
    redacted_redis_url,
    redis_url_problem,
)
from routegate.middleware.upstream.origins import shared_origin_conflict, upstream_problem

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
    "SessionsConfig",
    "SloConfig",
    "StateConfig",
    "TelemetryConfig",
    "Timeouts",
    "UsageConfig",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

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


def _check_state(state: StateConfig) -> None:
    """[state]: timings within bounds, names without whitespace, and for ``redis`` exactly
    one of ``url`` / ``url_env`` (the URL is checked here, the variable when it is read).
    Messages show the URL redacted: it may carry a password."""
    _within("state.connect_timeout_s", state.connect_timeout_s, 0.0, 10.0, open_low=True)
    _within("state.command_timeout_s", state.command_timeout_s, 0.0, 5.0, open_low=True)
    _within("state.flush_interval_s", state.flush_interval_s, 0.05, 5.0)
    _within("state.resync_interval_s", state.resync_interval_s, 0.5, 60.0)
    _within("state.heartbeat_ttl_s", state.heartbeat_ttl_s, 1.0, 300.0)
    _within("state.feedback_ttl_s", state.feedback_ttl_s, 10.0, 7 * 86_400.0)
    if state.heartbeat_ttl_s <= state.flush_interval_s:  # else live replicas would expire
        raise ConfigError("state.heartbeat_ttl_s: must exceed state.flush_interval_s")
    for key, value in (("key_prefix", state.key_prefix), ("replica_id", state.replica_id)):
        if len(value) > 128 or any(c.isspace() for c in value):
            raise ConfigError(f"state.{key}: at most 128 characters, no whitespace")
    if not state.key_prefix:
        raise ConfigError("state.key_prefix: must not be empty (several gateways may share "
                          "one Redis)")
    if state.url and state.url_env:
        raise ConfigError("state.url: set url or url_env, not both")
    if state.url_env and not (state.url_env.isidentifier() and state.url_env.isascii()):
        raise ConfigError(f"state.url_env: not an environment variable name: {state.url_env!r}")
    if state.url:
        problem = redis_url_problem(state.url)
        if problem:
            raise ConfigError(f"state.url: {problem} (got {redacted_redis_url(state.url)})")
    elif state.backend == "redis" and not state.url_env:
        raise ConfigError('state.url: required (or state.url_env) for backend = "redis"')


def _check_bounds(config: GatewayConfig) -> None:
    """Numeric keys within sane bounds. Prices, windows, budgets and rates feed the budget
    reservations: never negative (a negative price would make a reservation a refund), and
    finite."""
    _within("retry.same_model_5xx", config.retry.same_model_5xx, 0, 3)
    _check_state(config.state)
    _within("sessions.ttl_s", config.sessions.ttl_s, 1.0, 7 * 86_400.0)
    _within("sessions.max_entries", config.sessions.max_entries, 1, 10_000_000)
    _check_breaker("adaptive.breaker", config.adaptive.breaker)
    _within("adaptive.feedback_per_minute", config.adaptive.feedback_per_minute, 0, _MAX_PER_MINUTE)
    classifier = config.classifier
    _within("classifier.llm_max_tokens", classifier.llm_max_tokens, 8,
            classifier.llm_context_size // 2)  # the other half: instruction and route list
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
