"""Anthropic Messages wire format: ``POST /v1/messages``, ``GET /v1/models``.

Stream order: message_start, content_block_start, ping, content_block_delta*,
content_block_stop, message_delta (stop_reason, usage.output_tokens), message_stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.fakes._common import (
    ID,
    PT,
    TOOL_TRIGGER,
    BadRequest,
    Call,
    Compiled,
    Headers,
    Kind,
    Piece,
    Route,
    Script,
    StreamParts,
    StreamTemplate,
    TemplateCache,
    count_words,
    json_bytes,
    text_of,
)

__all__ = ["AnthropicWire", "anthropic_error_fields"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    "invalid_request_error": "Invalid request (injected fault).",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit.",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out.",
    "overloaded_error": "Overloaded",
}


def anthropic_error_fields(status: int, code: str | None, model: str) -> tuple[str, str]:
    """(type, message) of a realistic Anthropic error for ``status``/``code``."""
    if code == "context_length_exceeded":
        return "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"
    if code == "content_policy_violation":
        return "invalid_request_error", "Output blocked by content filtering policy"
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    type_ = code or _TYPES.get(status, fallback)
    if type_ == "not_found_error":
        return type_, f"model: {model}"
    return type_, _MESSAGES.get(type_, f"Request failed with status {status} (injected fault).")


def _event(obj: dict[str, Any]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + json_bytes(obj) + b"\n\n"


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return " ".join(text_of(message.get("content")))
    return ""


class AnthropicWire:
    kind: Kind = "anthropic"
    json_headers: Headers = ((b"content-type", b"application/json"), (b"request-id", b"req_fake"))
    sse_headers: Headers = (
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"request-id", b"req_fake"),
    )

    def __init__(self, script: Script) -> None:
        self._s = script
        self._json = TemplateCache[tuple[str, str | None], Compiled](
            lambda key: Compiled([self._build_json(key)])
        )
        self._stream = TemplateCache[tuple[str, str | None], Compiled](
            lambda key: Compiled.of_stream(self._build_stream(key))
        )
        models = script.models
        self._models = json_bytes(
            {
                "data": [
                    {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                    for m in models
                ],
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        )

    # -- requests ---------------------------------------------------------------------------
    def route(self, method: str, path: str, query: str) -> Route | BadRequest | None:
        if path == "/v1/messages" and method == "POST":
            return Route("complete")
        if path == "/v1/models" and method == "GET":
            return Route("models")
        return None

    def auth_error(self, headers: Mapping[str, str], query: str) -> tuple[int, bytes] | None:
        # Current SDKs send the API key as ``Authorization: Bearer``; older ones as x-api-key.
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not headers.get("x-api-key", "").strip() and not bearer:
            message = "x-api-key header is required"
        elif not headers.get("anthropic-version", "").strip():
            message = "anthropic-version: header is required"
        else:
            return None
        return 401, self.error_body(401, None, message, "")

    def parse_call(self, body: Any, route: Route) -> Call:
        if not isinstance(body, dict):
            raise BadRequest("Request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        if not isinstance(body.get("max_tokens"), int):
            raise BadRequest("max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: Field required")
        texts = list(text_of(body.get("system")))
        texts.extend(t for m in messages if isinstance(m, dict) for t in text_of(m.get("content")))
        tool_name: str | None = None
        tools = body.get("tools")
        if isinstance(tools, list) and tools and TOOL_TRIGGER in _last_user_text(messages):
            name = tools[0].get("name") if isinstance(tools[0], dict) else None
            tool_name = name if isinstance(name, str) else "tool"
        return Call(model, body.get("stream") is True, False, count_words(texts), tool_name)

    # -- responses --------------------------------------------------------------------------
    def render_json(self, call: Call, rid: bytes) -> bytes:
        return self._json.get((call.model, call.tool_name)).render(rid, call.prompt_tokens)[0]

    def render_stream(self, call: Call, rid: bytes) -> StreamParts:
        t = self._stream.get((call.model, call.tool_name))
        return StreamParts.of(t.render(rid, call.prompt_tokens))

    def _usage(self, output_tokens: int) -> dict[str, int | str]:
        return {
            "input_tokens": PT,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }

    def _build_json(self, key: tuple[str, str | None]) -> Piece:
        model, tool = key
        content: list[dict[str, Any]]
        if tool is not None:
            completion, stop = len(self._s.tool_pieces), "tool_use"
            content = [{"type": "tool_use", "id": "toolu_" + ID, "name": tool, "input": {"city": "Paris"}}]
        else:
            completion, stop = len(self._s.pieces), "end_turn"
            content = [{"type": "text", "text": self._s.reply_text}]
        body = {
            "id": "msg_" + ID,
            "type": "message",
            "role": "assistant",
            "model": self._s.response_model(model),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self._usage(completion),
        }
        return json_bytes(body), completion

    def _build_stream(self, key: tuple[str, str | None]) -> StreamTemplate:
        model, tool = key
        message: dict[str, Any] = {
            "id": "msg_" + ID,
            "type": "message",
            "role": "assistant",
            "model": self._s.response_model(model),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(1),
        }
        block: dict[str, Any]
        if tool is not None:
            pieces, stop = self._s.tool_pieces, "tool_use"
            delta_type, field = "input_json_delta", "partial_json"
            block = {"type": "tool_use", "id": "toolu_" + ID, "name": tool, "input": {}}
        else:
            pieces, stop, delta_type, field = self._s.pieces, "end_turn", "text_delta", "text"
            block = {"type": "text", "text": ""}
        preamble = (
            _event({"type": "message_start", "message": message})
            + _event({"type": "content_block_start", "index": 0, "content_block": block})
            + _event({"type": "ping"})
        )
        chunks = tuple(
            (
                _event(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": delta_type, field: p},
                    }
                ),
                0,
            )
            for p in pieces
        )
        finish = _event({"type": "content_block_stop", "index": 0}) + _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": len(pieces)},
            }
        )
        terminal = _event({"type": "message_stop"})
        return StreamTemplate((preamble, 0), chunks, (finish, 0), (terminal, 0))

    # -- errors and odd bodies --------------------------------------------------------------
    def _error_obj(self, status: int, code: str | None, message: str | None, model: str) -> Any:
        type_, default_message = anthropic_error_fields(status, code, model)
        return {"type": "error", "error": {"type": type_, "message": message or default_message}}

    def error_body(self, status: int, code: str | None, message: str | None, model: str) -> bytes:
        obj = self._error_obj(status, code, message, model)
        return json_bytes({**obj, "request_id": "req_fake"})

    def error_event(self, status: int, code: str | None, model: str,
                    message: str | None = None) -> bytes:
        return _event(self._error_obj(status, code, message, model))

    def malformed_event(self) -> bytes:
        return b"event: message_start\ndata: {not json\n\n"

    def models_body(self) -> bytes:
        return self._models
