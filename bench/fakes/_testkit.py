"""Helpers for the self-tests: how to call each fake, and how to read its streams."""

from __future__ import annotations

import json
from typing import Any

import httpx

from bench.fakes import FakeProvider, Kind

__all__ = ["KINDS", "REPLY", "TOOL_ANT", "TOOL_OAI", "Target", "events", "finished", "read_stream", "text_of"]

KINDS: tuple[Kind, ...] = ("openai", "anthropic", "gemini")
REPLY = "Hello from the fake provider."
TOOL_OAI = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
TOOL_ANT = [{"name": "get_weather", "input_schema": {"type": "object"}}]
TOOL_GEM = [{"functionDeclarations": [{"name": "get_weather"}]}]


class Target:
    """One running fake plus the way to call it."""

    def __init__(self, kind: Kind, fake: FakeProvider, url: str) -> None:
        self.kind, self.fake, self.url = kind, fake, url

    def request(
        self, *, stream: bool, model: str = "m-1", text: str = "one two three", tools: bool = False
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        msgs = [{"role": "user", "content": text}]
        if self.kind == "openai":
            body: dict[str, Any] = {"model": model, "messages": msgs, "stream": stream}
            if stream:
                body["stream_options"] = {"include_usage": True}
            if tools:
                body["tools"] = TOOL_OAI
            return "/v1/chat/completions", {"authorization": "Bearer sk-test"}, body
        if self.kind == "anthropic":
            body = {"model": model, "max_tokens": 64, "messages": msgs, "stream": stream}
            if tools:
                body["tools"] = TOOL_ANT
            headers = {"x-api-key": "x", "anthropic-version": "2023-06-01"}
            return "/v1/messages", headers, body
        body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
        if tools:
            body["tools"] = TOOL_GEM
        verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"/v1beta/models/{model}:{verb}", {"x-goog-api-key": "k"}, body

    def post(self, client: httpx.Client, **kw: Any) -> httpx.Response:
        path, headers, body = self.request(stream=False, **kw)
        return client.post(self.url + path, headers=headers, json=body)


def events(kind: Kind, raw: bytes) -> list[Any]:
    """Decoded ``data:`` payloads of an SSE body ("[DONE]" kept as a string)."""
    sep = b"\r\n\r\n" if kind == "gemini" else b"\n\n"
    out: list[Any] = []
    for block in raw.split(sep):
        for line in block.splitlines():
            if line.startswith(b"data: "):
                data = line[6:]
                out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def text_of(kind: Kind, evs: list[Any]) -> list[str]:
    """Content pieces (text or tool arguments) in stream order."""
    out: list[str] = []
    for e in evs:
        if kind == "openai" and isinstance(e, dict) and e["choices"]:
            delta = e["choices"][0]["delta"]
            if delta.get("content"):
                out.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                if call["function"].get("arguments"):
                    out.append(call["function"]["arguments"])
        elif kind == "anthropic" and e["type"] == "content_block_delta":
            delta = e["delta"]
            out.append(delta.get("text") or delta.get("partial_json"))
        elif kind == "gemini":
            for part in e["candidates"][0]["content"]["parts"]:
                if part.get("text"):
                    out.append(part["text"])
                elif "functionCall" in part:
                    out.append(json.dumps(part["functionCall"]["args"]))
    return out


def read_stream(t: Target, client: httpx.Client, **kw: Any) -> tuple[bytes, Exception | None]:
    path, headers, body = t.request(stream=True, **kw)
    raw = b""
    try:
        with client.stream("POST", t.url + path, headers=headers, json=body) as r:
            assert r.status_code == 200, r.read()
            for chunk in r.iter_raw():
                raw += chunk
    except httpx.HTTPError as exc:
        return raw, exc
    return raw, None


def finished(kind: Kind, e: Any) -> bool:
    """Whether event ``e`` carries the finish reason."""
    if kind == "openai":
        return e != "[DONE]" and bool(e["choices"]) and bool(e["choices"][0]["finish_reason"])
    if kind == "anthropic":
        return bool(e["type"] == "message_delta")
    return "finishReason" in e["candidates"][0]
