"""The gateway's request path: read, validate, classify, plan, relay, answer errors.

:class:`Gateway` owns the long-lived state (one pooled httpx client, the pool's adapters, the
classifier, the local model process) and is started and stopped by the ASGI lifespan.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import httpx
import msgspec
from starlette.routing import BaseRoute

from routegate.middleware.asgi_types import Receive, Scope, Send
from routegate.middleware.config import ConfigError, GatewayConfig, ProviderConfig, SessionsConfig
from routegate.middleware.contracts import (
    ChatPolicy,
    Classification,
    Classifier,
    Extension,
    RequestContext,
    RequestOutcome,
)
from routegate.middleware.providers import build_adapter
from routegate.middleware.providers.base import ClientRequest, ProviderAdapter
from routegate.middleware.providers.local_model import LocalModelServer
from routegate.middleware.request.errors import GatewayError
from routegate.middleware.request.intake import check_output_tokens, decode_chat_request, read_body
from routegate.middleware.request.model_pool import PoolModel
from routegate.middleware.request.observers import Observers
from routegate.middleware.request.relay import Relay
from routegate.middleware.request.routing import AUTO_MODELS, Plan, RouteView, plan_route
from routegate.middleware.request.scrub import Scrubber
from routegate.middleware.request.sessions import SessionStore
from routegate.middleware.upstream.origins import OriginOptions, unsafe_header
from routegate.middleware.upstream.transport import FastTransport
from routegate.middleware.wire.openai import context_text, message_text
from routegate.sidecar.heuristic import HeuristicClassifier

__all__ = ["Endpoint", "Gateway", "GatewayExtension", "GatewayPolicy", "respond_json"]

log = logging.getLogger("routegate")

_json = msgspec.json.Encoder()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# An endpoint answers one request; GatewayError it raises becomes an OpenAI-style error.
Endpoint = Callable[[Scope, RequestContext, Receive, Send], Awaitable[RequestOutcome]]
# Extensions are started with the whole gateway (the sidecar's and telemetry's need less of it:
# contracts.ExtensionHost); the adaptive extension installs the chat policy.
GatewayExtension: TypeAlias = "Extension[Gateway]"
GatewayPolicy: TypeAlias = "ChatPolicy[RouteView, ClientRequest, Plan]"


class Gateway:
    """Serves ``{prefix}/chat/completions`` and ``{prefix}/models`` (plus whatever extensions
    add) for one config."""

    def __init__(self, config: GatewayConfig, *, classifier: Classifier | None = None,
                 observers: Observers | None = None,
                 extensions: list[GatewayExtension] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 environ: Callable[[str], str | None] = os.environ.get) -> None:
        self.config = config
        self.observers = observers or Observers()
        self.classifier: Classifier = classifier or HeuristicClassifier(
            config.categories, config.classifier.default_category)
        self._transport = transport
        self._environ = environ
        self._client: httpx.AsyncClient | None = None
        self._fast: FastTransport | None = None
        self._relay: Relay | None = None
        self.local: LocalModelServer | None = None
        self.pool: dict[str, PoolModel] = {}
        self.available: frozenset[str] = frozenset()
        self.skipped_providers: dict[str, str] = {}
        self._models_body = b""
        self.extensions = list(extensions or [])
        self.endpoints: dict[str, Endpoint] = {
            config.server.prefix + "/chat/completions": self._chat,
            config.server.prefix + "/models": self._list_models,
        }
        # Off the hot path (feedback, /admin): Starlette routes, see middleware/operations/operator.py
        self.routes: list[BaseRoute] = []
        self.policy: GatewayPolicy | None = None  # set by the adaptive extension
        # Client-key check for every path in ``endpoints`` and feedback (not the ``/admin``
        # tree, which has its own token), run before the endpoint reads or validates anything; set by the
        # adaptive extension. Raises Unauthorized; may set ``ctx.client``.
        self.authenticate: Callable[[RequestContext], None] | None = None
        # Error bodies in another API's shape for some paths (Anthropic's for /messages)
        self.error_bodies: dict[str, Callable[[GatewayError], bytes]] = {}
        self.max_output_tokens = 0  # the pool's largest context window (0: no pool)
        self.status: dict[str, Callable[[], object]] = {}  # extensions' parts of /readyz
        # Sticky conversations: the store always exists (the fleet wiring holds on to it);
        # ``sessions`` is the config while enabled, None otherwise (one test per request)
        self.session_store = SessionStore(config.sessions)
        self.sessions: SessionsConfig | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        config = self.config
        if self.local is None and self._uses_local(config):
            self.local = LocalModelServer(config.local)
            await self.local.start()
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=256,
                              keepalive_expiry=30.0)
        # proxies, trust stores and caps are per provider: install() sets them on the transport
        self._fast = FastTransport(limits=limits, environ=self._environ)
        self._client = httpx.AsyncClient(
            transport=self._transport or self._fast,  # another one: the bench's comparisons
            timeout=httpx.Timeout(300.0, connect=5.0),
            follow_redirects=False,
        )
        for name, reason in self.install(config).items():
            log.info("provider %s skipped: %s", name, reason)
        for extension in self.extensions:
            await extension.start(self)
        log.info("routegate ready: %d of %d pool models available", len(self.available),
                 len(config.models))

    @staticmethod
    def _uses_local(config: GatewayConfig) -> bool:
        return any(config.providers[m.provider].type == "local" for m in config.models.values())

    def install(self, config: GatewayConfig) -> dict[str, str]:
        """Build the pool for ``config`` and swap it in; returns skipped providers and why.

        Used at start and by config reload. Everything is built first and assigned without an
        await in between, so a request sees the old pool or the new one, never a mix; requests
        in flight finish on the relay they started with. Raises ConfigError for changes that
        need a restart (the local model)."""
        assert self._client is not None, "install() needs the HTTP client from start()"
        adapters: dict[str, ProviderAdapter] = {}
        skipped: dict[str, str] = {}
        keys = {name: self._environ(provider.api_key_env) if provider.api_key_env else None
                for name, provider in config.providers.items()}
        admin_token = self._environ(config.admin.token_env) if config.admin.token_env else None
        scrubber = Scrubber(secret for secret in (*keys.values(), admin_token) if secret)
        for name, provider in config.providers.items():
            if provider.type == "local":
                if not any(m.provider == name for m in config.models.values()):
                    continue
                if self.local is None or config.local != self.config.local:
                    raise ConfigError(f"providers.{name}: starting or changing the local model "
                                      "needs a restart")
                adapters[name] = build_adapter(msgspec.structs.replace(
                    provider, base_url=self.local.base_url), None, scrubber.bytes)
                continue
            key = keys[name]
            if provider.api_key_env and not key:
                skipped[name] = f"{provider.api_key_env} is not set"
                continue
            if key and unsafe_header(key):  # e.g. a trailing newline from a secrets file
                skipped[name] = f"{provider.api_key_env} holds CR, LF or NUL (value not shown)"
                continue
            adapters[name] = build_adapter(provider, key, scrubber.bytes)
            if self._fast is not None:
                self._fast.configure(provider.base_url, _origin_options(provider))
        pool = {name: PoolModel(name, model, model.provider, config.providers[model.provider],
                                adapters[model.provider], config.upstream_name(name))
                for name, model in config.models.items() if model.provider in adapters}
        relay = Relay(config, self._client, pool, self.observers, scrubber)
        # "auto" first: the model name that asks the gateway to classify and route
        models_body = _json.encode({"object": "list", "data": [
            {"id": "auto", "object": "model", "created": 0, "owned_by": "routegate"},
            *({"id": name, "object": "model", "created": 0, "owned_by": model.provider}
              for name, model in config.models.items() if name in pool)]})
        # -- swap: no await from here on --
        self.config, self.pool, self.available = config, pool, frozenset(pool)
        self._relay, self._models_body, self.skipped_providers = relay, models_body, skipped
        self.max_output_tokens = max((m.window for m in config.models.values()), default=0)
        self.session_store.configure(config.sessions)
        self.sessions = config.sessions if config.sessions.enabled else None
        self.status.pop("sessions", None)
        if self.sessions is not None:  # /readyz: how many conversations are pinned
            self.status["sessions"] = self.session_store.status
        return skipped

    async def stop(self) -> None:
        for extension in reversed(self.extensions):
            await extension.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.local is not None:
            await self.local.stop()
            self.local = None

    @property
    def ready(self) -> bool:
        return self._relay is not None and bool(self.available) and (
            self.local is None or self.local.alive)

    # -- requests --------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request to a path in ``endpoints`` (the hot path)."""
        await self.serve(scope, receive, send, self.endpoints[scope["path"]], self.authenticate)

    async def serve(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint,
                    authenticate: Callable[[RequestContext], None] | None) -> None:
        """Run ``endpoint`` with a request id and observers; ``authenticate`` first (401 before
        a byte of the body is read); a GatewayError becomes the API's error answer."""
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        incoming_id = headers.get("x-request-id", "")
        ctx = RequestContext(
            # os.urandom(16).hex(): what uuid4().hex carries, minus ~8 µs of UUID object
            request_id=incoming_id if _REQUEST_ID.match(incoming_id) else os.urandom(16).hex(),
            path=path, headers=headers, started_at=time.perf_counter())
        if self.observers:
            self.observers.on_request(ctx)
        try:
            if authenticate is not None:
                authenticate(ctx)
            outcome = await endpoint(scope, ctx, receive, send)
        except GatewayError as exc:
            outcome = RequestOutcome(exc.status, "client_error" if exc.status < 500 else "error",
                                     error_type=exc.code or exc.type)
            await self._send_error(ctx, exc, send)
        except Exception:  # a bug must still answer in the API's error shape, not a traceback
            log.exception("request %s failed unexpectedly", ctx.request_id)
            internal = GatewayError("The gateway failed to handle this request; see its logs "
                                    f"for request id {ctx.request_id}", code="internal_error")
            outcome = RequestOutcome(500, "error", error_type="internal_error")
            await self._send_error(ctx, internal, send)
        if self.observers:
            self.observers.on_request_end(ctx, outcome)

    async def _list_models(self, scope: Scope, ctx: RequestContext, receive: Receive,
                           send: Send) -> RequestOutcome:
        if scope["method"] != "GET":
            raise GatewayError("Use GET for this endpoint", status=405, code="method_not_allowed")
        await respond_json(send, 200, self._models_body, ctx)
        return RequestOutcome(200, "success")

    async def _chat(self, scope: Scope, ctx: RequestContext, receive: Receive,
                    send: Send) -> RequestOutcome:
        request = await self.read_chat_request(scope, receive)
        return await self.serve_chat(ctx, request, send, receive)

    async def read_chat_request(self, scope: Scope, receive: Receive) -> ClientRequest:
        """Read and validate an OpenAI-format chat request (400/405/413 on bad input)."""
        if scope["method"] != "POST":
            raise GatewayError("Use POST for this endpoint", status=405, code="method_not_allowed")
        return decode_chat_request(await read_body(receive, self.config.server.max_body_bytes))

    async def serve_chat(self, ctx: RequestContext, request: ClientRequest, send: Send,
                         receive: Receive) -> RequestOutcome:
        """Classify (for ``auto``), plan and relay one OpenAI-format request; the answer goes
        to ``send`` in OpenAI format (other ingress formats wrap ``send`` to translate)."""
        assert self._relay is not None, "Gateway.start() was not awaited"
        self.check_limits(request)
        ctx.requested_model, ctx.stream = request.chat.model, request.stream
        plan, conversation = await self.decide(ctx, request)
        policy = self.policy
        if policy is None:
            outcome = await self._relay.run(ctx, request, plan.models, send, receive)
        else:
            await policy.admit(ctx, request, plan)  # budget reservation (429), breaker probes
            try:
                outcome = await self._relay.run(ctx, request, plan.models, send, receive)
            finally:
                policy.settle(ctx)
        if conversation is not None and outcome.model is not None and outcome.result == "success":
            self.session_store.put(conversation, outcome.model)  # the pin moves with fallbacks
        return outcome

    def check_limits(self, request: ClientRequest) -> None:
        """400 for output limits no model of the pool could honour."""
        check_output_tokens(request, self.max_output_tokens)

    async def decide(self, ctx: RequestContext, request: ClientRequest) -> tuple[Plan, str | None]:
        """Classify (for ``auto``) and plan one request (checked by :meth:`check_limits`),
        the conversation's pinned model first where it may stay; returns the plan and the
        conversation's key (None: no sticky session)."""
        classification: Classification | None = None
        auto = request.chat.model in AUTO_MODELS
        if auto:
            ctx.classify_started_at = time.perf_counter()
            classification = await self._classify(request)
            ctx.classify_ended_at = time.perf_counter()
            ctx.classification, ctx.category = classification, classification.category
            if self.observers:
                self.observers.on_classified(ctx)
        policy = self.policy
        plan = plan_route(request.chat.model, classification, self.config, self.available,
                          None if policy is None else policy.route_view(ctx))
        if self.sessions is None or not auto:
            return plan, None
        return self.session_store.stick(ctx, request, plan, self.config)

    async def _classify(self, request: ClientRequest) -> Classification:
        """The last user turn decides. Only when it is unsure alone (a follow-up such as "and
        now make it shorter") is it classified again with the previous user turn as context,
        and the surer answer taken: context never outvotes a turn that is clear by itself."""
        messages = request.chat.messages
        found = await self.classifier.classify(message_text(messages))
        if found.confidence < self.config.classifier.escalate_below:
            text = context_text(messages)
            if text is not None:
                with_context = await self.classifier.classify(text)
                if with_context.confidence > found.confidence:
                    return with_context
        return found

    async def _send_error(self, ctx: RequestContext, exc: GatewayError, send: Send) -> None:
        if any(attempt.committed for attempt in ctx.attempts):
            return  # the answer already started; the relay ended it in-band
        extra = [(k.encode(), v.encode()) for k, v in exc.headers.items()]
        render = self.error_bodies.get(ctx.path)
        await respond_json(send, exc.status, exc.body() if render is None else render(exc), ctx, extra)


def _origin_options(provider: ProviderConfig) -> OriginOptions:
    return OriginOptions(proxy=provider.proxy, ca_bundle=provider.ca_bundle,
                         max_header_bytes=provider.max_response_header_bytes,
                         max_headers=provider.max_response_headers,
                         max_body_bytes=provider.max_response_body_bytes)


async def respond_json(send: Send, status: int, body: bytes, ctx: RequestContext,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A whole JSON answer with the request's headers (ID, category, observers' extras)."""
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               (b"x-request-id", ctx.request_id.encode()), *ctx.response_headers]
    if ctx.category:
        headers.append((b"x-routegate-category", ctx.category.encode()))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
