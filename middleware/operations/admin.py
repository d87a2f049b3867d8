"""The operator API under ``/admin``, over the adaptive extension's state
(``middleware/operations/adaptive.py``).

    GET  /admin/                    the operator dashboard (one static page; data needs the token)
    GET  /admin/stats               per model / provider / category / client numbers
    GET  /admin/weights             operator overrides and disabled models
    PUT  /admin/weights             {"model", "category"="*", "weight"?, "pin"?, "ttl_s"?}
    DELETE /admin/weights?model=M&category=C
    POST /admin/models/{name}/disable | /enable
    POST /admin/breakers/{name}/reset
    POST /admin/reload              re-read gateway.toml; invalid: 400 with the error, old kept;
                                    ?allow_shrink=true to drop every client, model or the token
    POST /admin/explain             a chat request, dry-run: classification, plan, weights, reasons

Every ``/admin`` path except the page itself needs ``Authorization: Bearer <token>`` where the
token is the value of the environment variable named by ``admin.token_env``; without one the
whole ``/admin`` tree does not exist (404). The compare is constant-time and runs before any
route is looked up or a body read. The routes are Starlette's (``middleware/operations/operator.py``):
a known path with the wrong method is a 405 with ``allow``.

With ``[state] backend = "redis"`` weights, pins, disabled models and reloads are the fleet's
(``middleware/state/operator_sync.py``): a change is written to Redis before it is applied, and
while Redis does not answer it is refused with 503 ``state_unavailable``, changing nothing on any
replica (a reload is done here first and says so in its 503). ``/admin/stats`` adds ``fleet``:
every replica's heartbeat, which ones are alive, and their numbers summed.
"""


from __future__ import annotations

import asyncio
import hmac
import importlib.resources
from pathlib import Path
from typing import Any, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from routegate.middleware.asgi_types import Receive, Scope, Send
from routegate.middleware.config import GatewayConfig
from routegate.middleware.contracts import Classification, SharedState, StateUnavailable
from routegate.middleware.operations.admin_fleet import FleetControls, apply_change, fleet_stats
from routegate.middleware.operations.budgets import ClientLimiter, reservation_usd
from routegate.middleware.operations.config_reload import reload_config
from routegate.middleware.operations.feedback import FeedbackStore, SharedStateDown
from routegate.middleware.operations.model_health import WINDOWS, Controls, HealthRegistry
from routegate.middleware.operations.operator import (
    JSONAnswer,
    OperatorApp,
    OperatorRoute,
    context,
    operator_router,
)
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.errors import GatewayError, InvalidRequest, Unauthorized
from routegate.middleware.request.gateway import Gateway
from routegate.middleware.request.intake import read_body
from routegate.middleware.request.routing import Candidate, Override, RouteView, plan_route
from routegate.middleware.wire.openai import message_text

__all__ = ["ADMIN_BODY_LIMIT", "MAX_TTL_S", "AdminApi", "AdminHost"]

ADMIN_BODY_LIMIT = 1 << 20  # admin (and feedback) bodies are small JSON documents
MAX_TTL_S = 30 * 86_400.0  # an override outliving a month is config, not an operator's nudge


class WeightChange(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    category: str = "*"
    weight: float | None = None
    pin: bool = False
    ttl_s: float | None = None  # expiry relative to now
    expires_at: float | None = None  # or absolute (unix time)


_weight_decoder = msgspec.json.Decoder(WeightChange)


class AdminHost(Protocol):
    """What the admin API reads and changes: the adaptive extension's live state."""

    config_path: str | Path | None
    by_category: dict[str, dict[str, int]]
    reloaded_at: float | None
    started_at: float
    reconfiguring: asyncio.Task[None] | None
    registry: HealthRegistry
    controls: Controls
    limiter: ClientLimiter
    feedback: FeedbackStore
    shared: SharedState | None
    operator_sync: FleetControls | None

    @property
    def gateway(self) -> Gateway: ...
    @property
    def config(self) -> GatewayConfig: ...
    def wall(self) -> float: ...
    def route_view(self) -> RouteView: ...
    def configure_admin(self, config: GatewayConfig) -> None: ...
    def admin_token(self, config: GatewayConfig) -> str | None: ...


class AdminApi:
    """The ``/admin`` tree; ``token`` is set (or cleared) by the extension from
    ``admin.token_env`` at start and on every reload."""

    def __init__(self, extension: AdminHost) -> None:
        self.ext = extension
        self.token: str | None = None
        self.router = operator_router([
            OperatorRoute("/admin/stats", self._stats, methods=["GET"]),
            OperatorRoute("/admin/weights", self._weights, methods=["GET", "PUT", "DELETE"]),
            OperatorRoute("/admin/models/{name}/enable", self._enable, methods=["POST"]),
            OperatorRoute("/admin/models/{name}/disable", self._disable, methods=["POST"]),
            OperatorRoute("/admin/breakers/{name}/reset", self._reset, methods=["POST"]),
            OperatorRoute("/admin/reload", self._reload, methods=["POST"]),
            OperatorRoute("/admin/explain", self._explain, methods=["POST"]),
        ])

    def routes(self, gateway: Gateway) -> list[BaseRoute]:
        """The whole ``/admin`` tree, for ``gateway.routes``: the token is checked before any
        admin route is looked up or reads its body."""
        app = OperatorApp(gateway, self._guarded)
        return [Route("/admin", app), Route("/admin/{path:path}", app)]

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        if self.token is None:  # cleared by a reload with ?allow_shrink=true
            raise GatewayError(f"No route for {method} {scope['path']}", status=404,
                               code="not_found")
        if path == "/admin" and method == "GET":
            page = HTMLResponse(_dashboard(), headers={"cache-control": "no-store"})
            await page(scope, receive, send)
            return
        self._check_token(context(scope).headers)
        await self.router({**scope, "path": path}, receive, send)  # /admin/stats/ as before

    async def _stats(self, request: Request) -> Response:
        stats = self.stats()
        shared = self.ext.shared
        if shared is not None:
            stats["fleet"] = await fleet_stats(shared, self.ext.limiter, self.ext.wall())
        return JSONAnswer(stats)

    async def _weights(self, request: Request) -> Response:
        if request.method == "PUT":
            return JSONAnswer(await self.put_weight(
                await read_body(request.receive, ADMIN_BODY_LIMIT)))
        if request.method == "DELETE":
            query = request.query_params
            key = (query.get("model", ""), query.get("category") or "*")
            cleared = key in self.ext.controls.active()
            await self.commit({key: None})
            return JSONAnswer({"cleared": cleared, **self.weights()})
        return JSONAnswer(self.weights())

    async def _enable(self, request: Request) -> Response:
        return JSONAnswer(await self.set_enabled(request.path_params["name"], True))

    async def _disable(self, request: Request) -> Response:
        return JSONAnswer(await self.set_enabled(request.path_params["name"], False))

    async def _reset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not self.ext.registry.reset_breaker(name):  # every replica's, with shared state
            raise _unknown_model(name)
        return JSONAnswer({"model": name, "breaker": "closed"})

    async def _reload(self, request: Request) -> Response:
        allow_shrink = request.query_params.get("allow_shrink") == "true"
        answer = self.reload(allow_shrink=allow_shrink)
        sync = self.ext.operator_sync
        if sync is not None:  # the others reload their own file, with their own checks
            try:
                answer["fleet_reload"] = await sync.reloaded(allow_shrink)
            except StateUnavailable:
                raise SharedStateDown(
                    "Reloaded on this replica only: the shared state (Redis) is unavailable, "
                    "so the other replicas were not told; reload again when it is back") from None
        return JSONAnswer(answer)

    async def _explain(self, request: Request) -> Response:
        chat = await self.ext.gateway.read_chat_request(request.scope, request.receive)
        return JSONAnswer(await self.explain(chat))

    def _check_token(self, headers: dict[str, str]) -> None:
        assert self.token is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("The admin API needs `Authorization: Bearer <admin token>`",
                               headers={"www-authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise Unauthorized("Invalid admin token", headers={"www-authenticate": "Bearer"})

    # -- operations ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        ext = self.ext
        config, registry = ext.config, ext.registry
        now = registry.clock()
        models: dict[str, Any] = {}
        for name, model in config.models.items():
            tracker = registry.models.get(name)
            breaker = registry.breakers.get(name)
            if tracker is None or breaker is None:
                continue
            models[name] = {
                "provider": model.provider,
                "available": name in ext.gateway.available,
                "disabled": name in ext.controls.disabled,
                "price_usd_per_mtok": {"input": model.input_usd_per_mtok,
                                       "output": model.output_usd_per_mtok},
                "breaker": {"state": breaker.state(now), "reason": breaker.reason,
                            "consecutive_failures": breaker.consecutive, "opens": breaker.opens,
                            "probe_in_flight": breaker.probe_owner is not None,
                            "probes_failed": breaker.probes_failed,
                            "next_probe_in_s": _seconds_until(breaker.next_probe_at, now)},
                "requests_total": tracker.requests_total,
                "windows": {label: tracker.stats(label, now).as_dict() for label in WINDOWS},
                "quality": {cat: {"score": q.quality, "samples": q.quality_samples}
                            for cat, w in tracker.quality.items()
                            for q in (w.stats(now),) if q.quality_samples},
            }
        providers = {name: {"requests_total": t.requests_total,
                            "windows": {label: t.stats(label, now).as_dict()
                                        for label in WINDOWS}}
                     for name, t in registry.providers.items()}
        categories: dict[str, Any] = {}
        view = ext.route_view()
        for category in config.categories:
            plan = plan_route("auto", _certain(category), config, ext.gateway.available, view)
            categories[category] = {"plan": [_candidate(c) for c in plan.candidates],
                                    "served": ext.by_category.get(category, {})}
        return {"windows": list(WINDOWS), "decision_window_s": config.adaptive.decision_window_s,
                "adaptive": config.adaptive.enabled,
                "uptime_s": round(ext.wall() - ext.started_at, 3),
                "reloaded_at": ext.reloaded_at, "models": models, "providers": providers,
                "categories": categories, "clients": ext.limiter.stats(),
                "feedback_received": ext.feedback.received, **self.weights()}

    def weights(self) -> dict[str, Any]:
        return {"overrides": [{"model": m, "category": c, "weight": o.weight, "pin": o.pin,
                               "expires_at": o.expires_at}
                              for (m, c), o in sorted(self.ext.controls.active().items())],
                "disabled": sorted(self.ext.controls.disabled)}

    async def commit(self, overrides: dict[tuple[str, str], Override | None] | None = None,
                     disabled: dict[str, bool] | None = None) -> None:
        """Apply an operator change (with a fleet: everywhere, or 503 and nowhere)."""
        await apply_change(self.ext.controls, self.ext.operator_sync, overrides or {},
                           disabled or {})

    async def put_weight(self, body: bytes) -> dict[str, Any]:
        try:
            change = _weight_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"Invalid weight change: {exc}") from exc
        if change.model not in self.ext.config.models:
            raise _unknown_model(change.model)
        if change.category != "*" and change.category not in self.ext.config.categories:
            raise InvalidRequest(f"Unknown category `{change.category}`", param="category")
        if change.weight is not None and not 0.0 <= change.weight <= 100.0:
            raise InvalidRequest("`weight` must be within 0..100", param="weight")
        now = self.ext.wall()
        expires = change.expires_at
        if expires is not None and not now < expires <= now + MAX_TTL_S:
            raise InvalidRequest("`expires_at` must be a unix time in the next 30 days",
                                 param="expires_at")
        if change.ttl_s is not None:
            if not 0 < change.ttl_s <= MAX_TTL_S:
                raise InvalidRequest(f"`ttl_s` must be within (0, {MAX_TTL_S:g}] seconds "
                                     "(30 days)", param="ttl_s")
            expires = now + change.ttl_s
        clears = change.weight is None and not change.pin
        await self.commit({(change.model, change.category):
                           None if clears else Override(change.weight, change.pin, expires)})
        return self.weights()

    async def set_enabled(self, model: str, enabled: bool) -> dict[str, Any]:
        if model not in self.ext.config.models:
            raise _unknown_model(model)
        await self.commit(disabled={model: not enabled})
        return self.weights()

    def reload(self, allow_shrink: bool = False) -> dict[str, Any]:
        """``POST /admin/reload`` (``config_reload.reload_config``)."""
        return reload_config(self.ext, self.token, allow_shrink)

    async def explain(self, request: ClientRequest) -> dict[str, Any]:
        """Classify and plan one request without sending it (no probe claimed, no budget)."""
        classification: Classification | None = None
        from routegate.middleware.request.routing import AUTO_MODELS

        if request.chat.model in AUTO_MODELS:
            classification = await self.ext.gateway.classifier.classify(
                message_text(request.chat.messages))
        plan = plan_route(request.chat.model, classification, self.ext.config,
                          self.ext.gateway.available, self.ext.route_view())
        models = [self.ext.config.models[name] for name in plan.models]
        return {
            "requested_model": request.chat.model,
            "classification": None if classification is None else msgspec.to_builtins(classification),
            "category": plan.category, "escalated": plan.escalated, "reason": plan.reason,
            "min_capability": plan.min_capability, "threshold_source": plan.threshold_source,
            "plan": list(plan.models),
            "candidates": [_candidate(c) for c in plan.candidates],
            "max_cost_usd": round(reservation_usd(request, models), 10),
        }


def _seconds_until(at: float | None, now: float) -> float | None:
    return None if at is None else round(max(0.0, at - now), 3)


def _certain(category: str) -> Classification:
    return Classification(category=category, complexity="simple", confidence=1.0,
                          method="lexical", latency_ms=0.0)


def _candidate(c: Candidate) -> dict[str, Any]:
    return {"model": c.model, "weight": c.weight, "reasons": list(c.reasons), "pinned": c.pinned,
            "probe": c.probe, "dropped": c.dropped}


def _unknown_model(name: str) -> GatewayError:
    return GatewayError(f"The model `{name}` does not exist in this gateway's pool", status=404,
                        code="model_not_found")


def _dashboard() -> bytes:
    return importlib.resources.files("routegate.middleware.operations").joinpath(
        "dashboard.html").read_bytes()
