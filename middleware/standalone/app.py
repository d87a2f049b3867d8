"""The standalone gateway: a Starlette application with RouterMiddleware mounted.

``create_app(config)`` builds it; ``app`` is the same built lazily from ``ROUTEGATE_CONFIG``
(or ./gateway.toml) on first use, so ``uvicorn routegate.middleware.standalone.app:app`` works and importing
this module does nothing. The app's own routes are ``/healthz`` and ``/readyz``; the gateway's
paths (chat, messages, models: pure ASGI; feedback, ``/admin``: its Starlette routes) are
answered by the middleware before Starlette's routing sees them.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from routegate.middleware.asgi_types import ASGIApp, Receive, Scope, Send
from routegate.middleware.config import GatewayConfig, load_config, resolve_config_path
from routegate.middleware.operations.operator import JSONAnswer, OperatorRoute
from routegate.middleware.request.asgi import RouterMiddleware
from routegate.middleware.request.errors import GatewayError
from routegate.middleware.request.gateway import Gateway

__all__ = ["GatewayApp", "app", "create_app"]


class GatewayApp(Starlette):
    """Starlette with the gateway's RouterMiddleware as its outermost middleware; ``gateway``,
    ``startup`` and ``shutdown`` reach the middleware (for in-process use without a server)."""

    def __init__(self, router: RouterMiddleware) -> None:
        self.router_middleware = router
        super().__init__(
            routes=[OperatorRoute("/healthz", _healthz, methods=["GET"]),
                    OperatorRoute("/readyz", self._readyz, methods=["GET"])],
            middleware=[Middleware(_mount, router=router)],
            exception_handlers={GatewayError: _error, HTTPException: _error})

    @property
    def gateway(self) -> Gateway:
        return self.router_middleware.gateway

    @gateway.setter
    def gateway(self, gateway: Gateway) -> None:  # before start: the bench swaps transports
        self.router_middleware.gateway = gateway

    async def startup(self) -> None:
        await self.router_middleware.startup()

    async def shutdown(self) -> None:
        await self.router_middleware.shutdown()

    async def _readyz(self, request: Request) -> Response:
        """200 when the gateway can serve (models available, local model alive), else 503."""
        gateway = self.gateway
        parts = {name: describe() for name, describe in gateway.status.items()}
        # degraded: serving, but a part it shares state through is down (see [state])
        degraded = any(isinstance(part, dict) and part.get("degraded") for part in parts.values())
        status = "degraded" if degraded else "ready"
        return JSONAnswer({
            "status": status if gateway.ready else "not_ready",
            "available_models": sorted(gateway.available),
            "skipped_providers": gateway.skipped_providers,
            "local_model": None if gateway.local is None else
            ("alive" if gateway.local.alive else "down"),
            **parts,
        }, 200 if gateway.ready else 503)


def _mount(app: ASGIApp, router: RouterMiddleware) -> ASGIApp:
    router.app = app  # Starlette's own stack (routing, error handlers) behind the middleware
    return router


async def _healthz(request: Request) -> Response:
    """The process is up."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def _error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 (and any GatewayError) as the API's error body."""
    if isinstance(exc, HTTPException):
        missing = exc.status_code == 404
        exc = GatewayError(f"No route for {request.method} {request.url.path}" if missing
                           else exc.detail, status=exc.status_code,
                           code="not_found" if missing else None, headers=dict(exc.headers or {}))
    assert isinstance(exc, GatewayError)
    return Response(exc.body(), exc.status, headers=exc.headers, media_type="application/json")


def create_app(config: GatewayConfig | None = None, *,
               config_path: str | Path | None = None) -> GatewayApp:
    """The standalone gateway as one ASGI app (serve it with uvicorn, lifespan on)."""
    return GatewayApp(RouterMiddleware(_unmounted, config=config or load_config(
        resolve_config_path(None if config_path is None else str(config_path)))))


async def _unmounted(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("RouterMiddleware is mounted when the Starlette app builds its stack")


class _LazyApp:
    """Builds the app on first ASGI call, not at import."""

    def __init__(self) -> None:
        self._app: GatewayApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)


app = _LazyApp()
