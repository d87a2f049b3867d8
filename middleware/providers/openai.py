"""OpenAI-compatible upstreams (OpenAI, DeepSeek, Mistral, Groq, OpenRouter, Gemini's and
Anthropic's compatibility endpoints, the local llama.cpp server).

The client's bytes are forwarded as they came: only ``model`` is replaced by the upstream
name and ``stream_options.include_usage`` is forced on for streams (the gateway needs the
counts; the usage chunk is dropped again when the client did not ask for it). Stream events
are passed through unchanged; only events that mention ``usage`` or ``finish_reason`` are
looked into.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from routegate.middleware.config import ModelConfig, ProviderConfig
from routegate.middleware.contracts import UpstreamFailure, Usage
from routegate.middleware.providers.base import Answer, ClientRequest, MalformedUpstream, retry_after_seconds
from routegate.middleware.wire.openai import ChatCompletion, StreamChunk, UpstreamError
from routegate.middleware.wire.sse import SSEFramer, event_data, split_events

__all__ = ["OpenAIAdapter", "OpenAIStreamTranslator", "judge_openai_error"]

_completion = msgspec.json.Decoder(ChatCompletion)
_chunk = msgspec.json.Decoder(StreamChunk)
_error = msgspec.json.Decoder(UpstreamError)
_encode = msgspec.json.encode
_STREAM_OPTIONS = msgspec.Raw(b'{"include_usage":true}')
_DONE = b"data: [DONE]\n\n"
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_POLICY_CODES = frozenset({"content_policy_violation", "content_filter", "moderation_blocked"})


class OpenAIAdapter:
    def __init__(self, provider: ProviderConfig, api_key: str | None,
                 scrub: Callable[[bytes], bytes] | None = None) -> None:
        self._scrub = scrub
        self._url = httpx.URL(provider.base_url.rstrip("/") + "/chat/completions")
        # identity: stream bytes are relayed raw, so they must not arrive compressed
        headers = {"content-type": "application/json", "accept-encoding": "identity",
                   **provider.headers}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._headers = headers
        # Parsed and encoded once: httpx would redo both (URL merging, header normalising,
        # content sniffing) for every request through client.build_request.
        self._raw_headers = [(b"host", self._url.netloc), (b"user-agent", b"routegate"),
                             *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())]

    def build_request(self, client: httpx.AsyncClient, request: ClientRequest,
                      model: ModelConfig, upstream_model: str) -> httpx.Request:
        fields = dict(request.fields)
        fields["model"] = msgspec.Raw(_encode(upstream_model))
        if request.stream:
            fields["stream_options"] = _STREAM_OPTIONS
        body = _encode(fields)
        return httpx.Request("POST", self._url, stream=httpx.ByteStream(body),
                             headers=[*self._raw_headers, (b"content-length", b"%d" % len(body))])

    def judge_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamFailure:
        return judge_openai_error(status, body, headers)

    def parse_answer(self, body: bytes) -> Answer:
        try:
            completion = _completion.decode(body)
        except msgspec.DecodeError as exc:
            raise MalformedUpstream(f"invalid completion body: {exc}") from exc
        if not completion.choices:
            raise MalformedUpstream("completion without choices")
        reasons = tuple(reason for reason in (_choice.decode(raw).finish_reason
                                              for raw in completion.choices) if reason)
        return Answer(body=body, usage=completion.usage, response_model=completion.model,
                      finish_reasons=reasons)

    def stream_translator(self, request: ClientRequest) -> OpenAIStreamTranslator:
        return OpenAIStreamTranslator(request.include_usage, self._scrub)


def judge_openai_error(status: int, body: bytes, headers: httpx.Headers) -> UpstreamFailure:
    """Map an OpenAI-format error response to a fallback decision."""
    code: str | None = None
    message = ""
    try:
        parsed = _error.decode(body).error
    except msgspec.DecodeError:
        parsed = None
    if parsed is not None and not isinstance(parsed, str):
        code = None if parsed.code is None else str(parsed.code)
        message = parsed.message
    elif isinstance(parsed, str):
        message = parsed
    lowered = message.lower()
    if status in (400, 413, 422):
        if code in _CONTEXT_CODES or "context length" in lowered or "context window" in lowered:
            return UpstreamFailure("status", f"HTTP {status} context_length_exceeded", status=status,
                                   context_exceeded=True, code="context_length_exceeded")
        if code in _POLICY_CODES or "content policy" in lowered or "safety" in lowered:
            code = code or "content_policy_violation"
        return UpstreamFailure("status", f"HTTP {status} {code or ''}".strip(), status=status,
                               client_fault=True, client_body=body if parsed else None, code=code)
    return UpstreamFailure("status", f"HTTP {status}", status=status, code=code,
                           retry_after_s=retry_after_seconds(headers) if status == 429 else None)


class OpenAIStreamTranslator:
    """Passes SSE events through unchanged, event by event, as they complete."""

    __slots__ = ("_events", "_framer", "_include_usage", "_scrub", "done", "finish_reasons",
                 "response_model", "usage")

    def __init__(self, include_usage: bool,
                 scrub: Callable[[bytes], bytes] | None = None) -> None:
        self._include_usage = include_usage
        self._scrub = scrub  # for error events only: they may echo our request's headers
        self._framer = SSEFramer()
        self._events = 0
        self.usage: Usage | None = None
        self.response_model = ""
        self.finish_reasons: list[str] = []
        self.done = False

    @property
    def started(self) -> bool:
        """An event with content (text, tool call, finish) has arrived. Role-only preambles
        do not count, so a provider that dies right after its preamble still falls back."""
        return self._events > 0

    def feed(self, data: bytes) -> bytes:
        complete = self._framer.feed(data)
        if not complete:
            return b""
        if not self._needs_inspection(complete):
            self._events += 1
            return complete
        return b"".join(self._inspect(event + b"\n\n") for event in split_events(complete))

    def _needs_inspection(self, complete: bytes) -> bool:
        # Cheap byte checks keep the common content-delta event off the JSON decoder.
        return (self._events == 0 or b'"usage":{' in complete or b'"usage": {' in complete
                or b"[DONE]" in complete or b'"finish_reason":"' in complete
                or b'"finish_reason": "' in complete or b'"error"' in complete)

    def _inspect(self, event: bytes) -> bytes:
        data = event_data(event)
        if not data:  # comment / keep-alive line
            return event
        if data == b"[DONE]":
            self.done = True
            return event
        if self._scrub is not None and b'"error"' in data:
            event = self._scrub(event)
        try:
            chunk = _chunk.decode(data)
        except msgspec.DecodeError as exc:
            if self._events == 0:
                raise MalformedUpstream(f"invalid first stream event: {exc}") from exc
            return event  # mid-stream oddities are the client's to see, not ours to hide
        if self._events == 0 and not _has_content(chunk):
            return event  # held by the relay with what follows until content arrives
        self._events += 1
        if chunk.model and not self.response_model:
            self.response_model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
            if not chunk.choices and not self._include_usage:
                return b""
        if chunk.choices and (b'"finish_reason":"' in data or b'"finish_reason": "' in data):
            self.finish_reasons.extend(_finish_reasons(chunk))
        return event

    def close(self) -> bytes:
        if self.done:
            return b""
        if self.finish_reasons:  # complete answer, provider just forgot [DONE]
            self.done = True
            return _DONE
        return b""


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    # msgspec.Raw cannot sit in a union (``Raw | None`` rejects every non-null value)
    tool_calls: list[Any] | None = None
    function_call: dict[str, Any] | None = None


class _Choice(msgspec.Struct):
    finish_reason: str | None = None
    delta: _Delta | None = None


_choice = msgspec.json.Decoder(_Choice)


def _has_content(chunk: StreamChunk) -> bool:
    if chunk.usage is not None:
        return True
    for raw in chunk.choices:
        choice = _choice.decode(raw)
        delta = choice.delta
        if choice.finish_reason or (delta is not None and (
                delta.content or delta.refusal or delta.tool_calls or delta.function_call)):
            return True
    return False


def _finish_reasons(chunk: StreamChunk) -> list[str]:
    reasons = []
    for raw in chunk.choices:
        reason = _choice.decode(raw).finish_reason
        if reason:
            reasons.append(reason)
    return reasons
