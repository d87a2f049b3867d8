"""Anthropic Messages wire format: OpenAI chat requests in, OpenAI answers out.

``to_anthropic_request`` turns an OpenAI chat request into a ``POST /v1/messages`` body:
system and developer messages become ``system``; assistant ``tool_calls`` become ``tool_use``
blocks; ``tool`` messages become ``tool_result`` blocks in a user turn; consecutive turns of
one role are merged (the API wants user and assistant to alternate). The Structs decode what
comes back: whole messages, stream events and error bodies.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from routegate.middleware.wire.openai import Usage
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
    "STOP_REASONS",
    "AnthropicError",
    "AnthropicMessage",
    "AnthropicUsage",
    "ContentBlock",
    "StreamEvent",
    "from_anthropic_request",
    "openai_usage",
    "to_anthropic_message",
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
    if not blocks:
        blocks = [{"type": "text", "text": " "}] if role == "assistant" else []
        if not blocks:
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


# -- the other direction: Anthropic clients in front of the gateway (/v1/messages ingress) --

STOP_REASONS: dict[str, str] = {  # finish_reason -> stop_reason
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def from_anthropic_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request for an Anthropic ``/v1/messages`` body (already a JSON object).

    Raises ValueError naming the field when the body is not a Messages request.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("model: Field required")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise ValueError("messages: Field required")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    system_text = system if isinstance(system, str) else "".join(
        str(b.get("text", "")) for b in system or [] if isinstance(b, dict))
    if system_text:
        messages.append({"role": "system", "content": system_text})
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            raise ValueError(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        blocks = turn.get("content")
        if isinstance(blocks, str):
            messages.append({"role": turn["role"], "content": blocks})
        elif isinstance(blocks, list):
            if turn["role"] == "user":
                messages.extend(_openai_user_messages(blocks))
            else:
                messages.append(_openai_assistant_message(blocks))
        else:
            raise ValueError(f"messages.{index}.content: Field required")
    out: dict[str, Any] = {"model": model, "messages": messages}
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int):
        raise ValueError("max_tokens: Field required")
    out["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), int | float):
            out[name] = body[name]
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and stops:
        out["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = [_openai_tool(t) for t in body.get("tools") or [] if isinstance(t, dict)
             and t.get("name")]
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "any":
                out["tool_choice"] = "required"
            elif kind == "tool":
                out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
            elif kind in ("auto", "none"):
                out["tool_choice"] = kind
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # Anthropic events always carry usage
    return out


def _openai_user_messages(blocks: list[Any]) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages, which must directly follow the assistant turn."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_result":
            content = block.get("content")
            text = content if isinstance(content, str) else text_content(content)
            if block.get("is_error") is True:
                text = "Error: " + text
            results.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")),
                            "content": text})
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            source = block.get("source") or {}
            if source.get("type") == "base64":
                url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
            else:
                url = str(source.get("url", ""))
            parts.append({"type": "image_url", "image_url": {"url": url}})
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        joined: Any = "".join(p["text"] for p in parts) if only_text else parts
        results.append({"role": "user", "content": joined})
    return results


def _openai_assistant_message(blocks: list[Any]) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            text.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": {
                "name": str(block.get("name", "")),
                "arguments": _encode_json(block.get("input") or {})}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _openai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"],
                                "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class _Function(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class _ToolCall(msgspec.Struct):
    id: str = ""
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    id: str = ""
    model: str = ""
    usage: Usage | None = None


_completion = msgspec.json.Decoder(_Completion)


def to_anthropic_message(completion_body: bytes) -> dict[str, Any]:
    """An Anthropic ``message`` for an OpenAI ``chat.completion`` body."""
    completion = _completion.decode(completion_body)
    choice = completion.choices[0]
    content: list[dict[str, Any]] = []
    if choice.message.content:
        content.append({"type": "text", "text": choice.message.content})
    for call in choice.message.tool_calls or []:
        function = call.function or _Function()
        content.append({"type": "tool_use", "id": call.id or "toolu_" + uuid.uuid4().hex[:24],
                        "name": function.name, "input": parse_arguments(function.arguments)})
    usage = completion.usage or Usage()
    message_id = completion.id if completion.id.startswith("msg_") else (
        "msg_" + (completion.id or uuid.uuid4().hex))
    return {"id": message_id, "type": "message", "role": "assistant",
            "model": completion.model, "content": content,
            "stop_reason": STOP_REASONS.get(choice.finish_reason or "stop", "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}}
