"""Anthropic Messages wire format, the other direction: Anthropic clients in front of the
gateway (``POST /v1/messages``). ``from_anthropic_request`` turns a Messages body into an
OpenAI chat request (``tool_result`` blocks become ``tool`` messages, which OpenAI wants right
after the assistant turn); ``to_anthropic_message`` turns an OpenAI completion into a
``message``.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from routegate.middleware.contracts import Usage
from routegate.middleware.wire.openai_messages import parse_arguments, text_content

__all__ = ["STOP_REASONS", "from_anthropic_request", "to_anthropic_message"]

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
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise ValueError("max_tokens: Field required")
    if max_tokens < 1:  # a negative limit would turn the budget reservation into a refund
        raise ValueError("max_tokens: Input should be greater than or equal to 1")
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
