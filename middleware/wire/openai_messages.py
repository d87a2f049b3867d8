"""Reading OpenAI chat requests in full and writing OpenAI answers, for the translating adapters.

The core decodes only what routing needs (:mod:`routegate.middleware.wire.openai`). Adapters
that speak another wire format need every message part, tool call and parameter, so they read
the request's raw fields here, as plain JSON values, once per attempt. The writers build the
OpenAI completion and chunk bodies the translators emit, so every translator writes the same
shapes.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from routegate.middleware.contracts import Usage

__all__ = [
    "DONE",
    "ChunkWriter",
    "completion_body",
    "content_parts",
    "data_url",
    "field",
    "parse_arguments",
    "stop_list",
    "text_content",
    "usage_dict",
]

DONE = b"data: [DONE]\n\n"
_decode_any = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


def field(fields: dict[str, msgspec.Raw], name: str) -> Any:
    """One top-level request field as a plain JSON value (None when absent)."""
    raw = fields.get(name)
    return None if raw is None else _decode_any.decode(raw)


def content_parts(content: Any) -> list[dict[str, Any]]:
    """A message ``content`` (string, part list or null) as a list of parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return [p if isinstance(p, dict) else {"type": "text", "text": str(p)} for p in content]
    return [{"type": "text", "text": str(content)}]


def text_content(content: Any) -> str:
    """The text of a message ``content``, parts joined."""
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content_parts(content)
                   if p.get("type") in ("text", "input_text", "output_text"))


def data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` -> ("image/png", "AAAA"); None for other URLs."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep or ";base64" not in header:
        return None
    return header.split(";", 1)[0] or "application/octet-stream", data


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """Tool-call ``arguments`` (a JSON string in OpenAI format) as an object."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = _decode_any.decode(arguments)
    except msgspec.DecodeError:
        return {"arguments": arguments}  # keep what the model wrote rather than drop it
    return value if isinstance(value, dict) else {"value": value}


def stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str)]
    return []


def usage_dict(usage: Usage, estimated: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens,
                           "completion_tokens": usage.completion_tokens,
                           "total_tokens": usage.total_tokens}
    if estimated:
        out["estimated"] = True
    return out


def completion_body(*, response_id: str, model: str, text: str | None,
                    tool_calls: list[dict[str, Any]], finish_reason: str,
                    usage: Usage | None) -> bytes:
    """An OpenAI ``chat.completion`` body."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": response_id, "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason,
                     "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage_dict(usage)
    return _encode(body)


class ChunkWriter:
    """Writes OpenAI ``chat.completion.chunk`` SSE events for one answer."""

    __slots__ = ("created", "id", "model")

    def __init__(self, response_id: str = "", model: str = "") -> None:
        self.id = response_id or "chatcmpl-" + uuid.uuid4().hex
        self.model = model
        self.created = int(time.time())

    def _event(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk",
                                "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage_dict(usage)
        return b"data: " + _encode(body) + b"\n\n"

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._event([{"index": 0, "delta": delta, "finish_reason": finish_reason,
                             "logprobs": None}])

    def role(self) -> bytes:
        return self.delta({"role": "assistant", "content": ""})

    def text(self, text: str) -> bytes:
        return self.delta({"content": text})

    def tool_call_start(self, index: int, call_id: str, name: str, arguments: str = "") -> bytes:
        return self.delta({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                           "function": {"name": name, "arguments": arguments}}]})

    def tool_call_arguments(self, index: int, fragment: str) -> bytes:
        return self.delta({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def finish(self, reason: str) -> bytes:
        return self.delta({}, reason)

    def usage(self, usage: Usage) -> bytes:
        return self._event([], usage)
