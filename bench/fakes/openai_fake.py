"""OpenAI Chat Completions wire format: ``POST /v1/chat/completions``, ``GET /v1/models``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.fakes._common import (
    ID,
    PT,
    TOOL_ARGS,
    TOOL_TRIGGER,
    TT,
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

__all__ = ["OpenAIWire", "openai_error_fields"]

_FINGERPRINT = "fp_fake"


def openai_error_fields(status: int, code: str | None, model: str) -> tuple[str, str, str | None, str | None]:
    """(message, type, param, code) of a realistic OpenAI error for ``status``/``code``."""
    if code == "context_length_exceeded":
        return (
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130000 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            "messages",
            code,
        )
    if code == "content_policy_violation":
        return (
            "Your request was rejected as a result of our safety system. Your prompt may "
            "contain text that is not allowed by our safety system.",
            "invalid_request_error",
            None,
            code,
        )
    if code == "insufficient_quota":
        return (
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            None,
            code,
        )
    if code == "rate_limit_exceeded" or (status == 429 and code is None):
        return (
            f"Rate limit reached for {model} in organization org-fake on requests per min "
            "(RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.",
            "requests",
            None,
            "rate_limit_exceeded",
        )
    defaults: dict[int, tuple[str, str, str | None, str | None]] = {
        400: ("Invalid request (injected fault).", "invalid_request_error", None, None),
        401: (
            "Incorrect API key provided: sk-te****. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            "invalid_api_key",
        ),
        403: ("You are not allowed to sample from this model.", "invalid_request_error", None, None),
        404: (
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            None,
            "model_not_found",
        ),
        500: (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        503: ("The engine is currently overloaded, please try again later.", "server_error", None, None),
    }
    if status in defaults:
        message, type_, param, default_code = defaults[status]
        return message, type_, param, code or default_code
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return f"Request failed with status {status} (injected fault).", type_, None, code


def _sse(obj: Any) -> bytes:
    return b"data: " + json_bytes(obj) + b"\n\n"


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return " ".join(text_of(message.get("content")))
    return ""


class OpenAIWire:
    kind: Kind = "openai"
    json_headers: Headers = ((b"content-type", b"application/json"),)
    sse_headers: Headers = (
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
    )

    def __init__(self, script: Script) -> None:
        self._s = script
        self._json = TemplateCache[tuple[str, str | None], Compiled](
            lambda key: Compiled([self._build_json(key)])
        )
        self._stream = TemplateCache[tuple[str, str | None, bool], Compiled](
            lambda key: Compiled.of_stream(self._build_stream(key))
        )
        self._models = json_bytes(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": script.created, "owned_by": "fake"}
                    for m in script.models
                ],
            }
        )

    # -- requests ---------------------------------------------------------------------------
    def route(self, method: str, path: str, query: str) -> Route | BadRequest | None:
        if path == "/v1/chat/completions" and method == "POST":
            return Route("complete")
        if path == "/v1/models" and method == "GET":
            return Route("models")
        return None

    def auth_error(self, headers: Mapping[str, str], query: str) -> tuple[int, bytes] | None:
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer ") and auth[7:].strip():
            return None
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return 401, self.error_body(401, None, message, "")

    def parse_call(self, body: Any, route: Route) -> Call:
        if not isinstance(body, dict):
            raise BadRequest("We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' is a required property")
        stream = body.get("stream") is True
        options = body.get("stream_options")
        if options is not None and not stream:
            raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        prompt = count_words(t for m in messages if isinstance(m, dict) for t in text_of(m.get("content")))
        tool_name: str | None = None
        tools = body.get("tools") or body.get("functions")
        if isinstance(tools, list) and tools and TOOL_TRIGGER in _last_user_text(messages):
            first = tools[0] if isinstance(tools[0], dict) else {}
            fn = first.get("function", first)
            name = fn.get("name") if isinstance(fn, dict) else None
            tool_name = name if isinstance(name, str) else "tool"
        return Call(model, stream, include_usage, prompt, tool_name)

    # -- responses --------------------------------------------------------------------------
    def render_json(self, call: Call, rid: bytes) -> bytes:
        return self._json.get((call.model, call.tool_name)).render(rid, call.prompt_tokens)[0]

    def render_stream(self, call: Call, rid: bytes) -> StreamParts:
        t = self._stream.get((call.model, call.tool_name, call.include_usage))
        return StreamParts.of(t.render(rid, call.prompt_tokens))

    def _build_json(self, key: tuple[str, str | None]) -> Piece:
        model, tool = key
        message: dict[str, Any]
        if tool is not None:
            completion, finish = len(self._s.tool_pieces), "tool_calls"
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_" + ID,
                        "type": "function",
                        "function": {"name": tool, "arguments": TOOL_ARGS},
                    }
                ],
                "refusal": None,
                "annotations": [],
            }
        else:
            completion, finish = len(self._s.pieces), "stop"
            message = {
                "role": "assistant",
                "content": self._s.reply_text,
                "refusal": None,
                "annotations": [],
            }
        body = {
            "id": "chatcmpl-" + ID,
            "object": "chat.completion",
            "created": self._s.created,
            "model": self._s.response_model(model),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": PT, "completion_tokens": completion, "total_tokens": TT},
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        return json_bytes(body), completion

    def _build_stream(self, key: tuple[str, str | None, bool]) -> StreamTemplate:
        model, tool, include_usage = key
        head = {
            "id": "chatcmpl-" + ID,
            "object": "chat.completion.chunk",
            "created": self._s.created,
            "model": self._s.response_model(model),
            "system_fingerprint": _FINGERPRINT,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> Piece:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj: dict[str, Any] = {**head, "choices": [choice]}
            if include_usage:  # with include_usage every chunk carries "usage": null
                obj["usage"] = None
            return _sse(obj), 0

        if tool is not None:
            pieces, finish = self._s.tool_pieces, "tool_calls"
            preamble = chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_" + ID,
                            "type": "function",
                            "function": {"name": tool, "arguments": ""},
                        }
                    ],
                    "refusal": None,
                }
            )
            chunks = tuple(
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces
            )
        else:
            pieces, finish = self._s.pieces, "stop"
            preamble = chunk({"role": "assistant", "content": "", "refusal": None})
            chunks = tuple(chunk({"content": p}) for p in pieces)
        terminal = b""
        if include_usage:
            usage = {"prompt_tokens": PT, "completion_tokens": len(pieces), "total_tokens": TT}
            terminal = _sse({**head, "choices": [], "usage": usage})
        return StreamTemplate(
            preamble, chunks, chunk({}, finish), (terminal + b"data: [DONE]\n\n", len(pieces))
        )

    # -- errors and odd bodies --------------------------------------------------------------
    def error_body(self, status: int, code: str | None, message: str | None, model: str) -> bytes:
        default_message, type_, param, code = openai_error_fields(status, code, model)
        return json_bytes(
            {
                "error": {
                    "message": message or default_message,
                    "type": type_,
                    "param": param,
                    "code": code,
                }
            }
        )

    def error_event(self, status: int, code: str | None, model: str,
                    message: str | None = None) -> bytes:
        return b"data: " + self.error_body(status, code, message, model) + b"\n\n"

    def malformed_event(self) -> bytes:
        return b"data: {not json\n\n"

    def models_body(self) -> bytes:
        return self._models
