"""Pieces shared by the three wire formats: the request summary, byte templates, the Wire seam.

Responses are built once per (model, variant) as JSON bytes with sentinel strings where the
per-request values go (response id, prompt tokens, total tokens), compiled into one
``%``-format (:class:`Compiled`) and filled in per request: no JSON encoding on the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import msgspec

__all__ = [
    "DEFAULT_MODELS",
    "ID",
    "PT",
    "TT",
    "BadRequest",
    "Call",
    "Compiled",
    "Headers",
    "Kind",
    "Piece",
    "Route",
    "Script",
    "StreamParts",
    "StreamTemplate",
    "TemplateCache",
    "Wire",
    "count_words",
    "split_even",
]

Kind = Literal["openai", "anthropic", "gemini"]
Headers = tuple[tuple[bytes, bytes], ...]

DEFAULT_MODELS: Mapping[Kind, tuple[str, ...]] = {
    "openai": ("gpt-4o-mini", "gpt-4o"),
    "anthropic": ("claude-3-5-haiku-latest", "claude-sonnet-4-5"),
    "gemini": ("gemini-2.0-flash", "gemini-2.5-pro"),
}

# Sentinels: JSON-encoded as "\u0000id" etc., which no real text encodes to.
ID = "\x00id"
PT = "\x00pt"
TT = "\x00tt"
_ID_IN = msgspec.json.encode(ID)[1:-1]  # inside a string: keep the quotes around it
_PT_IN = msgspec.json.encode(PT)  # an int: replace the quoted sentinel
_TT_IN = msgspec.json.encode(TT)

TOOL_ARGS = '{"city": "Paris"}'
TOOL_TRIGGER = "CALL_TOOL"

# A piece of response bytes and the completion-token count its "total tokens" refers to.
Piece = tuple[bytes, int]


_SEP = b"\x00"  # never occurs in encoded JSON (control characters are escaped)


class Compiled:
    """Response bytes as one ``%``-format with the per-request values as placeholders.

    Rendering is one C-level ``bytes % mapping`` and one ``split``, whatever the number of
    chunks: no JSON encoding and no per-chunk Python work on the hot path.
    """

    __slots__ = ("_fmt", "_totals")

    def __init__(self, pieces: Iterable[Piece]) -> None:
        parts: list[bytes] = []
        totals: set[int] = set()
        for tpl, completion in pieces:
            tpl = tpl.replace(b"%", b"%%").replace(_ID_IN, b"%(i)s").replace(_PT_IN, b"%(p)d")
            if _TT_IN in tpl:
                tpl = tpl.replace(_TT_IN, b"%%(t%d)d" % completion)
                totals.add(completion)
            parts.append(tpl)
        self._fmt = _SEP.join(parts)
        self._totals = tuple(sorted(totals))

    @classmethod
    def of_stream(cls, t: StreamTemplate) -> Compiled:
        return cls((t.preamble, *t.chunks, t.finish, t.terminal))

    def render(self, rid: bytes, prompt_tokens: int) -> list[bytes]:
        """The pieces with the response id and token counts filled in."""
        values: dict[bytes, bytes | int] = {b"i": rid, b"p": prompt_tokens}
        for completion in self._totals:
            values[b"t%d" % completion] = prompt_tokens + completion
        return (self._fmt % values).split(_SEP)


def split_even(text: str, n: int) -> tuple[str, ...]:
    """Split ``text`` into ``min(n, len(text))`` pieces whose lengths differ by at most one."""
    n = max(1, min(n, len(text)))
    q, r = divmod(len(text), n)
    out: list[str] = []
    start = 0
    for i in range(n):
        end = start + q + (1 if i < r else 0)
        out.append(text[start:end])
        start = end
    return tuple(out)


def count_words(texts: Iterable[str]) -> int:
    """Prompt tokens of the fake: whitespace-separated words over all text contents."""
    return sum(len(t.split()) for t in texts)


def text_of(content: Any, text_key: str = "text") -> Iterable[str]:
    """Text of a message content: a string, or a list of blocks/parts with a text field."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                value = part.get(text_key)
                if isinstance(value, str):
                    yield value
            elif isinstance(part, str):
                yield part


class BadRequest(Exception):
    """The request body is not what the provider accepts; becomes a provider-style 400."""


@dataclass(frozen=True, slots=True)
class Route:
    op: Literal["complete", "models"]
    model: str | None = None  # from the path (Gemini)
    stream: bool | None = None  # from the path (Gemini)


@dataclass(frozen=True, slots=True)
class Call:
    """What the fake needs to know about one completion request."""

    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    tool_name: str | None  # set when the reply is a tool call


@dataclass(frozen=True, slots=True)
class Script:
    """The canned reply, pre-split."""

    reply_text: str
    pieces: tuple[str, ...]
    tool_pieces: tuple[str, ...]
    model_echo: bool
    models: tuple[str, ...]
    created: int

    @classmethod
    def build(cls, reply_text: str, chunks: int, model_echo: bool, models: Iterable[str]) -> Script:
        return cls(
            reply_text=reply_text,
            pieces=split_even(reply_text, chunks),
            tool_pieces=split_even(TOOL_ARGS, chunks),
            model_echo=model_echo,
            models=tuple(models),
            created=int(time.time()),
        )

    def response_model(self, requested: str) -> str:
        # A real provider often answers with a dated snapshot of the alias requested.
        return requested if self.model_echo else f"{requested}-2025-01-01"


@dataclass(frozen=True, slots=True)
class StreamTemplate:
    preamble: Piece
    chunks: tuple[Piece, ...]
    finish: Piece
    terminal: Piece


@dataclass(frozen=True, slots=True)
class StreamParts:
    """A stream's bytes for one request, already framed as events."""

    preamble: bytes  # sent together with the first content chunk
    chunks: tuple[bytes, ...]  # one per content event
    finish: bytes  # the finish-reason part
    terminal: bytes  # the end marker ([DONE], message_stop), with the usage chunk if asked

    @classmethod
    def of(cls, pieces: list[bytes]) -> StreamParts:
        """From :meth:`Compiled.render` of a stream template."""
        return cls(pieces[0], tuple(pieces[1:-2]), pieces[-2], pieces[-1])


K = TypeVar("K")
V = TypeVar("V")


class TemplateCache(Generic[K, V]):
    """A small memo for built templates, emptied when it grows past ``limit`` entries."""

    def __init__(self, build: Callable[[K], V], limit: int = 512) -> None:
        self._build = build
        self._limit = limit
        self._data: dict[K, V] = {}

    def get(self, key: K) -> V:
        value = self._data.get(key)
        if value is None:
            if len(self._data) >= self._limit:
                self._data.clear()
            value = self._data[key] = self._build(key)
        return value


class Wire(Protocol):
    """One provider's wire format: routes, auth, request parsing and canned bytes."""

    kind: Kind
    json_headers: Headers
    sse_headers: Headers

    def route(self, method: str, path: str, query: str) -> Route | BadRequest | None:
        """The operation for this path, a BadRequest, or None (404)."""
        ...

    def auth_error(self, headers: Mapping[str, str], query: str) -> tuple[int, bytes] | None: ...

    def parse_call(self, body: Any, route: Route) -> Call: ...

    def render_json(self, call: Call, rid: bytes) -> bytes: ...

    def render_stream(self, call: Call, rid: bytes) -> StreamParts: ...

    def error_body(self, status: int, code: str | None, message: str | None, model: str) -> bytes:
        """The provider's own error JSON for ``status``."""
        ...

    def error_event(self, status: int, code: str | None, model: str,
                    message: str | None = None) -> bytes:
        """An in-band SSE error event (``message`` overrides the default text)."""
        ...

    def malformed_event(self) -> bytes: ...

    def models_body(self) -> bytes: ...


def json_bytes(obj: Any) -> bytes:
    return msgspec.json.encode(obj)
