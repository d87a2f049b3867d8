"""Gemini API wire format: ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse`` (events framed ``data: {json}\\r\\n\\r\\n``, no end marker:
the last event carries ``finishReason``), ``GET /v1beta/models``. ``/v1/`` works as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from bench.fakes._common import (
    ID,
    PT,
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

__all__ = ["GeminiWire", "gemini_error_fields"]

_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    "INVALID_ARGUMENT": "Request contains an invalid argument.",
    "UNAUTHENTICATED": "Request had invalid authentication credentials.",
    "PERMISSION_DENIED": (
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API."
    ),
    "RESOURCE_EXHAUSTED": "Resource has been exhausted (e.g. check quota).",
    "INTERNAL": "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    "UNAVAILABLE": "The model is overloaded. Please try again later.",
    "DEADLINE_EXCEEDED": "Deadline expired before operation could complete.",
}
_PREFIXES = ("/v1beta/models", "/v1/models")


def gemini_error_fields(status: int, code: str | None, model: str) -> tuple[str, str]:
    """(status string, message) of a realistic Google API error for ``status``/``code``."""
    if code == "context_length_exceeded":
        return "INVALID_ARGUMENT", (
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
        )
    if code == "content_policy_violation":
        return "INVALID_ARGUMENT", "The request was blocked by a safety policy."
    name = code or _STATUSES.get(status) or ("INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    if name == "NOT_FOUND":
        return name, (
            f"models/{model} is not found for API version v1beta, or is not supported for generateContent."
        )
    return name, _MESSAGES.get(name, f"Request failed with status {status} (injected fault).")


def _sse(obj: Any) -> bytes:
    return b"data: " + json_bytes(obj) + b"\r\n\r\n"


def _texts(content: Any) -> list[str]:
    return list(text_of(content.get("parts"))) if isinstance(content, dict) else []


def _first_function(tools: Any) -> str | None:
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        decls = tool.get("functionDeclarations", tool.get("function_declarations"))
        if isinstance(decls, list) and decls and isinstance(decls[0], dict):
            name = decls[0].get("name")
            return name if isinstance(name, str) else "tool"
    return None


class GeminiWire:
    kind: Kind = "gemini"
    json_headers: Headers = ((b"content-type", b"application/json; charset=UTF-8"),)
    sse_headers: Headers = (
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
    )

    def __init__(self, script: Script) -> None:
        self._s = script
        self._json = TemplateCache[tuple[str, str | None], Compiled](
            lambda key: Compiled([self._build_json(key)])
        )
        self._stream = TemplateCache[tuple[str, str | None], Compiled](
            lambda key: Compiled.of_stream(self._build_stream(key))
        )
        self._models = json_bytes(
            {
                "models": [
                    {
                        "name": "models/" + m,
                        "version": "001",
                        "displayName": m,
                        "inputTokenLimit": 1048576,
                        "outputTokenLimit": 8192,
                        "supportedGenerationMethods": ["generateContent", "countTokens"],
                    }
                    for m in script.models
                ]
            }
        )

    # -- requests ---------------------------------------------------------------------------
    def route(self, method: str, path: str, query: str) -> Route | BadRequest | None:
        if method == "GET" and path in _PREFIXES:
            return Route("models")
        if method != "POST":
            return None
        for prefix in _PREFIXES:
            if path.startswith(prefix + "/"):
                model, sep, verb = path[len(prefix) + 1 :].partition(":")
                break
        else:
            return None
        if not sep or not model:
            return None
        if verb == "generateContent":
            return Route("complete", model, False)
        if verb == "streamGenerateContent":
            if parse_qs(query).get("alt") != ["sse"]:
                # Without alt=sse Gemini streams one JSON array; the fake only speaks SSE.
                return BadRequest("the fake Gemini provider supports only ?alt=sse streaming")
            return Route("complete", model, True)
        return None

    def auth_error(self, headers: Mapping[str, str], query: str) -> tuple[int, bytes] | None:
        if headers.get("x-goog-api-key") or headers.get("authorization", "").startswith("Bearer "):
            return None
        if "key" in parse_qs(query):
            return None
        return 403, self.error_body(403, None, None, "")

    def parse_call(self, body: Any, route: Route) -> Call:
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON payload received.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        system = body.get("systemInstruction", body.get("system_instruction"))
        texts = _texts(system)
        for content in contents:
            texts.extend(_texts(content))
        tool_name: str | None = None
        function = _first_function(body.get("tools"))
        if function is not None:
            last_user = next(
                (c for c in reversed(contents) if isinstance(c, dict) and c.get("role", "user") == "user"),
                None,
            )
            if TOOL_TRIGGER in " ".join(_texts(last_user)):
                tool_name = function
        model = route.model or ""
        return Call(model, bool(route.stream), False, count_words(texts), tool_name)

    # -- responses --------------------------------------------------------------------------
    def render_json(self, call: Call, rid: bytes) -> bytes:
        return self._json.get((call.model, call.tool_name)).render(rid, call.prompt_tokens)[0]

    def render_stream(self, call: Call, rid: bytes) -> StreamParts:
        t = self._stream.get((call.model, call.tool_name))
        return StreamParts.of(t.render(rid, call.prompt_tokens))

    def _response(
        self, model: str, parts: list[dict[str, Any]], completion: int, finish: bool
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": PT,
                "candidatesTokenCount": completion,
                "totalTokenCount": TT,
            },
            "modelVersion": self._s.response_model(model),
            "responseId": ID,
        }

    def _parts(self, tool: str | None) -> list[list[dict[str, Any]]]:
        """The reply as a list of part lists, one per stream chunk."""
        if tool is not None:
            return [[{"functionCall": {"name": tool, "args": {"city": "Paris"}}}]]
        return [[{"text": p}] for p in self._s.pieces]

    def _build_json(self, key: tuple[str, str | None]) -> Piece:
        model, tool = key
        chunks = self._parts(tool)
        parts = chunks[0] if tool is not None else [{"text": self._s.reply_text}]
        return json_bytes(self._response(model, parts, len(chunks), True)), len(chunks)

    def _build_stream(self, key: tuple[str, str | None]) -> StreamTemplate:
        model, tool = key
        chunks = self._parts(tool)
        pieces = tuple(
            (_sse(self._response(model, parts, i + 1, False)), i + 1) for i, parts in enumerate(chunks)
        )
        n = len(chunks)
        finish = _sse(self._response(model, [{"text": ""}], n, True))
        return StreamTemplate((b"", 0), pieces, (finish, n), (b"", n))

    # -- errors and odd bodies --------------------------------------------------------------
    def error_body(self, status: int, code: str | None, message: str | None, model: str) -> bytes:
        name, default_message = gemini_error_fields(status, code, model)
        return json_bytes({"error": {"code": status, "message": message or default_message, "status": name}})

    def error_event(self, status: int, code: str | None, model: str,
                    message: str | None = None) -> bytes:
        return b"data: " + self.error_body(status, code, message, model) + b"\r\n\r\n"

    def malformed_event(self) -> bytes:
        return b"data: {not json\r\n\r\n"

    def models_body(self) -> bytes:
        return self._models
