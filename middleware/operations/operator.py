"""The gateway's own endpoints off the hot path (feedback, ``/admin``) as Starlette routes.

Chat, messages and models stay pure ASGI in :class:`~routegate.middleware.request.gateway.Gateway`;
these are Starlette :class:`Route`\\ s with its ``Request``/``Response`` classes, served through
:class:`OperatorApp` so they keep what the gateway gives every endpoint: a request id,
observers, the client-key check before the body is read, and OpenAI-style errors (Starlette's
own 404/405 are plain text, or exceptions for the host app's handlers to render).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Route, Router

from routegate.middleware.asgi_types import ASGIApp, Message, Receive, Scope, Send
from routegate.middleware.contracts import RequestContext, RequestOutcome
from routegate.middleware.request.errors import GatewayError

if TYPE_CHECKING:
    from routegate.middleware.request.gateway import Gateway

__all__ = ["JSONAnswer", "OperatorApp", "OperatorRoute", "context", "match_route", "not_found",
           "operator_router"]

_json = msgspec.json.Encoder()
_CONTEXT = "routegate.context"  # scope key: the RequestContext OperatorApp made


def context(scope: Scope) -> RequestContext:
    """The gateway's context for this request (request id, headers, the client key's name)."""
    ctx: RequestContext = scope[_CONTEXT]
    return ctx


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    raise GatewayError(f"No route for {scope['method']} {scope['path']}", status=404,
                       code="not_found")


class OperatorRoute(Route):
    """A Route whose wrong method is the API's 405 with ``allow``, in or outside a host app."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            raise GatewayError("Use " + " or ".join(sorted(self.methods - {"HEAD"}))
                               + " for this endpoint", status=405, code="method_not_allowed",
                               headers={"allow": ", ".join(sorted(self.methods))})
        await self.app(scope, receive, send)


def operator_router(routes: list[BaseRoute]) -> Router:
    """A Router over ``routes`` answering unknown paths with the API's 404."""
    return Router(routes, redirect_slashes=False, default=not_found)


def match_route(routes: list[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route taking ``scope`` (its path params put in the scope), None: not the gateway's."""
    for route in routes:
        match, child_scope = route.matches(scope)
        if match is not Match.NONE:
            scope.update(child_scope)
            return route
    return None


class OperatorApp:
    """``app`` (an ASGI app, e.g. a Starlette Router) served the way the gateway serves its own
    endpoints; ``authenticate``: the client-key check runs first, before any body is read."""

    def __init__(self, gateway: Gateway, app: ASGIApp, *, authenticate: bool = False) -> None:
        self.gateway, self.app, self.authenticate = gateway, app, authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        await gateway.serve(scope, receive, send, self._endpoint,
                            gateway.authenticate if self.authenticate else None)

    async def _endpoint(self, scope: Scope, ctx: RequestContext, receive: Receive,
                        send: Send) -> RequestOutcome:
        scope[_CONTEXT] = ctx
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_status)
        return RequestOutcome(status, "success" if status < 400 else "client_error")


class JSONAnswer(JSONResponse):
    """JSON the operator endpoints answer with: never cached (live numbers, weights), encoded
    by msgspec like the rest of the gateway (NaN as null, not an error)."""

    def __init__(self, content: Any, status_code: int = 200) -> None:
        super().__init__(content, status_code, headers={"cache-control": "no-store"})

    def render(self, content: Any) -> bytes:
        return _json.encode(content)
