"""Google's native Gemini API behind the OpenAI seam.

``POST {base_url}/models/{model}:generateContent`` for whole answers and
``:streamGenerateContent?alt=sse`` for streams, key in ``x-goog-api-key``. Every stream event
is a whole ``GenerateContentResponse`` carrying only the new parts; there is no end marker, so
the event with a ``finishReason`` completes the answer and the usage chunk and ``[DONE]`` are
written when the upstream closes.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from routegate.middleware.config import ModelConfig, ProviderConfig
from routegate.middleware.contracts import UpstreamFailure
from routegate.middleware.providers.base import Answer, ClientRequest, MalformedUpstream, retry_after_seconds
from routegate.middleware.providers.translated import TranslatedStream
from routegate.middleware.request.errors import error_body
from routegate.middleware.wire.gemini import (
    FINISH_REASONS,
    Candidate,
    GeminiError,
    GeminiResponse,
    openai_usage,
    to_gemini_request,
)
from routegate.middleware.wire.openai_messages import DONE, completion_body

__all__ = ["GeminiAdapter", "GeminiStreamTranslator", "judge_gemini_error"]

_response = msgspec.json.Decoder(GeminiResponse)
_error = msgspec.json.Decoder(GeminiError)
_encode = msgspec.json.Encoder().encode
_TOO_LONG = ("exceeds the maximum number of tokens", "input token count", "too long",
             "context window")
# Statuses that say "this provider, not this request": another model may well succeed.
_PROVIDER_SIDE = frozenset({"FAILED_PRECONDITION", "PERMISSION_DENIED", "UNAUTHENTICATED",
                            "NOT_FOUND", "RESOURCE_EXHAUSTED"})


class GeminiAdapter:
    def __init__(self, provider: ProviderConfig, api_key: str | None) -> None:
        self._base = provider.base_url.rstrip("/")
        headers = {"content-type": "application/json", "accept-encoding": "identity",
                   **provider.headers}
        if api_key:
            headers["x-goog-api-key"] = api_key
        self._headers = headers

    def build_request(self, client: httpx.AsyncClient, request: ClientRequest,
                      model: ModelConfig, upstream_model: str) -> httpx.Request:
        name = quote(upstream_model.removeprefix("models/"), safe="-._~")
        if request.stream:
            url = f"{self._base}/models/{name}:streamGenerateContent?alt=sse"
        else:
            url = f"{self._base}/models/{name}:generateContent"
        return client.build_request("POST", url, content=_encode(to_gemini_request(request.fields)),
                                    headers=self._headers)

    def judge_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamFailure:
        return judge_gemini_error(status, body, headers)

    def parse_answer(self, body: bytes) -> Answer:
        try:
            response = _response.decode(body)
        except msgspec.DecodeError as exc:
            raise MalformedUpstream(f"invalid generateContent body: {exc}") from exc
        if response.error is not None:
            raise MalformedUpstream(f"error in a 200 answer: {response.error.message}"[:200])
        usage = openai_usage(response.usage_metadata)
        model = response.model_version
        if not response.candidates:
            if response.prompt_feedback is None or not response.prompt_feedback.block_reason:
                raise MalformedUpstream("answer without candidates")
            out = completion_body(response_id=response.response_id or _new_id(), model=model,
                                  text=None, tool_calls=[], finish_reason="content_filter",
                                  usage=usage)
            return Answer(out, usage, model, ("content_filter",))
        candidate = response.candidates[0]
        text, calls = _candidate_output(candidate, 0)
        finish = _finish(candidate.finish_reason, bool(calls))
        out = completion_body(response_id=response.response_id or _new_id(), model=model,
                              text=text if text or not calls else None,
                              tool_calls=calls, finish_reason=finish, usage=usage)
        return Answer(out, usage, model, (finish,))

    def stream_translator(self, request: ClientRequest) -> GeminiStreamTranslator:
        return GeminiStreamTranslator(request.include_usage)


def _new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def _finish(reason: str | None, called: bool) -> str:
    if called and reason in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(reason or "STOP", "stop")


def _candidate_output(candidate: Candidate, first_index: int) -> tuple[str, list[dict[str, Any]]]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in candidate.content.parts if candidate.content is not None else []:
        if part.text and not part.thought:
            text.append(part.text)
        elif part.function_call is not None:
            call = part.function_call
            calls.append({"index": first_index + len(calls),
                          "id": call.id or "call_" + uuid.uuid4().hex[:24], "type": "function",
                          "function": {"name": call.name,
                                       "arguments": _encode(call.args or {}).decode()}})
    return "".join(text), calls


def judge_gemini_error(status: int, body: bytes, headers: httpx.Headers) -> UpstreamFailure:
    """Map a Google API error (``{"error": {"code", "message", "status"}}``) to a decision."""
    try:
        detail = _error.decode(body).error
    except msgspec.DecodeError:
        detail = None
    name = detail.status if detail is not None else ""
    message = detail.message if detail is not None else ""
    lowered = message.lower()
    if status in (400, 413) and any(marker in lowered for marker in _TOO_LONG):
        return UpstreamFailure("status", f"HTTP {status} context_length_exceeded", status=status,
                               context_exceeded=True, code="context_length_exceeded")
    # A bad key is a 400 INVALID_ARGUMENT here ("API key not valid"): the provider's problem.
    if status == 400 and name not in _PROVIDER_SIDE and "api key" not in lowered:
        code = ("content_policy_violation" if "safety" in lowered or "blocked" in lowered
                else "invalid_request")
        client_body = error_body(message or f"HTTP {status}", "invalid_request_error", code)
        return UpstreamFailure("status", f"HTTP {status} {code}", status=status,
                               client_fault=True, client_body=client_body, code=code)
    retry_after = None
    if status == 429:
        retry_after = retry_after_seconds(headers)
        if retry_after is None and detail is not None:
            retry_after = _retry_delay(detail.details)
    return UpstreamFailure("status", f"HTTP {status} {name}".strip(), status=status,
                           code=name or None, retry_after_s=retry_after)


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """google.rpc.RetryInfo's ``retryDelay`` ("3s", "1.5s")."""
    for item in details:
        delay = item.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


class GeminiStreamTranslator(TranslatedStream):
    """``streamGenerateContent?alt=sse`` events in, OpenAI chunks out."""

    __slots__ = ("_preamble", "_tools")

    def __init__(self, include_usage: bool) -> None:
        super().__init__(include_usage)
        self._preamble = False
        self._tools = 0

    def _translate(self, raw: bytes) -> bytes:
        event = self._decode(raw, _response)
        if event is None:
            return b""
        if event.error is not None:
            self.error = f"{event.error.status}: {event.error.message}"
            if not self._content:
                raise MalformedUpstream(f"error event before content ({self.error})"[:200])
            return b""
        chunks = self._chunks
        out: list[bytes] = []
        if not self._preamble:
            self._preamble = True
            chunks.id = "chatcmpl-" + (event.response_id or uuid.uuid4().hex)
            chunks.model = self.response_model = event.model_version
            out.append(chunks.role())
        if event.usage_metadata is not None:
            self.usage = openai_usage(event.usage_metadata)
        if event.candidates:
            candidate = event.candidates[0]
            text, calls = _candidate_output(candidate, self._tools)
            if text:
                self._content = True
                out.append(chunks.text(text))
            for call in calls:
                self._content = True
                self._tools += 1
                function = call["function"]
                out.append(chunks.tool_call_start(call["index"], call["id"], function["name"],
                                                  function["arguments"]))
            if candidate.finish_reason:
                reason = _finish(candidate.finish_reason, self._tools > 0)
                self.finish_reasons.append(reason)
                self._content = True
                self.done = True
                out.append(chunks.finish(reason))
        elif event.prompt_feedback is not None and event.prompt_feedback.block_reason:
            self.finish_reasons.append("content_filter")
            self._content = self.done = True
            out.append(chunks.finish("content_filter"))
        return b"".join(out)

    def close(self) -> bytes:
        if not self.done:
            return b""
        if self._include_usage and self.usage is not None:
            return self._chunks.usage(self.usage) + DONE
        return DONE
