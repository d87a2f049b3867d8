"""``POST /admin/reload``: re-read gateway.toml and swap it in between two requests.

An invalid file (or one needing a restart) is rejected with its error and the running config
stays. So is one that would drop every client key, every model or the admin token (a
truncated file would silently open the gateway), unless ``allow_shrink`` says it is meant.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Protocol

from routegate.middleware.config import ConfigError, GatewayConfig, load_config, resolve_config_path
from routegate.middleware.operations.budgets import ClientLimiter
from routegate.middleware.operations.feedback import FeedbackStore
from routegate.middleware.operations.model_health import Controls, HealthRegistry
from routegate.middleware.request.errors import InvalidRequest
from routegate.middleware.request.gateway import Gateway

__all__ = ["ReloadHost", "describe_changes", "reload_config"]

log = logging.getLogger("routegate")


class ReloadHost(Protocol):
    """What a reload reads and rebuilds (the adaptive extension; admin.AdminHost has it)."""

    config_path: str | Path | None
    reloaded_at: float | None
    reconfiguring: asyncio.Task[None] | None
    registry: HealthRegistry
    controls: Controls
    limiter: ClientLimiter
    feedback: FeedbackStore

    @property
    def gateway(self) -> Gateway: ...
    @property
    def config(self) -> GatewayConfig: ...
    def wall(self) -> float: ...
    def configure_admin(self, config: GatewayConfig) -> None: ...
    def admin_token(self, config: GatewayConfig) -> str | None: ...


def reload_config(host: ReloadHost, token: str | None, allow_shrink: bool = False) -> dict[str, Any]:
    """Load the file, check it, swap it in; 400 ``invalid_config`` keeps the old one.
    ``token`` is the admin token in force (a file losing it is a shrink)."""
    path = Path(host.config_path or host.config.admin.config_path or resolve_config_path(None))
    old = host.config
    try:
        config = load_config(path)
        if not allow_shrink:
            _check_shrink(old, config, token, host.admin_token(config))
        _swap(host, config)
    except ConfigError as exc:
        raise InvalidRequest(f"Reload rejected, running config kept: {exc}",
                             code="invalid_config") from exc
    host.reloaded_at = host.wall()
    log.info("config reloaded from %s: %s", path, describe_changes(old, config))
    return {"reloaded": True, "path": str(path), "models": sorted(config.models),
            "available": sorted(host.gateway.available)}


def _check_shrink(old: GatewayConfig, new: GatewayConfig, token: str | None,
                  new_token: str | None) -> None:
    lost = [what for what, before, after in (
        ("every client key (requests would need no key)", old.clients, new.clients),
        ("every model", old.models, new.models),
        ("the admin token (the admin API would be gone until a restart)", token, new_token),
    ) if before and not after]
    if lost:
        raise ConfigError(f"the new file removes {' and '.join(lost)}; if that is meant, "
                          "reload with ?allow_shrink=true")


def _swap(host: ReloadHost, config: GatewayConfig) -> None:
    """Everything is built first; the assignments at the end run without an await between
    them, so a request sees either the old config or the new one, never a mix. Requests in
    flight finish on the relay they started with."""
    gw = host.gateway
    if config.server.prefix != gw.config.server.prefix:
        raise ConfigError("server.prefix: changing it needs a restart")
    gw.install(config)  # raises ConfigError, keeping the old pool
    from routegate.sidecar.client import SidecarClassifier
    from routegate.sidecar.heuristic import HeuristicClassifier
    from routegate.sidecar.routes import route_specs

    if isinstance(gw.classifier, HeuristicClassifier):
        gw.classifier = HeuristicClassifier(config.categories, config.classifier.default_category)
    elif isinstance(gw.classifier, SidecarClassifier):  # re-teach the routes' examples
        host.reconfiguring = asyncio.get_running_loop().create_task(
            gw.classifier.reconfigure(route_specs(config.routes, config.categories)))
    host.registry.configure(config)
    host.limiter.configure(config)
    host.feedback.capacity = max(1, config.adaptive.feedback_memory)
    host.controls.disabled &= set(config.models)
    host.configure_admin(config)


def describe_changes(old: GatewayConfig, new: GatewayConfig) -> str:
    """What a reload added, removed and changed, by name only (never keys or their hashes)."""
    parts: list[str] = []
    for section in ("models", "providers", "clients", "routes"):
        before, after = getattr(old, section), getattr(new, section)
        for sign, names in (("+", sorted(after.keys() - before.keys())),
                            ("-", sorted(before.keys() - after.keys())),
                            ("~", sorted(n for n in before.keys() & after.keys()
                                         if before[n] != after[n]))):
            if names:
                parts.append(f"{section} {sign}{','.join(names)}")
    return "; ".join(parts) or "no model, provider, client or route changed"
