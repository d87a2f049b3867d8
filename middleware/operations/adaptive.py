"""Adaptive routing: the extension that wires health windows, breakers, traffic shifting,
feedback and client budgets into the gateway (its chat policy and observer), and mounts the
operator API (``middleware/operations/admin.py``) when an admin token is configured.

    POST {prefix}/feedback   {"request_id": "...", "score": 0.0}   (see middleware/operations/feedback.py)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from routegate.middleware.config import GatewayConfig
from routegate.middleware.contracts import AttemptInfo, RequestContext, RequestOutcome, SharedState
from routegate.middleware.operations.admin import ADMIN_BODY_LIMIT, AdminApi
from routegate.middleware.operations.admin_fleet import FleetControls
from routegate.middleware.operations.budgets import ClientLimiter, Reservation, reservation_usd
from routegate.middleware.operations.feedback import FeedbackStore
from routegate.middleware.operations.model_health import (
    Controls,
    HealthObserver,
    HealthRegistry,
    LiveView,
)
from routegate.middleware.operations.operator import (
    JSONAnswer,
    OperatorApp,
    OperatorRoute,
    context,
    operator_router,
)
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.intake import read_body
from routegate.middleware.request.routing import ModelSignal, Override, Plan

if TYPE_CHECKING:
    from routegate.middleware.request.gateway import Gateway

__all__ = ["AdaptiveExtension", "StaticView"]

log = logging.getLogger("routegate")
_RESERVATION = "routegate.reservation"
_ADMIN = "routegate.admin"  # ctx.state: the request carries the admin token (feedback)


class StaticView:
    """Overrides and disabled models without live health (``adaptive.enabled = false``)."""

    def __init__(self, registry: HealthRegistry, controls: Controls) -> None:
        self._registry, self._controls, self._wall = registry, controls, controls.wall()

    def disabled(self, model: str) -> bool:
        return model in self._controls.disabled

    def signal(self, model: str, category: str | None) -> ModelSignal:
        return ModelSignal(slo=self._registry.slo(model))

    def override(self, model: str, category: str | None) -> Override | None:
        return self._controls.lookup(model, category, self._wall)


class _Observer(HealthObserver):
    def __init__(self, extension: AdaptiveExtension) -> None:
        super().__init__(extension.registry)
        self._extension = extension

    def on_request_end(self, ctx: RequestContext, outcome: RequestOutcome) -> None:
        super().on_request_end(ctx, outcome)
        self._extension.feedback.remember(ctx, outcome)
        if ctx.category is not None and outcome.model is not None:
            counts = self._extension.by_category.setdefault(ctx.category, {})
            counts[outcome.model] = counts.get(outcome.model, 0) + 1


class AdaptiveExtension:
    """Health windows, breakers, traffic shifting, feedback, client budgets and the admin API.

    Installed on every gateway by :func:`routegate.middleware.extensions.default_extensions`.
    ``clock`` (monotonic) drives windows and breakers, ``wall`` (unix time) expiries and budget
    days; both are injectable for tests.
    """

    def __init__(self, *, config_path: str | Path | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 environ: Callable[[str], str | None] = os.environ.get) -> None:
        self.config_path = config_path
        self.clock, self.wall, self._environ = clock, wall, environ
        self._gateway: Gateway | None = None
        self.by_category: dict[str, dict[str, int]] = {}
        self.reloaded_at: float | None = None
        self.started_at = wall()
        self.reconfiguring: asyncio.Task[None] | None = None  # sidecar re-learning routes
        self.admin = AdminApi(self)
        self._admin_mounted = False
        self.shared: SharedState | None = None  # [state] backend = "redis"
        self.operator_sync: FleetControls | None = None  # weights, pins, reloads: the fleet's

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "AdaptiveExtension.start() was not awaited"
        return self._gateway

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.config

    async def start(self, gateway: Gateway) -> None:
        self._gateway = gateway
        config = gateway.config
        self.registry = HealthRegistry(config, self.clock)
        self.controls = Controls(self.wall)
        self.limiter = ClientLimiter(config, self.wall, self.clock)
        self.feedback = FeedbackStore(self.registry, config.adaptive.feedback_memory)
        gateway.observers.add(_Observer(self))
        gateway.policy = self
        gateway.authenticate = self.authenticate
        path = config.server.prefix + "/feedback"  # client-key check first, like chat
        gateway.routes.append(Route(path, OperatorApp(gateway, operator_router([
            OperatorRoute(path, self._feedback, methods=["POST"])]), authenticate=True)))
        self.configure_admin(config)
        if config.state.backend == "redis":
            await self._share(gateway, config)

    async def _share(self, gateway: Gateway, config: GatewayConfig) -> None:
        """Connect to the shared state: budgets and limits go through it from now on."""
        from routegate.middleware.state.health_sync import HealthSync
        from routegate.middleware.state.operator_sync import share_operator_state
        from routegate.middleware.state.redis_state import RedisState  # imports redis
        from routegate.middleware.state.session_sync import SessionSync

        state = config.state
        self.shared = RedisState(state, state.resolve_url(), state.resolve_replica_id())
        self.limiter.shared = self.shared
        self.operator_sync = share_operator_state(self.shared, self)
        HealthSync(self.shared, self.registry).install()
        SessionSync(self.shared, gateway.session_store)  # conversations keep their model
        self.shared.set_heartbeat(self._heartbeat)
        await self.shared.start()
        gateway.status["state"] = self.shared.status

    def _heartbeat(self) -> dict[str, object]:
        """What this replica tells the fleet about itself (``/admin/stats``'s ``fleet``)."""
        return {"started_at": self.started_at, "reloaded_at": self.reloaded_at,
                "requests": {m: t.requests_total for m, t in self.registry.models.items()},
                "feedback_received": self.feedback.received}

    def configure_admin(self, config: GatewayConfig) -> None:
        """``/admin`` exists only with a token: mounted in a host app, the host's own /admin
        paths stay the host's."""
        self.admin.token = self.admin_token(config)
        if self.admin.token is None:
            log.info("admin API disabled: admin.token_env is not set or names an empty variable")
        elif not self._admin_mounted:
            self.gateway.routes.extend(self.admin.routes(self.gateway))
            self._admin_mounted = True

    def admin_token(self, config: GatewayConfig) -> str | None:
        """The admin token ``config`` gives (from the variable ``admin.token_env`` names)."""
        name = config.admin.token_env
        return (self._environ(name) if name else None) or None

    async def stop(self) -> None:
        if self.shared is not None:
            await self.shared.stop()

    # -- the gateway's chat policy ---------------------------------------------------------
    def route_view(self, ctx: RequestContext | None = None) -> LiveView | StaticView:
        if self.config.adaptive.enabled:
            return LiveView(self.registry, self.controls)
        return StaticView(self.registry, self.controls)

    def authenticate(self, ctx: RequestContext) -> None:
        """The gateway's check before any client endpoint reads its body: a known client key
        (401 otherwise), or on the feedback endpoint the admin token as well."""
        if not self.limiter.enabled:
            return
        if ctx.path == self.config.server.prefix + "/feedback" and self._is_admin(ctx.headers):
            ctx.state[_ADMIN] = True
            return
        ctx.client = self.limiter.authenticate(ctx.headers)

    def _is_admin(self, headers: dict[str, str]) -> bool:
        token = self.admin.token
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return (token is not None and scheme.lower() == "bearer"
                and hmac.compare_digest(given.strip().encode(), token.encode()))

    async def admit(self, ctx: RequestContext, request: ClientRequest, plan: Plan) -> None:
        """Reserve budget for the client ``authenticate`` found (429), claim breaker probes."""
        client = ctx.client
        if client is not None:
            models = [self.config.models[name] for name in plan.models]
            ctx.state[_RESERVATION] = await self.limiter.reserve(
                client, reservation_usd(request, models))
        probes = plan.probes
        if probes:
            self.registry.claim_probes(ctx.owner, probes)
            ctx.probes = probes

    def settle(self, ctx: RequestContext) -> None:
        if ctx.probes:
            self.registry.release_probes(ctx.owner)
        reservation: Reservation | None = ctx.state.pop(_RESERVATION, None)
        if reservation is not None:
            self.limiter.settle(reservation, _request_cost(ctx.attempts))

    # -- POST {prefix}/feedback --------------------------------------------------------------
    async def _feedback(self, request: Request) -> Response:
        ctx = context(request.scope)
        admin = ctx.state.get(_ADMIN, False) or (not self.limiter.enabled
                                                 and self._is_admin(ctx.headers))
        if not admin:
            self.feedback.check_rate(ctx.client, self.config.adaptive.feedback_per_minute)
        body = await read_body(request.receive, ADMIN_BODY_LIMIT)
        return JSONAnswer(await self.feedback.submit(
            body, self.config.categories, client=ctx.client,
            admin_clients=(None, *self.config.clients) if admin else None))


def _request_cost(attempts: list[AttemptInfo]) -> float | None:
    """What the request cost; None (charge the reservation) when an answer's usage is unknown."""
    total = 0.0
    for attempt in attempts:
        if attempt.cost_usd is not None:
            total += attempt.cost_usd
        elif attempt.committed:
            return None
    return total
