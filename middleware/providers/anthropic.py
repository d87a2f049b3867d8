"""Anthropic's native Messages API (``POST {base_url}/v1/messages``) behind the OpenAI seam.

Requests are translated in full (:func:`to_anthropic_request`); answers and streams come back
as OpenAI completions and chunks. Errors map to fallback decisions: ``overloaded_error`` (529),
``api_error`` and ``rate_limit_error`` (429, with Retry-After) move on; "prompt is too long"
moves to a larger context window; other ``invalid_request_error``s are the client's.
"""

from __future__ import annotations

import httpx
import msgspec

from routegate.middleware.config import ModelConfig, ProviderConfig
from routegate.middleware.contracts import UpstreamFailure, Usage
from routegate.middleware.providers.base import Answer, ClientRequest, MalformedUpstream, retry_after_seconds
from routegate.middleware.providers.translated import TranslatedStream
from routegate.middleware.request.errors import error_body
from routegate.middleware.wire.anthropic import (
    FINISH_REASONS,
    AnthropicError,
    AnthropicMessage,
    StreamEvent,
    openai_usage,
    to_anthropic_request,
)
from routegate.middleware.wire.openai_messages import DONE, completion_body

__all__ = ["DEFAULT_ANTHROPIC_VERSION", "AnthropicAdapter", "AnthropicStreamTranslator",
           "judge_anthropic_error"]

DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
_message = msgspec.json.Decoder(AnthropicMessage)
_event = msgspec.json.Decoder(StreamEvent)
_error = msgspec.json.Decoder(AnthropicError)
_encode = msgspec.json.Encoder().encode
_TOO_LONG = ("prompt is too long", "too many tokens", "context window", "context length")
# 400s that are about the account, not the request: another provider may well answer.
_PROVIDER_SIDE = ("credit balance", "billing", "api key", "organization has been disabled")


class AnthropicAdapter:
    def __init__(self, provider: ProviderConfig, api_key: str | None) -> None:
        base = provider.base_url.rstrip("/")
        self._url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        self._max_tokens = provider.default_max_tokens
        headers = {"content-type": "application/json", "accept-encoding": "identity",
                   "anthropic-version": DEFAULT_ANTHROPIC_VERSION, **provider.headers}
        if api_key:
            headers["x-api-key"] = api_key
        self._headers = headers

    def build_request(self, client: httpx.AsyncClient, request: ClientRequest,
                      model: ModelConfig, upstream_model: str) -> httpx.Request:
        body = to_anthropic_request(request.fields, upstream_model, self._max_tokens,
                                    request.stream)
        return client.build_request("POST", self._url, content=_encode(body),
                                    headers=self._headers)

    def judge_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamFailure:
        return judge_anthropic_error(status, body, headers)

    def parse_answer(self, body: bytes) -> Answer:
        try:
            message = _message.decode(body)
        except msgspec.DecodeError as exc:
            raise MalformedUpstream(f"invalid message body: {exc}") from exc
        text: list[str] = []
        calls: list[dict[str, object]] = []
        for block in message.content:
            if block.type == "text" and block.text:
                text.append(block.text)
            elif block.type == "tool_use":
                calls.append({"id": block.id or "", "type": "function",
                              "function": {"name": block.name or "",
                                           "arguments": _encode(block.input or {}).decode()}})
        finish = FINISH_REASONS.get(message.stop_reason or "end_turn", "stop")
        usage = openai_usage(message.usage)
        out = completion_body(response_id=message.id, model=message.model,
                              text="".join(text) if text or not calls else None,
                              tool_calls=calls, finish_reason=finish, usage=usage)
        return Answer(body=out, usage=usage, response_model=message.model,
                      finish_reasons=(finish,))

    def stream_translator(self, request: ClientRequest) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(request.include_usage)


def judge_anthropic_error(status: int, body: bytes, headers: httpx.Headers) -> UpstreamFailure:
    """Map an Anthropic error response to a fallback decision."""
    try:
        detail = _error.decode(body).error
    except msgspec.DecodeError:
        detail = None
    kind = detail.type if detail is not None else ""
    message = detail.message if detail is not None else ""
    lowered = message.lower()
    if status == 413 or kind == "request_too_large" or (
            status == 400 and any(marker in lowered for marker in _TOO_LONG)):
        return UpstreamFailure("status", f"HTTP {status} context_length_exceeded", status=status,
                               context_exceeded=True, code="context_length_exceeded")
    if status in (400, 422) and kind in ("invalid_request_error", "") and not any(
            marker in lowered for marker in _PROVIDER_SIDE):
        code = "content_policy_violation" if "content filtering" in lowered else "invalid_request"
        client_body = error_body(message or f"HTTP {status}", "invalid_request_error", code)
        return UpstreamFailure("status", f"HTTP {status} {code}", status=status,
                               client_fault=True, client_body=client_body, code=code)
    return UpstreamFailure("status", f"HTTP {status} {kind}".strip(), status=status,
                           code=kind or None,
                           retry_after_s=retry_after_seconds(headers) if status == 429 else None)


class AnthropicStreamTranslator(TranslatedStream):
    """Anthropic stream events in, OpenAI chunks out, event by event."""

    __slots__ = ("_input_tokens", "_output_tokens", "_tools")

    def __init__(self, include_usage: bool) -> None:
        super().__init__(include_usage)
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool_calls index
        self._input_tokens = 0
        self._output_tokens = 0

    def _translate(self, raw: bytes) -> bytes:
        event = self._decode(raw, _event)
        if event is None:
            return b""
        kind = event.type
        chunks = self._chunks
        if kind == "content_block_delta" and event.delta is not None:
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                self._content = True
                return chunks.text(delta.text)
            if delta.type == "input_json_delta" and delta.partial_json and event.index in self._tools:
                return chunks.tool_call_arguments(self._tools[event.index], delta.partial_json)
            return b""
        if kind == "message_start" and event.message is not None:
            message = event.message
            chunks.id = message.id or chunks.id
            chunks.model = self.response_model = message.model
            if message.usage is not None:
                self._input_tokens = (message.usage.input_tokens or 0) + (
                    message.usage.cache_creation_input_tokens or 0) + (
                    message.usage.cache_read_input_tokens or 0)
                self._output_tokens = message.usage.output_tokens or 0
            return chunks.role()
        if kind == "content_block_start" and event.content_block is not None:
            block = event.content_block
            if block.type == "tool_use":
                self._content = True
                index = self._tools[event.index] = len(self._tools)
                return chunks.tool_call_start(index, block.id or "", block.name or "")
            if block.type == "text" and block.text:
                self._content = True
                return chunks.text(block.text)
            return b""
        if kind == "message_delta":
            out = b""
            if event.usage is not None and event.usage.output_tokens is not None:
                self._output_tokens = event.usage.output_tokens
            if event.usage is not None and event.usage.input_tokens:
                self._input_tokens = event.usage.input_tokens
            self.usage = Usage(self._input_tokens, self._output_tokens,
                               self._input_tokens + self._output_tokens)
            if event.delta is not None and event.delta.stop_reason:
                reason = FINISH_REASONS.get(event.delta.stop_reason, "stop")
                self.finish_reasons.append(reason)
                self._content = True
                out = chunks.finish(reason)
            return out
        if kind == "message_stop":
            self.done = True
            return self._tail()
        if kind == "error":
            detail = event.error
            self.error = f"{detail.type}: {detail.message}" if detail else "error event"
            if not self._content:
                raise MalformedUpstream(f"error event before content ({self.error})"[:200])
            return b""  # the relay ends the stream with its in-band error (or recovers)
        return b""  # ping, content_block_stop, unknown future events

    def _tail(self) -> bytes:
        if self._include_usage and self.usage is not None:
            return self._chunks.usage(self.usage) + DONE
        return DONE

    def close(self) -> bytes:
        if self.done:
            return b""
        if self.finish_reasons and self.error is None:  # finished, only message_stop missing
            self.done = True
            return self._tail()
        return b""
