"""The request path: ASGI entry, gateway, classification to plan, relay with fallbacks, errors."""
