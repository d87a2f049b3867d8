"""Mid-stream recovery: a stream that breaks after content has started is finished by another
model, spliced into the same client stream.

Three pieces, all provider-agnostic (they read and write OpenAI format only):

- :class:`OutputTape` wraps the client's ``send`` and keeps the answer bytes sent so far, so
  the text so far (for the continuation prompt, and for token estimates) is known without
  the stream loop collecting anything.
- :func:`continuation_request` is the original request plus the text so far as an assistant
  turn and an instruction to continue exactly where it stopped.
- :class:`Splicer` wraps ``send`` for the continuation attempt: it drops the second response
  start and role preamble, and trims text the continuation repeats from the end of the prefix,
  so the client sees one stream whose text is prefix + continuation.

Tool-call streams are never spliced: half a JSON argument cannot be continued reliably.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from routegate.middleware.asgi_types import Message, Send
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.wire.openai import ChatMessage, ChatRequest
from routegate.middleware.wire.sse import SSEFramer, event_data, split_events

__all__ = ["Output", "OutputTape", "Splicer", "continuation_request"]

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder()
_OVERLAP_WINDOW = 256  # characters of continuation held back to look for repeated text
_MIN_OVERLAP = 6  # shorter matches are coincidence more often than repetition


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[Any] | None = None


class _Choice(msgspec.Struct):
    delta: _Message | None = None
    message: _Message | None = None
    finish_reason: str | None = None


class _Body(msgspec.Struct):
    choices: list[_Choice] = []


_body = msgspec.json.Decoder(_Body)


@dataclass(frozen=True, slots=True)
class Output:
    """What an answer said so far."""

    text: str
    tool_text: str  # tool names and arguments, for token estimates
    tool_calls: bool
    finished: bool  # a finish_reason was sent


class OutputTape:
    """A ``send`` wrapper that keeps the answer's body bytes (appends only: no parsing on the
    hot path; :meth:`output` parses when someone asks)."""

    __slots__ = ("_chunks", "_send", "stream")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._chunks: list[bytes] = []
        self.stream = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                self._chunks.append(body)
        elif message["type"] == "http.response.start":
            self.stream = dict(message.get("headers", [])).get(
                b"content-type", b"").startswith(b"text/event-stream")
        await self._send(message)

    def mark(self) -> int:
        return len(self._chunks)

    def output(self, since: int = 0) -> Output:
        data = b"".join(self._chunks[since:])
        if not self.stream:
            return _parse(data, whole=True)
        return _parse_events(data)


def _parse(data: bytes, *, whole: bool) -> Output:
    try:
        body = _body.decode(data)
    except msgspec.DecodeError:
        return Output("", "", False, False)
    return _collect([body], whole)


def _parse_events(data: bytes) -> Output:
    bodies: list[_Body] = []
    for event in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:") and line[5:].strip().startswith(b"{"):
                try:
                    bodies.append(_body.decode(line[5:]))
                except msgspec.DecodeError:
                    continue
    return _collect(bodies, whole=False)


def _collect(bodies: list[_Body], whole: bool) -> Output:
    text: list[str] = []
    tools: list[str] = []
    finished = False
    for body in bodies:
        for choice in body.choices[:1]:
            part = choice.message if whole else choice.delta
            finished = finished or bool(choice.finish_reason)
            if part is None:
                continue
            if part.content:
                text.append(part.content)
            for call in part.tool_calls or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    tools.append(str(function.get("name") or "") + str(function.get("arguments") or ""))
                else:
                    tools.append("")
    return Output("".join(text), "".join(tools), bool(tools), finished)


def continuation_request(request: ClientRequest, prefix: str, instruction: str) -> ClientRequest:
    """``request`` with the text so far as the assistant's turn and a request to continue."""
    messages = _decode_any.decode(request.fields["messages"])
    messages = [*messages, {"role": "assistant", "content": prefix},
                {"role": "user", "content": instruction}]
    fields = dict(request.fields)
    fields["messages"] = msgspec.Raw(_encode(messages))
    chat = ChatRequest(
        model=request.chat.model,
        messages=[*request.chat.messages, ChatMessage(role="assistant", content=prefix),
                  ChatMessage(role="user", content=instruction)],
        stream=request.chat.stream, stream_options=request.chat.stream_options,
        max_tokens=request.chat.max_tokens,
        max_completion_tokens=request.chat.max_completion_tokens, n=request.chat.n)
    return ClientRequest(fields, chat, request.include_usage)


class Splicer:
    """``send`` for a continuation attempt: one stream for the client, no repeated text."""

    def __init__(self, send: Send, prefix: str) -> None:
        self._send = send
        self._tail = prefix[-_OVERLAP_WINDOW:]
        self._held: list[dict[str, Any]] = []  # content events held while looking for overlap
        self._held_text = ""
        self._checked = not prefix
        self._framer = SSEFramer()
        self.started = False  # continuation bytes reached the client

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            return  # the client's response started with the broken attempt
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        more = bool(message.get("more_body", False))
        out = self._feed(message.get("body", b""), final=not more)
        if out or not more:
            self.started = self.started or bool(out)
            await self._send({"type": "http.response.body", "body": out, "more_body": more})

    async def release(self) -> None:
        """The continuation broke too: send what was held back, the stream stays open."""
        out = self._feed(b"", final=True)
        if out:
            self.started = True
            await self._send({"type": "http.response.body", "body": out, "more_body": True})

    def _feed(self, data: bytes, *, final: bool) -> bytes:
        out = b"".join(self._event(event) for event in split_events(self._framer.feed(data)))
        if final:
            out += self._flush()
        return out

    def _event(self, event: bytes) -> bytes:
        data = event_data(event)
        if not data.startswith(b"{"):
            return self._flush() + event + b"\n\n"  # [DONE], comments, in-band errors
        chunk = _decode_any.decode(data)
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not choices:
            return self._flush() + event + b"\n\n"  # the usage chunk
        delta = choices[0].get("delta") or {}
        content = delta.get("content")
        if not content and not delta.get("tool_calls") and not choices[0].get("finish_reason"):
            return b""  # a role preamble: the client already has one
        if content and not self._checked:
            self._held.append(chunk)
            self._held_text += content
            if len(self._held_text) < len(self._tail):
                return b""
            return self._flush()
        return self._flush() + event + b"\n\n"

    def _flush(self) -> bytes:
        if self._checked:
            return b""
        self._checked = True
        if not self._held:
            return b""
        text = self._held_text[_overlap(self._tail, self._held_text):]
        first = self._held[0]
        first["choices"][0]["delta"] = {"content": text}
        self._held = []
        return b"data: " + _encode(first) + b"\n\n" if text else b""


def _overlap(prefix: str, continuation: str) -> int:
    """How many leading characters of ``continuation`` repeat the end of ``prefix``."""
    if prefix and continuation.startswith(prefix):
        return len(prefix)  # restarted from the beginning of what we have
    for size in range(min(len(prefix), len(continuation)), _MIN_OVERLAP - 1, -1):
        if prefix.endswith(continuation[:size]):
            return size
    return 0
