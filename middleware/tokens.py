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

from routegate.middleware.config import UsageConfig
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.wire.openai import Usage
from routegate.middleware.wire.openai_messages import field, text_content

__all__ = ["EstimatedUsage", "TokenEstimator", "prompt_text"]

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
