"""routegate.middleware: the gateway as ASGI middleware, standalone app and CLI.

The public names below load on first use (PEP 562), so importing one submodule, such as the
shared contracts that ``routegate.sidecar`` and ``routegate.otel`` depend on, runs nothing else.
Their types are in ``__init__.pyi`` (a stub is never executed, so it adds no import edge).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "RouterMiddleware",
    "create_app",
    "load_config",
    "parse_config",
]

_HOMES = {
    "ConfigError": "routegate.middleware.config",
    "GatewayConfig": "routegate.middleware.config",
    "load_config": "routegate.middleware.config",
    "parse_config": "routegate.middleware.config",
    "Gateway": "routegate.middleware.request.gateway",
    "RouterMiddleware": "routegate.middleware.request.asgi",
    "create_app": "routegate.middleware.standalone.app",
}

def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'routegate.middleware' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value
