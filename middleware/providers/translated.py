"""The shared half of the stream translators that turn another API's events (Anthropic's,
Gemini's) into OpenAI chunks: framing, decoding, and the state the relay reads."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from routegate.middleware.contracts import Usage
from routegate.middleware.providers.base import MalformedUpstream
from routegate.middleware.wire.openai_messages import ChunkWriter
from routegate.middleware.wire.sse import SSEFramer, event_data, split_events

__all__ = ["TranslatedStream"]

Event = TypeVar("Event")


class TranslatedStream:
    """Frames the upstream's SSE bytes into events and hands each to :meth:`_translate`.
    A subclass sets ``_content`` once text, a tool call or a stop reason was produced (the
    stream counts as started then) and fills ``usage``, ``response_model``,
    ``finish_reasons``, ``done`` and ``error`` as the events tell."""

    __slots__ = ("_chunks", "_content", "_framer", "_include_usage", "done", "error",
                 "finish_reasons", "response_model", "usage")

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._framer = SSEFramer()
        self._chunks = ChunkWriter()
        self._content = False
        self.usage: Usage | None = None
        self.response_model = ""
        self.finish_reasons: list[str] = []
        self.done = False
        self.error: str | None = None  # an in-band error event ended the stream

    @property
    def started(self) -> bool:
        return self._content

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._translate(event)
                        for event in split_events(self._framer.feed(data)))

    def _translate(self, raw: bytes) -> bytes:
        raise NotImplementedError

    def _decode(self, raw: bytes, decoder: msgspec.json.Decoder[Event]) -> Event | None:
        """One event's data; None when it has none, or is unreadable once content flowed (a
        broken event before any content is a malformed stream: the relay falls back)."""
        data = event_data(raw)
        if not data:
            return None
        try:
            return decoder.decode(data)
        except msgspec.DecodeError as exc:
            if not self._content:
                raise MalformedUpstream(f"invalid stream event: {exc}") from exc
            return None
