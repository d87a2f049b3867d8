"""``POST {prefix}/messages``: Anthropic Messages clients in front of the gateway.

The body is translated to an OpenAI chat request and served by ``Gateway.serve_chat`` — the
same classification, routing, fallback and relay as ``/chat/completions``, to any pool model in
any wire format. The answer comes back in OpenAI format through a wrapped ``send`` that
translates it: a JSON body into a ``message``, an SSE stream event by event into
``message_start`` / ``content_block_*`` / ``message_delta`` / ``message_stop``. Errors use
Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from routegate.middleware.asgi_types import Message, Receive, Scope, Send
from routegate.middleware.config import GatewayConfig
from routegate.middleware.contracts import RequestContext, RequestOutcome
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.errors import GatewayError, InvalidRequest, invalid_json
from routegate.middleware.request.gateway import Gateway
from routegate.middleware.request.intake import read_body
from routegate.middleware.request.routing import AUTO_MODELS
from routegate.middleware.request.tokens import TokenEstimator
from routegate.middleware.wire.anthropic_inbound import (
    STOP_REASONS,
    from_anthropic_request,
    to_anthropic_message,
)
from routegate.middleware.wire.openai import ChatRequest
from routegate.middleware.wire.sse import SSEFramer, event_data, split_events

__all__ = ["AnthropicIngress", "AnthropicStreamWriter", "anthropic_error_body"]

_decode_any = msgspec.json.Decoder()
_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_chat = msgspec.json.Decoder(ChatRequest)
_encode = msgspec.json.Encoder().encode
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error",
                529: "overloaded_error"}


def anthropic_error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return _encode({"type": "error", "error": {"type": kind, "message": message}})


class AnthropicIngress:
    """The extension: adds ``{prefix}/messages`` to the gateway's endpoints."""

    def __init__(self) -> None:
        self._gateway: Gateway | None = None
        self._tokens: TokenEstimator | None = None

    def register(self, gateway: Gateway) -> None:
        """Add the endpoints (idempotent). Called by ``start``; a gateway that registers its
        extensions' endpoints before starting (so that a request to one of them is what starts
        a lifespan-less mounted gateway) may call it earlier."""
        self._gateway = gateway
        if self._tokens is None:
            self._tokens = TokenEstimator(gateway.config.usage)
        prefix = gateway.config.server.prefix
        gateway.endpoints[prefix + "/messages"] = self.messages
        gateway.endpoints[prefix + "/messages/count_tokens"] = self.count_tokens
        for path in (prefix + "/messages", prefix + "/messages/count_tokens"):
            gateway.error_bodies[path] = _error_body  # e.g. the 401 the gateway answers itself

    async def start(self, gateway: Gateway) -> None:
        self.register(gateway)

    async def stop(self) -> None:
        pass  # the endpoints stay registered: a restarted gateway serves them again

    async def messages(self, scope: Scope, ctx: RequestContext, receive: Receive,
                       send: Send) -> RequestOutcome:
        gateway = self._gateway
        assert gateway is not None, "AnthropicIngress.start() was not awaited"
        translated = _TranslatingSend(send)
        try:
            if scope["method"] != "POST":
                raise GatewayError("Use POST for this endpoint", status=405,
                                   code="method_not_allowed")
            body = await read_body(receive, gateway.config.server.max_body_bytes)
            request = _client_request(body, gateway.config)
            return await gateway.serve_chat(ctx, request, translated, receive)
        except GatewayError as exc:
            if translated.started:
                raise  # the answer began; the relay already ended it in-band
            await _respond(send, ctx, exc.status, anthropic_error_body(exc.status, _message(exc)),
                           [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()])
            return RequestOutcome(exc.status, "client_error" if exc.status < 500 else "error",
                                  error_type=exc.code or exc.type)


    async def count_tokens(self, scope: Scope, ctx: RequestContext, receive: Receive,
                           send: Send) -> RequestOutcome:
        """``{"input_tokens": n}``, counted with the gateway's tokenizer: the pool's models
        tokenize differently, so this is an estimate (``x-routegate-estimated: true``)."""
        gateway, tokens = self._gateway, self._tokens
        assert gateway is not None and tokens is not None, "AnthropicIngress.start() was not awaited"
        try:
            if scope["method"] != "POST":
                raise GatewayError("Use POST for this endpoint", status=405,
                                   code="method_not_allowed")
            body = await read_body(receive, gateway.config.server.max_body_bytes)
            request = _client_request(body, gateway.config, count_only=True)
            usage = await tokens.estimate(request, "")
        except GatewayError as exc:
            await _respond(send, ctx, exc.status, anthropic_error_body(exc.status, exc.message))
            return RequestOutcome(exc.status, "client_error" if exc.status < 500 else "error",
                                  error_type=exc.code or exc.type)
        await _respond(send, ctx, 200, _encode({"input_tokens": usage.prompt_tokens}),
                       [(b"x-routegate-estimated", b"true")])
        return RequestOutcome(200, "success")


def _error_body(exc: GatewayError) -> bytes:
    return anthropic_error_body(exc.status, exc.message)


def _message(exc: GatewayError) -> str:
    raw = getattr(exc, "raw_body", None)
    if isinstance(raw, bytes):  # a provider's own error body: keep its message
        try:
            error = _decode_any.decode(raw).get("error")
        except (msgspec.DecodeError, AttributeError):
            error = None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message


def _pool_model(config: GatewayConfig, requested: str) -> str:
    """Apps written for Anthropic name Anthropic's models: a pool model whose upstream is the
    name asked for serves it (``claude-sonnet-4-20250514`` -> pool model ``claude-sonnet-4``)."""
    if requested in config.models or requested in AUTO_MODELS:
        return requested
    for name, model in config.models.items():
        if model.upstream == requested:
            return name
    return requested


def _client_request(body: bytes, config: GatewayConfig, *,
                    count_only: bool = False) -> ClientRequest:
    try:
        decoded = _decode_any.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise invalid_json(exc) from exc
    if not isinstance(decoded, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    if count_only:  # count_tokens bodies carry no max_tokens
        decoded = {**decoded, "max_tokens": 1, "stream": False}
    try:
        translated = from_anthropic_request(decoded)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    translated["model"] = _pool_model(config, translated["model"])
    openai_body = _encode(translated)
    try:
        chat = _chat.decode(openai_body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request: {exc}") from exc
    if not chat.messages:
        raise InvalidRequest("messages: at least one message with content is required")
    return ClientRequest(_fields.decode(openai_body), chat, include_usage=chat.stream)


class _TranslatingSend:
    """Wraps ``send``: OpenAI answers in, Anthropic answers out."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None
        self._stream: AnthropicStreamWriter | None = None
        self._body: list[bytes] = []
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            content_type = dict(headers).get(b"content-type", b"")
            self.started = True
            if content_type.startswith(b"text/event-stream"):
                self._stream = AnthropicStreamWriter()
                await self._send({**message, "headers": headers})
            else:
                self._start = {**message, "headers": [h for h in headers
                                                      if h[0] != b"content-length"]}
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        more = bool(message.get("more_body", False))
        if self._stream is not None:
            out = self._stream.feed(message.get("body", b""))
            if not more:
                out += self._stream.close()
            if out or not more:
                await self._send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self._body.append(message.get("body", b""))
        if more:
            return
        start = self._start or {"type": "http.response.start", "status": 200, "headers": []}
        raw = b"".join(self._body)
        if start.get("status", 200) == 200:
            body = _encode(to_anthropic_message(raw))
        else:
            body = anthropic_error_body(int(start.get("status", 500)), raw.decode(errors="replace"))
        headers = [*start.get("headers", []), (b"content-length", str(len(body)).encode())]
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    code: str | None = None


class _Chunk(msgspec.Struct):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _ErrorDetail | None = None


_chunk = msgspec.json.Decoder(_Chunk)


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode({"type": kind, **payload}) + b"\n\n"


class AnthropicStreamWriter:
    """OpenAI chunks in, Anthropic Messages stream events out."""

    def __init__(self) -> None:
        self._framer = SSEFramer()
        self._started = False
        self._block = -1  # index of the open content block, -1: none
        self._block_kind = ""
        self._tools: dict[int, int] = {}  # OpenAI tool_calls index -> content block index
        self._stop_reason: str | None = None
        self._usage = _Usage()
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._translate(event)
                        for event in split_events(self._framer.feed(data)))

    def _translate(self, raw: bytes) -> bytes:
        data = event_data(raw)
        if not data or self._finished:
            return b""
        if data == b"[DONE]":
            return self._finish()
        try:
            chunk = _chunk.decode(data)
        except msgspec.DecodeError:
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start(chunk))
        if chunk.error is not None:
            self._finished = True
            out.append(self._close_block())
            kind = "overloaded_error" if chunk.error.code == "overloaded" else "api_error"
            out.append(_event("error", {"error": {"type": kind, "message": chunk.error.message}}))
            return b"".join(out)
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices[:1]:
            delta = choice.delta
            if delta is not None and delta.content:
                if self._block_kind != "text":
                    out.append(self._open_block({"type": "text", "text": ""}, "text"))
                out.append(_event("content_block_delta", {"index": self._block, "delta": {
                    "type": "text_delta", "text": delta.content}}))
            for call in delta.tool_calls or [] if delta is not None else []:
                out.append(self._tool_delta(call))
            if choice.finish_reason:
                self._stop_reason = STOP_REASONS.get(choice.finish_reason, "end_turn")
        return b"".join(out)

    def _message_start(self, chunk: _Chunk) -> bytes:
        self._started = True
        message_id = chunk.id if chunk.id.startswith("msg_") else "msg_" + (chunk.id or "routegate")
        return _event("message_start", {"message": {
            "id": message_id, "type": "message", "role": "assistant", "model": chunk.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}) + _event("ping", {})

    def _open_block(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close_block()
        self._block += 1
        self._block_kind = kind
        return out + _event("content_block_start", {"index": self._block, "content_block": block})

    def _close_block(self) -> bytes:
        if not self._block_kind:
            return b""
        self._block_kind = ""
        return _event("content_block_stop", {"index": self._block})

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        function = call.get("function") or {}
        out = b""
        if index not in self._tools:
            out = self._open_block({"type": "tool_use", "id": call.get("id") or f"toolu_{index}",
                                    "name": function.get("name") or "", "input": {}}, "tool")
            self._tools[index] = self._block
        arguments = function.get("arguments")
        if arguments and self._tools[index] == self._block:
            out += _event("content_block_delta", {"index": self._block, "delta": {
                "type": "input_json_delta", "partial_json": arguments}})
        return out

    def _finish(self) -> bytes:
        self._finished = True
        out = self._close_block()
        out += _event("message_delta", {
            "delta": {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": self._usage.prompt_tokens,
                      "output_tokens": self._usage.completion_tokens}})
        return out + _event("message_stop", {})

    def close(self) -> bytes:
        """The client stream ends: a stream cut without [DONE] or error ends with an error."""
        if self._finished:
            return b""
        self._finished = True
        return self._close_block() + _event("error", {"error": {
            "type": "api_error", "message": "the upstream stream ended before the answer was complete"}})



async def _respond(send: Send, ctx: RequestContext, status: int, body: bytes,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               (b"x-request-id", ctx.request_id.encode()), *ctx.response_headers, *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
