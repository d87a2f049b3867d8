"""Routing decisions without proxying: ``POST {prefix}/route``.

Some teams want routegate's decision but must call the provider themselves (their own SDK, a
private network). The endpoint takes a chat-completions body and answers what a real request
would have been routed to, without calling any provider::

    {"object": "routegate.route", "request_id": "...", "model": "gpt-4o-mini",
     "provider": "openai", "upstream_model": "gpt-4o-mini",
     "classification": {"category", "complexity", "confidence", "method", "latency_ms"} | null,
     "category": "chat", "escalated": false, "reason": "...", "session": "kept" | ... | null,
     "plan": [{"model", "provider", "provider_type", "upstream_model", "input_usd_per_mtok",
               "output_usd_per_mtok", "context_window", "weight", "reasons", "probe"}, ...],
     "max_cost_usd": 0.0012}

It is a request like any other on the way in: the client key is checked before the body is
read (401), the body is validated like a chat request (400/405/413), classification, live
health, operator overrides and the conversation's pin decide the plan, and the client's rate
limit and budget admit it (429). What is charged: nothing. routegate never sees the answer,
so the worst-case reservation is released at once at $0; the rate limit counts the call, and
a client whose budget is spent (by the requests routegate did serve) is refused here too. The
``request_id`` is remembered as answered by the plan's first model, so ``/v1/feedback``
scores it like a proxied request. It is traced like one (a server span named after the path,
the classification span, ``routegate.model`` for the choice) but it makes no health sample:
routegate cannot know how the call went.
"""

from __future__ import annotations

from typing import Any

import msgspec

from routegate.middleware.asgi_types import Receive, Scope, Send
from routegate.middleware.contracts import RequestContext, RequestOutcome
from routegate.middleware.operations.budgets import reservation_usd
from routegate.middleware.request.errors import AllAttemptsFailed
from routegate.middleware.request.gateway import Gateway, respond_json

__all__ = ["RouteOnly"]

_json = msgspec.json.Encoder()


class RouteOnly:
    """The extension: adds ``{prefix}/route`` to the gateway's endpoints."""

    def __init__(self) -> None:
        self._gateway: Gateway | None = None

    async def start(self, gateway: Gateway) -> None:
        self._gateway = gateway
        gateway.endpoints[gateway.config.server.prefix + "/route"] = self.route

    async def stop(self) -> None:
        pass  # the endpoint stays registered: a restarted gateway serves it again

    async def route(self, scope: Scope, ctx: RequestContext, receive: Receive,
                    send: Send) -> RequestOutcome:
        """Classify, plan and admit one chat request; answer the decision (module docstring)."""
        gateway = self._gateway
        assert gateway is not None, "RouteOnly.start() was not awaited"
        request = await gateway.read_chat_request(scope, receive)
        gateway.check_limits(request)
        plan, conversation = await gateway.decide(ctx, request)
        if not plan.models:
            raise AllAttemptsFailed("No model is available for this request: no provider that "
                                    "could serve it is configured with a key", status=503,
                                    code="no_available_model")
        policy = gateway.policy
        if policy is not None:
            await policy.admit(ctx, request, plan)  # rate limit and budget (429)
            policy.settle(ctx)  # no attempt was made: the reservation goes, $0 is charged
        chosen = plan.models[0]
        if conversation is not None:
            gateway.session_store.put(conversation, chosen)
        config = gateway.config
        candidates = {c.model: c for c in plan.candidates}
        entries: list[dict[str, Any]] = []
        for name in plan.models:
            pool_model = gateway.pool[name]
            model = pool_model.config
            candidate = candidates.get(name)
            entries.append({
                "model": name, "provider": pool_model.provider_name,
                "provider_type": pool_model.provider.type,
                "upstream_model": pool_model.upstream_model,
                "input_usd_per_mtok": model.input_usd_per_mtok,
                "output_usd_per_mtok": model.output_usd_per_mtok,
                "context_window": model.context_window,
                "weight": 1.0 if candidate is None else candidate.weight,
                "reasons": [] if candidate is None else list(candidate.reasons),
                "probe": candidate is not None and candidate.probe})
        session = next((v.decode() for k, v in ctx.response_headers
                        if k == b"x-routegate-session"), None)
        found = ctx.classification
        body = _json.encode({
            "object": "routegate.route", "request_id": ctx.request_id,
            "model": chosen, "provider": entries[0]["provider"],
            "upstream_model": entries[0]["upstream_model"],
            "classification": None if found is None else msgspec.to_builtins(found),
            "category": plan.category, "escalated": plan.escalated, "reason": plan.reason,
            "session": session, "plan": entries,
            "max_cost_usd": round(reservation_usd(
                request, [config.models[name] for name in plan.models]), 10)})
        ctx.response_headers.append((b"x-routegate-model", chosen.encode()))
        await respond_json(send, 200, body, ctx)
        return RequestOutcome(200, "success", chosen)
