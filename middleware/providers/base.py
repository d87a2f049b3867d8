"""The seam between the shared relay loop and each provider's wire format.

An adapter turns the client's OpenAI-format request into the provider's HTTP request, judges
the provider's errors (retry elsewhere, or the client's own fault), and translates answers back
into OpenAI format: whole bodies, and streams event by event through a :class:`StreamTranslator`.
Provider quirks stay behind this Protocol; the relay loop never branches on provider type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import httpx
import msgspec

from routegate.middleware.config import ModelConfig
from routegate.middleware.contracts import FailureKind, UpstreamFailure, Usage
from routegate.middleware.wire.openai import ChatRequest

__all__ = [
    "Answer",
    "ClientRequest",
    "FailureKind",
    "MalformedUpstream",
    "ProviderAdapter",
    "StreamTranslator",
    "UpstreamFailure",
]

class MalformedUpstream(Exception):
    """The provider answered 200 with something that is not a valid answer."""


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """One decoded client request; ``fields`` keeps every top-level value as raw JSON."""

    fields: dict[str, msgspec.Raw]
    chat: ChatRequest
    include_usage: bool  # the client asked for the usage chunk

    @property
    def stream(self) -> bool:
        return self.chat.stream


@dataclass(slots=True)
class Answer:
    """A complete non-streaming answer, already in OpenAI format."""

    body: bytes
    usage: Usage | None
    response_model: str
    finish_reasons: tuple[str, ...] = field(default_factory=tuple)


class StreamTranslator(Protocol):
    """Stateful, one per attempt: provider stream bytes in, OpenAI SSE bytes out."""

    usage: Usage | None
    response_model: str
    finish_reasons: list[str]
    done: bool  # the provider said the stream is complete

    def feed(self, data: bytes) -> bytes:
        """Bytes for the client (may be empty). Raises MalformedUpstream on a bad first event."""
        ...

    @property
    def started(self) -> bool:
        """At least one complete, valid event has been produced."""
        ...

    def close(self) -> bytes:
        """Upstream ended: the tail to send (``[DONE]`` when finished, else empty)."""
        ...


class ProviderAdapter(Protocol):
    def build_request(self, client: httpx.AsyncClient, request: ClientRequest,
                      model: ModelConfig, upstream_model: str) -> httpx.Request: ...

    def judge_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamFailure: ...

    def parse_answer(self, body: bytes) -> Answer:
        """Raises MalformedUpstream when the body is not a valid answer."""
        ...

    def stream_translator(self, request: ClientRequest) -> StreamTranslator: ...


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            return None
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for LLM APIs; treat as "no hint"
