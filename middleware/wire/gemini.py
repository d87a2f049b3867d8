"""Google Gemini API wire format (``generateContent``): OpenAI chat requests in, answers out.

``to_gemini_request`` maps messages to ``contents`` (roles ``user``/``model``) and
``systemInstruction``, parameters to ``generationConfig``, tools to ``functionDeclarations``
and tool messages to ``functionResponse`` parts (named after the call they answer). The Structs
decode responses, stream events (each a whole ``GenerateContentResponse``) and Google error
bodies.
"""

from __future__ import annotations

import mimetypes
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
    "Candidate",
    "GeminiError",
    "GeminiResponse",
    "openai_usage",
    "to_gemini_request",
]

# finishReason -> finish_reason (anything not listed -> "stop")
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# Schema keys the API's OpenAPI subset rejects.
_UNSUPPORTED_SCHEMA_KEYS = frozenset({"$schema", "additionalProperties", "strict", "$id"})


class FunctionCall(msgspec.Struct, rename="camel"):
    name: str = ""
    args: Any = None
    id: str | None = None


class Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool | None = None
    function_call: FunctionCall | None = None


class Content(msgspec.Struct, rename="camel"):
    parts: list[Part] = []
    role: str = "model"


class Candidate(msgspec.Struct, rename="camel"):
    content: Content | None = None
    finish_reason: str | None = None
    index: int = 0


class UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    total_token_count: int = 0
    thoughts_token_count: int = 0


class PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class ErrorDetail(msgspec.Struct, rename="camel"):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[dict[str, Any]] = []


class GeminiResponse(msgspec.Struct, rename="camel"):
    candidates: list[Candidate] = []
    usage_metadata: UsageMetadata | None = None
    model_version: str = ""
    response_id: str = ""
    prompt_feedback: PromptFeedback | None = None
    error: ErrorDetail | None = None  # an in-band error event in a stream


class GeminiError(msgspec.Struct, rename="camel"):
    error: ErrorDetail | None = None


def openai_usage(meta: UsageMetadata | None) -> Usage | None:
    if meta is None:
        return None
    completion = meta.candidates_token_count + meta.thoughts_token_count
    total = meta.total_token_count or meta.prompt_token_count + completion
    return Usage(meta.prompt_token_count, completion, total)


def to_gemini_request(fields: dict[str, msgspec.Raw]) -> dict[str, Any]:
    """The ``generateContent`` body for an OpenAI chat request's top-level fields."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, for functionResponse
    for message in field(fields, "messages") or []:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_content(message.get("content"))
            if text:
                system.append({"text": text})
        elif role == "user":
            _append(contents, "user", [_user_part(p) for p in content_parts(message.get("content"))])
        elif role == "assistant":
            parts: list[dict[str, Any]] = []
            text = text_content(message.get("content"))
            if text:
                parts.append({"text": text})
            for call in message.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                name = str(function.get("name", ""))
                call_names[str(call.get("id", ""))] = name
                parts.append({"functionCall": {"name": name,
                                               "args": parse_arguments(function.get("arguments"))}})
            _append(contents, "model", parts)
        elif role in ("tool", "function"):
            call_id = str(message.get("tool_call_id") or "")
            name = call_names.get(call_id) or str(message.get("name") or call_id)
            result: Any = text_content(message.get("content"))
            response = parse_arguments(result) if result.lstrip().startswith("{") else {
                "result": result}
            _append(contents, "user", [{"functionResponse": {"name": name, "response": response}}])
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config = _generation_config(fields)
    if config:
        body["generationConfig"] = config
    declarations = [_declaration(t) for t in field(fields, "tools") or [] if isinstance(t, dict)]
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(field(fields, "tool_choice"))
        if tool_config is not None:
            body["toolConfig"] = tool_config
    return body


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _user_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, dict) else str(image or "")
        inline = data_url(url)
        if inline is not None:
            return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        return {"inlineData": {"mimeType": "audio/" + str(audio.get("format", "wav")),
                               "data": str(audio.get("data", ""))}}
    return {"text": str(part.get("text", ""))}


def _generation_config(fields: dict[str, msgspec.Raw]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for openai_name, gemini_name in (("temperature", "temperature"), ("top_p", "topP"),
                                     ("presence_penalty", "presencePenalty"),
                                     ("frequency_penalty", "frequencyPenalty"),
                                     ("seed", "seed")):
        value = field(fields, openai_name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            config[gemini_name] = value
    max_tokens = field(fields, "max_completion_tokens") or field(fields, "max_tokens")
    if isinstance(max_tokens, int):
        config["maxOutputTokens"] = max_tokens
    stops = stop_list(field(fields, "stop"))
    if stops:
        config["stopSequences"] = stops
    response_format = field(fields, "response_format")
    if isinstance(response_format, dict) and response_format.get("type") in (
            "json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseSchema"] = _clean_schema(schema)
    return config


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    inner = tool.get("function")
    function: dict[str, Any] = inner if isinstance(inner, dict) else tool
    out: dict[str, Any] = {"name": function.get("name", "")}
    if function.get("description"):
        out["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict) and parameters.get("properties"):
        out["parameters"] = _clean_schema(parameters)
    return out


def _clean_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _clean_schema(v) for k, v in schema.items() if k not in _UNSUPPORTED_SCHEMA_KEYS}
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"functionCallingConfig": {"mode": "AUTO"}}
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name", "")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None
