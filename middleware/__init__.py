"""routegate.middleware: the gateway as ASGI middleware, standalone app and CLI."""

from routegate.middleware.app import create_app
from routegate.middleware.asgi import RouterMiddleware
from routegate.middleware.config import ConfigError, GatewayConfig, load_config, parse_config
from routegate.middleware.gateway import Gateway

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "RouterMiddleware",
    "create_app",
    "load_config",
    "parse_config",
]
