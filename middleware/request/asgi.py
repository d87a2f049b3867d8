"""RouterMiddleware: the gateway as pure ASGI middleware inside any Starlette/FastAPI app.

Requests to the gateway's paths (``{prefix}/chat/completions``, ``{prefix}/models``,
``{prefix}/messages``; prefix ``/v1`` by default) are answered here as pure ASGI; its operator
paths (``{prefix}/feedback``, ``/admin`` with a token) by its Starlette routes; every other
scope (other paths, websockets, the host's own middleware stack) passes to the wrapped app
untouched. The gateway starts with the host's
lifespan, or on the first gateway request when the host runs without one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from routegate.middleware.asgi_types import ASGIApp, Message, Receive, Scope, Send
from routegate.middleware.config import GatewayConfig, load_config, resolve_config_path
from routegate.middleware.extensions import default_extensions
from routegate.middleware.operations.operator import match_route
from routegate.middleware.request.gateway import Gateway

__all__ = ["RouterMiddleware"]


class RouterMiddleware:
    """``app.add_middleware(RouterMiddleware, config=cfg)`` or ``RouterMiddleware(app, ...)``."""

    def __init__(self, app: ASGIApp, *, config: GatewayConfig | None = None,
                 config_path: str | Path | None = None, gateway: Gateway | None = None) -> None:
        self.app = app
        if gateway is None:
            config = config or load_config(resolve_config_path(
                None if config_path is None else str(config_path)))
            gateway = Gateway(config, extensions=default_extensions(config))
        self.gateway = gateway
        self._started = False
        self._start_lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if not self._started:
                await self.startup()  # host without lifespan: extensions add endpoints at start
            if scope["path"] in self.gateway.endpoints:  # the hot path: chat, messages, models
                await self.gateway(scope, receive, send)
                return
            route = match_route(self.gateway.routes, scope)  # feedback, /admin (Starlette)
            if route is not None:
                await route.handle(scope, receive, send)
                return
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
        else:
            await self.app(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
            return message

        return wrapped

    async def startup(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.gateway.start()
                self._started = True

    async def shutdown(self) -> None:
        async with self._start_lock:
            if self._started:
                await self.gateway.stop()
                self._started = False
