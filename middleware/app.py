"""The standalone gateway: RouterMiddleware around health endpoints.

``create_app(config)`` builds it; ``app`` is the same built lazily from ``ROUTEGATE_CONFIG``
(or ./gateway.toml) on first use, so ``uvicorn routegate.middleware.app:app`` works and importing
this module does nothing.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from routegate.middleware.asgi import RouterMiddleware
from routegate.middleware.asgi_types import Receive, Scope, Send
from routegate.middleware.config import GatewayConfig, load_config, resolve_config_path
from routegate.middleware.errors import error_body

__all__ = ["app", "create_app"]

_json = msgspec.json.Encoder()


class _HealthApp:
    """/healthz (process up), /readyz (can serve: models available, local model alive)."""

    def __init__(self) -> None:
        self.router: RouterMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan_noop(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path in ("/healthz", "/readyz") and scope["method"] not in ("GET", "HEAD"):
            await _json_response(send, 405, error_body(
                f"Use GET for {path}", "invalid_request_error", "method_not_allowed"),
                [(b"allow", b"GET, HEAD")])
        elif path == "/healthz":
            await _json_response(send, 200, b'{"status":"ok"}')
        elif path == "/readyz" and self.router is not None:
            gateway = self.router.gateway
            body = _json.encode({
                "status": "ready" if gateway.ready else "not_ready",
                "available_models": sorted(gateway.available),
                "skipped_providers": gateway.skipped_providers,
                "local_model": None if gateway.local is None else
                ("alive" if gateway.local.alive else "down"),
                **{name: describe() for name, describe in gateway.status.items()},
            })
            await _json_response(send, 200 if gateway.ready else 503, body)
        else:
            await _json_response(send, 404, error_body(
                f"No route for {scope['method']} {path}", "invalid_request_error", "not_found"))


async def _lifespan_noop(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _json_response(send: Send, status: int, body: bytes,
                         extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(extra or ())]})
    await send({"type": "http.response.body", "body": body})


def create_app(config: GatewayConfig | None = None, *,
               config_path: str | Path | None = None) -> RouterMiddleware:
    """The standalone gateway as one ASGI app (serve it with uvicorn, lifespan on)."""
    health = _HealthApp()
    router = RouterMiddleware(health, config=config or load_config(resolve_config_path(
        None if config_path is None else str(config_path))))
    health.router = router
    return router


class _LazyApp:
    """Builds the app on first ASGI call, not at import."""

    def __init__(self) -> None:
        self._app: RouterMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)


app = _LazyApp()
