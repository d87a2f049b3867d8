"""Token counts for answers whose provider sent no usage, estimated with a real tokenizer.

The tokenizer is the embedded local model's (SmolLM2's GGUF, loaded by llama.cpp in
vocab-only mode: about 20 MB and half a second, once, off the event loop, only when a provider
first omits usage). Another model's tokenizer differs from the provider's by a few percent,
far closer than characters / 4; when llama.cpp or the GGUF is missing, characters / 4 it is.
Estimated counts are an :class:`EstimatedUsage`, so every reader can tell them apart
(``AttemptInfo.usage_estimated``; ``"estimated": true`` where they are shown).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Protocol

import msgspec

from routegate.middleware.asgi_types import Message, Send
from routegate.middleware.config import UsageConfig
from routegate.middleware.contracts import Usage
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.recovery import OutputTape
from routegate.middleware.wire.openai_messages import field, text_content, usage_dict

__all__ = ["EstimatedUsage", "TokenEstimator", "UsageFiller", "prompt_text", "with_estimated_usage"]

log = logging.getLogger("routegate")
_MESSAGE_OVERHEAD = 4  # role markers and separators a chat template adds per message
_INLINE_LIMIT = 4096  # characters tokenized on the event loop; longer texts go to a thread


class EstimatedUsage(Usage):
    """Usage the gateway counted itself because the provider did not report it."""

    estimated: ClassVar[bool] = True


class _Tokenizer(Protocol):
    def tokenize(self, text: bytes, add_bos: bool = ..., special: bool = ...) -> list[int]: ...


class TokenEstimator:
    """Counts tokens with the local GGUF's vocabulary; loads it on first use."""

    def __init__(self, config: UsageConfig) -> None:
        self._path = config.tokenizer_path
        self._tokenizer: _Tokenizer | None = None
        self._loaded = False
        self._lock = asyncio.Lock()

    @property
    def method(self) -> str:
        return "gguf" if self._tokenizer is not None else "chars/4"

    async def load(self) -> None:
        async with self._lock:
            if not self._loaded:
                self._tokenizer = await asyncio.to_thread(self._load)
                self._loaded = True

    def _load(self) -> _Tokenizer | None:
        try:
            import llama_cpp

            from routegate.sidecar.local_llm import default_model_path

            path = self._path or default_model_path()
            tokenizer: _Tokenizer = llama_cpp.Llama(path, vocab_only=True, verbose=False)
            return tokenizer
        except (ImportError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:
            log.warning("token estimates fall back to characters/4: %s", exc)
            return None

    def count_now(self, text: str) -> int:
        """Tokens in ``text`` with whatever is loaded (synchronous)."""
        if not text:
            return 0
        if self._tokenizer is None:
            return max(1, (len(text) + 3) // 4)
        return len(self._tokenizer.tokenize(text.encode("utf-8", "replace"), False, False))

    async def count(self, text: str) -> int:
        await self.load()
        if len(text) > _INLINE_LIMIT:
            return await asyncio.to_thread(self.count_now, text)
        return self.count_now(text)

    async def estimate(self, request: ClientRequest, completion: str,
                       prompt_tokens: int | None = None) -> EstimatedUsage:
        """Usage for ``completion`` answering ``request`` (``prompt_tokens`` when known)."""
        if prompt_tokens is None:
            messages = field(request.fields, "messages") or []
            text = prompt_text(messages)
            tools = request.fields.get("tools")
            if tools is not None:  # tool definitions are part of the prompt the model reads
                text += "\n" + bytes(tools).decode("utf-8", "replace")
            prompt_tokens = await self.count(text) + _MESSAGE_OVERHEAD * len(messages)
        completion_tokens = await self.count(completion)
        return EstimatedUsage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


def prompt_text(messages: list[Any]) -> str:
    """Everything of a message list a model reads as text: contents, tool calls, tool names."""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        parts.append(text_content(message.get("content")))
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                function = call.get("function") or {}
                parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    return "\n".join(p for p in parts if p)


_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_DONE = b"data: [DONE]\n\n"
_decode_any = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


class UsageFiller(OutputTape):
    """The answer tape (:class:`OutputTape`) of a stream that also shows the client estimated
    usage where the provider sent none: a usage chunk (``"estimated": true``) before
    ``[DONE]`` when the client asked for one. Streams with usage pass untouched; the only work
    per chunk is a list append and two substring checks. (Whole answers get theirs from
    :func:`with_estimated_usage`, called by the relay before the headers go out.)"""

    __slots__ = ("_estimator", "_request", "_stream_from", "_usage_seen")

    def __init__(self, send: Send, request: ClientRequest, estimator: TokenEstimator) -> None:
        super().__init__(send)
        self._request = request
        self._estimator = estimator
        self._usage_seen = False
        self._stream_from = 0  # first chunk of the current response

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            body = message.get("body", b"")
            if self.stream and body and not self._usage_seen:
                if any(marker in body for marker in _USAGE_MARKERS):
                    self._usage_seen = True
                elif body.endswith(_DONE) and self._request.include_usage:
                    message = await self._with_usage_chunk(body, message)
        elif kind == "http.response.start":
            self._usage_seen = False
            self._stream_from = len(self._chunks)
        await super().__call__(message)

    async def _with_usage_chunk(self, body: bytes, message: Message) -> Message:
        output = b"".join(self._chunks[self._stream_from:]) + body
        usage = await self._estimator.estimate(self._request, _stream_text(output))
        chunk = _encode({"id": _first_id(output), "object": "chat.completion.chunk",
                         "choices": [], "usage": usage_dict(usage, estimated=True)})
        return {**message, "body": body[: -len(_DONE)] + b"data: " + chunk + b"\n\n" + _DONE}


async def with_estimated_usage(estimator: TokenEstimator, request: ClientRequest,
                               body: bytes) -> tuple[bytes, EstimatedUsage] | None:
    """A whole chat completion that came without usage, with estimated usage added
    (``"estimated": true``); None when ``body`` is not a chat completion."""
    try:
        answer = _decode_any.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(answer, dict) or not answer.get("choices"):
        return None
    message = (answer["choices"][0] or {}).get("message") or {}
    text = text_content(message.get("content")) + "".join(
        str((call.get("function") or {}).get("arguments", ""))
        for call in message.get("tool_calls") or [] if isinstance(call, dict))
    usage = await estimator.estimate(request, text)
    answer["usage"] = usage_dict(usage, estimated=True)
    return _encode(answer), usage


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[Any] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Chunk(msgspec.Struct):
    id: str = ""
    choices: list[_Choice] = []


_chunk = msgspec.json.Decoder(_Chunk)


def _chunks(output: bytes) -> list[_Chunk]:
    chunks = []
    for line in output.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip().startswith(b"{"):
            try:
                chunks.append(_chunk.decode(line[5:]))
            except msgspec.DecodeError:
                continue
    return chunks


def _stream_text(output: bytes) -> str:
    parts: list[str] = []
    for chunk in _chunks(output):
        for choice in chunk.choices[:1]:
            if choice.delta is None:
                continue
            parts.append(choice.delta.content or "")
            for call in choice.delta.tool_calls or []:
                if isinstance(call, dict):
                    parts.append(str((call.get("function") or {}).get("arguments") or ""))
    return "".join(parts)


def _first_id(output: bytes) -> str:
    chunks = _chunks(output[:4096])
    return chunks[0].id if chunks else ""
