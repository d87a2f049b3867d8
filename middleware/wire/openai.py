"""OpenAI chat-completions wire format: only the parts the gateway reads.

The request is decoded twice, cheaply: once as ``dict[str, Raw]`` (top-level keys, values
untouched, so every field the gateway does not know is forwarded byte for byte) and once into
:class:`ChatRequest` for validation and routing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from routegate.middleware.contracts import Usage

__all__ = [
    "MAX_N",
    "ChatCompletion",
    "ChatMessage",
    "ChatRequest",
    "StreamChunk",
    "StreamOptions",
    "UpstreamError",
    "Usage",
    "context_text",
    "message_text",
]

# Of the earlier user turn, a follow-up's second classification sees this much: enough to
# carry the conversation's topic into "and now make it shorter", not a whole pasted document.
CONTEXT_CHARS = 300

# Choices per request. OpenAI allows up to 128; every choice multiplies the output that the
# budget reserves, and no routing use needs more than a handful.
MAX_N = 16
# Output-token limits are positive; the gateway also caps them at the pool's largest context
# window (``Gateway.serve_chat``), this only keeps the arithmetic in machine range.
_OutputTokens = Annotated[int, msgspec.Meta(ge=1, le=(1 << 31) - 1)]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(msgspec.Struct):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: _OutputTokens | None = None
    max_completion_tokens: _OutputTokens | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_N)] | None = None


class ChatCompletion(msgspec.Struct):
    """What a non-streaming answer must have to count as well-formed."""

    choices: list[msgspec.Raw]
    model: str = ""
    usage: Usage | None = None


class StreamChunk(msgspec.Struct):
    choices: list[msgspec.Raw] = []
    usage: Usage | None = None
    model: str = ""


class UpstreamErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class UpstreamError(msgspec.Struct):
    error: UpstreamErrorDetail | str | None = None


def message_text(messages: list[ChatMessage], limit: int = 4000) -> str:
    """The text a classifier should see: the system prompt's head and the last user turn.

    Instructions often sit at the end of long inputs, so long text keeps head and tail.
    """
    parts: list[str] = []
    last_user: str = ""
    for message in messages:
        text = _content_text(message.content)
        if message.role == "user":
            last_user = text
        elif message.role in ("system", "developer") and not parts:
            parts.append(text[:500])
    parts.append(last_user)
    text = "\n".join(p for p in parts if p)
    if len(text) > limit:
        half = limit // 2
        text = text[:half] + " … " + text[-half:]
    return text


def context_text(messages: list[ChatMessage], limit: int = 4000) -> str | None:
    """:func:`message_text` with the head of the previous user turn before the last one: what
    a follow-up is classified from when the last turn alone is unsure. None for a request with
    a single user turn."""
    last = previous = -1
    for index, message in enumerate(messages):
        if message.role == "user":
            last, previous = index, last
    if previous < 0:
        return None
    earlier = _content_text(messages[previous].content)[:CONTEXT_CHARS]
    text = message_text(messages, limit)
    return f"{earlier}\n{text}" if earlier else text


def _content_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
