"""Anthropic Messages wire format: OpenAI chat requests in, OpenAI answers out.

``to_anthropic_request`` turns an OpenAI chat request into a ``POST /v1/messages`` body:
system and developer messages become ``system``; assistant ``tool_calls`` become ``tool_use``
blocks; ``tool`` messages become ``tool_result`` blocks in a user turn; consecutive turns of
one role are merged (the API wants user and assistant to alternate). The Structs decode what
comes back: whole messages, stream events and error bodies.
"""

from __future__ import annotations

from typing import Any

import msgspec

from routegate.middleware.contracts import Usage
from routegate.middleware.wire.openai_messages import (
    content_parts,
    data_url,
    field,
    parse_arguments,
    stop_list,
    text_content,
)

__all__ = [
    "FINISH_REASONS",
    "AnthropicError",
    "AnthropicMessage",
    "AnthropicUsage",
    "ContentBlock",
    "StreamEvent",
    "openai_usage",
    "to_anthropic_request",
]

# stop_reason -> finish_reason
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class ContentBlock(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class AnthropicMessage(msgspec.Struct):
    content: list[ContentBlock]
    id: str = ""
    model: str = ""
    stop_reason: str | None = None
    usage: AnthropicUsage | None = None


class Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class ErrorDetail(msgspec.Struct):
    type: str = ""
    message: str = ""


class StreamEvent(msgspec.Struct):
    type: str
    index: int = 0
    message: AnthropicMessage | None = None
    content_block: ContentBlock | None = None
    delta: Delta | None = None
    usage: AnthropicUsage | None = None
    error: ErrorDetail | None = None


class AnthropicError(msgspec.Struct):
    error: ErrorDetail | None = None


def openai_usage(usage: AnthropicUsage | None, input_tokens: int = 0) -> Usage | None:
    """Anthropic counts cached prompt tokens apart; OpenAI's prompt_tokens includes them."""
    if usage is None:
        return None
    prompt = (usage.input_tokens if usage.input_tokens is not None else input_tokens) + (
        usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    completion = usage.output_tokens or 0
    return Usage(prompt, completion, prompt + completion)


def to_anthropic_request(fields: dict[str, msgspec.Raw], upstream_model: str,
                         default_max_tokens: int, stream: bool) -> dict[str, Any]:
    """The ``/v1/messages`` body for an OpenAI chat request's top-level fields."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in field(fields, "messages") or []:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_content(message.get("content"))
            if text:
                system.append({"type": "text", "text": text})
        elif role == "user":
            _append(turns, "user", [_user_block(p) for p in content_parts(message.get("content"))])
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message))
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id") or message.get("name") or ""
            result = {"type": "tool_result", "tool_use_id": str(call_id),
                      "content": text_content(message.get("content"))}
            _append(turns, "user", [result])
    body: dict[str, Any] = {"model": upstream_model, "messages": turns}
    if system:
        body["system"] = system
    max_tokens = field(fields, "max_completion_tokens") or field(fields, "max_tokens")
    body["max_tokens"] = max_tokens if isinstance(max_tokens, int) else default_max_tokens
    stops = stop_list(field(fields, "stop"))
    if stops:
        body["stop_sequences"] = stops
    temperature = field(fields, "temperature")
    if isinstance(temperature, int | float):
        body["temperature"] = min(float(temperature), 1.0)  # OpenAI's range is 0..2, this 0..1
    top_p = field(fields, "top_p")
    if isinstance(top_p, int | float):
        body["top_p"] = top_p
    user = field(fields, "user")
    if isinstance(user, str):
        body["metadata"] = {"user_id": user}
    tools = [_tool(t) for t in field(fields, "tools") or [] if isinstance(t, dict)]
    if tools:
        body["tools"] = tools
        choice = _tool_choice(field(fields, "tool_choice"), field(fields, "parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:  # an empty turn: the API rejects empty and whitespace-only text blocks
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _user_block(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, dict) else str(image or "")
        inline = data_url(url)
        if inline is not None:
            return {"type": "image", "source": {"type": "base64", "media_type": inline[0],
                                                "data": inline[1]}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    if kind == "file":
        file = part.get("file") if isinstance(part.get("file"), dict) else {}
        inline = data_url(str(file.get("file_data", ""))) if file else None
        if inline is not None:
            return {"type": "document", "source": {"type": "base64", "media_type": inline[0],
                                                   "data": inline[1]}}
    return {"type": "text", "text": str(part.get("text", ""))}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = text_content(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": str(call.get("id", "")),
                       "name": str(function.get("name", "")),
                       "input": parse_arguments(function.get("arguments"))})
    return blocks


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    inner = tool.get("function")
    function: dict[str, Any] = inner if isinstance(inner, dict) else tool
    out: dict[str, Any] = {"name": function.get("name", ""),
                           "input_schema": function.get("parameters")
                           or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None = None
    if choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict):
        function = choice.get("function") or {}
        out = {"type": "tool", "name": function.get("name", "")}
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out
