from routegate.middleware.config import ConfigError as ConfigError
from routegate.middleware.config import GatewayConfig as GatewayConfig
from routegate.middleware.config import load_config as load_config
from routegate.middleware.config import parse_config as parse_config
from routegate.middleware.request.asgi import RouterMiddleware as RouterMiddleware
from routegate.middleware.request.gateway import Gateway as Gateway
from routegate.middleware.standalone.app import create_app as create_app

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "RouterMiddleware",
    "create_app",
    "load_config",
    "parse_config",
]
