"""Stream translators fed realistic event sequences split at every byte boundary: Anthropic
events -> OpenAI chunks, and OpenAI chunks -> Anthropic events (the /v1/messages ingress)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from routegate.middleware.providers.anthropic import (
    AnthropicStreamTranslator,
    judge_anthropic_error,
)
from routegate.middleware.providers.base import MalformedUpstream
from routegate.middleware.providers.gemini import judge_gemini_error
from routegate.middleware.request.ingress_anthropic import AnthropicStreamWriter


def _anthropic(kind: str, **payload: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()


ANTHROPIC_STREAM = b"".join([
    _anthropic("message_start", message={
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 12, "cache_read_input_tokens": 3,
                                       "output_tokens": 1}}),
    _anthropic("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    _anthropic("ping"),
    _anthropic("content_block_delta", index=0, delta={"type": "text_delta", "text": "Checking "}),
    _anthropic("content_block_delta", index=0, delta={"type": "text_delta", "text": "both."}),
    _anthropic("content_block_stop", index=0),
    _anthropic("content_block_start", index=1, content_block={
        "type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}),
    _anthropic("content_block_delta", index=1, delta={"type": "input_json_delta",
                                                      "partial_json": "{\"city\": "}),
    _anthropic("content_block_delta", index=1, delta={"type": "input_json_delta",
                                                      "partial_json": "\"Oslo\"}"}),
    _anthropic("content_block_stop", index=1),
    _anthropic("content_block_start", index=2, content_block={
        "type": "tool_use", "id": "toolu_b", "name": "time", "input": {}}),
    _anthropic("content_block_delta", index=2, delta={"type": "input_json_delta",
                                                      "partial_json": "{}"}),
    _anthropic("content_block_stop", index=2),
    _anthropic("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None},
               usage={"output_tokens": 30}),
    _anthropic("message_stop"),
])


def _chunks(sse: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in sse.decode().splitlines()
            if line.startswith("data: {")]


@pytest.mark.parametrize("split", [1, 7, 64, len(ANTHROPIC_STREAM)])
def test_anthropic_events_become_openai_chunks(split: int) -> None:
    translator = AnthropicStreamTranslator(include_usage=True)
    out = b"".join(translator.feed(ANTHROPIC_STREAM[i:i + split])
                   for i in range(0, len(ANTHROPIC_STREAM), split)) + translator.close()
    assert out.endswith(b"data: [DONE]\n\n") and translator.done
    chunks = _chunks(out)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []:
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.get("id", "")
            entry["name"] += call.get("function", {}).get("name", "")
            entry["arguments"] += call.get("function", {}).get("arguments", "")
    assert text == "Checking both."
    assert calls == {0: {"id": "toolu_a", "name": "weather", "arguments": '{"city": "Oslo"}'},
                     1: {"id": "toolu_b", "name": "time", "arguments": "{}"}}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 15, "completion_tokens": 30, "total_tokens": 45}
    assert {c["id"] for c in chunks} == {"msg_1"} and translator.response_model == "claude-x"


def test_an_error_event_before_content_is_a_fallback_and_after_it_an_unfinished_stream() -> None:
    overloaded = _anthropic("error", error={"type": "overloaded_error", "message": "Overloaded"})
    start = ANTHROPIC_STREAM.split(b"event: ping")[0]
    with pytest.raises(MalformedUpstream, match="overloaded_error"):
        AnthropicStreamTranslator(False).feed(start + overloaded)
    translator = AnthropicStreamTranslator(False)
    cut = ANTHROPIC_STREAM.index(b"event: content_block_stop")
    translator.feed(ANTHROPIC_STREAM[:cut] + overloaded)
    assert translator.started and translator.close() == b"" and not translator.done
    assert translator.error == "overloaded_error: Overloaded"


def _openai(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"id": "chatcmpl-1", "model": "m", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"


OPENAI_STREAM = b"".join([
    _openai({"role": "assistant", "content": ""}),
    _openai({"content": "Let me look."}),
    _openai({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                             "function": {"name": "weather", "arguments": ""}}]}),
    _openai({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
    _openai({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
    _openai({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                             "function": {"name": "time", "arguments": "{}"}}]}),
    _openai({}, "tool_calls"),
    b'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":21,'
    b'"total_tokens":30}}\n\n',
    b"data: [DONE]\n\n",
])


@pytest.mark.parametrize("split", [1, 13, len(OPENAI_STREAM)])
def test_openai_chunks_become_anthropic_events(split: int) -> None:
    writer = AnthropicStreamWriter()
    out = b"".join(writer.feed(OPENAI_STREAM[i:i + split])
                   for i in range(0, len(OPENAI_STREAM), split)) + writer.close()
    events = [json.loads(line[6:]) for line in out.decode().splitlines()
              if line.startswith("data: ")]
    assert [e["type"] for e in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert events[0]["message"]["id"] == "msg_chatcmpl-1"
    assert events[5]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "weather",
                                          "input": {}}
    assert events[6]["index"] == events[7]["index"] == 1
    assert events[6]["delta"]["partial_json"] + events[7]["delta"]["partial_json"] == \
        '{"city":"Oslo"}'
    assert events[9]["content_block"]["id"] == "call_b" and events[10]["index"] == 2
    assert events[12]["delta"]["stop_reason"] == "tool_use"
    assert events[12]["usage"] == {"input_tokens": 9, "output_tokens": 21}


@pytest.mark.parametrize(("status", "body", "expected"), [
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     "fallback"),
    (400, {"type": "error", "error": {"type": "invalid_request_error",
                                      "message": "prompt is too long: 210000 tokens > 200000"}},
     "context"),
    (400, {"type": "error", "error": {"type": "invalid_request_error",
                                      "message": "Your credit balance is too low"}}, "fallback"),
    (400, {"type": "error", "error": {"type": "invalid_request_error",
                                      "message": "messages: roles must alternate"}}, "client"),
    (401, {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}},
     "fallback"),
])
def test_anthropic_error_decisions(status: int, body: dict[str, Any], expected: str) -> None:
    failure = judge_anthropic_error(status, json.dumps(body).encode(), httpx.Headers())
    decision = ("context" if failure.context_exceeded else
                "client" if failure.client_fault else "fallback")
    assert decision == expected


@pytest.mark.parametrize(("status", "name", "message", "expected"), [
    (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "fallback"),
    (400, "FAILED_PRECONDITION", "User location is not supported for the API use.", "fallback"),
    (400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of "
                              "tokens allowed (1048576).", "context"),
    (400, "INVALID_ARGUMENT", "Invalid JSON payload received.", "client"),
    (503, "UNAVAILABLE", "The model is overloaded.", "fallback"),
])
def test_gemini_error_decisions(status: int, name: str, message: str, expected: str) -> None:
    body = json.dumps({"error": {"code": status, "message": message, "status": name}}).encode()
    failure = judge_gemini_error(status, body, httpx.Headers())
    decision = ("context" if failure.context_exceeded else
                "client" if failure.client_fault else "fallback")
    assert decision == expected
