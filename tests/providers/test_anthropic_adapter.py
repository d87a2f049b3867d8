"""The Anthropic Messages adapter: the official openai SDK through the gateway to a fake
Anthropic upstream (requests, answers, streams, tool calls, errors)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from bench.fakes import FakeProvider, Fault
from routegate.middleware.wire.anthropic import to_anthropic_request
from tests.providers.native_pool import two_kinds

TOOLS: list[ChatCompletionToolParam] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
TOOL_ARGS = {"city": "Paris"}


@pytest.fixture
def anthropic_first() -> Iterator[tuple[FakeProvider, FakeProvider, str]]:
    with two_kinds("anthropic", "openai") as setup:
        yield setup


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)


def test_answer_is_translated_both_ways(anthropic_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    fake, _, url = anthropic_first
    raw = client(url).chat.completions.with_raw_response.create(
        model="primary", stop=["END"], temperature=1.5, top_p=0.9,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "developer", "content": "Answer in English."},
                  {"role": "user", "content": "Hi there"},
                  {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "How are you"}])
    completion = raw.parse()
    assert raw.headers["x-routegate-model"] == "primary"
    assert completion.choices[0].message.content == "Hello from the fake provider."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "primary-up"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 11  # the fake counts words, system included
    assert completion.usage.completion_tokens == 5
    sent = fake.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "sk-test-provider-secret"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    body = sent.body
    assert body["model"] == "primary-up" and body["max_tokens"] == 4096
    assert body["system"] == [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "Answer in English."}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["stop_sequences"] == ["END"]
    assert body["temperature"] == 1.0 and body["top_p"] == 0.9


def test_stream_with_usage(anthropic_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    fake, _, url = anthropic_first
    stream = client(url).chat.completions.create(
        model="primary", stream=True, stream_options={"include_usage": True}, max_tokens=50,
        messages=[{"role": "user", "content": "Hi"}])
    text, usage, finish, ids = "", None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Hello from the fake provider."
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens == 1
    assert len(ids) == 1
    assert fake.requests[-1].body["stream"] is True
    assert fake.requests[-1].body["max_tokens"] == 50


def test_stream_without_include_usage_has_no_usage_chunk(
        anthropic_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    _, _, url = anthropic_first
    response = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "model": "primary", "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: {")]
    assert all(event["choices"] for event in events)
    assert response.text.rstrip().endswith("data: [DONE]")


def _tool_round_trip(url: str, fake: FakeProvider, stream: bool) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the weather? CALL_TOOL"}]
    sdk = client(url)
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in sdk.chat.completions.create(model="primary", messages=messages,
                                                 tools=TOOLS, stream=True):
            for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert finish == "tool_calls" and list(calls) == [0]
        call_id, name, arguments = calls[0]["id"], calls[0]["name"], calls[0]["arguments"]
    else:
        completion = sdk.chat.completions.create(model="primary", messages=messages, tools=TOOLS,
                                                 tool_choice="required")
        assert completion.choices[0].finish_reason == "tool_calls"
        tool_calls = completion.choices[0].message.tool_calls
        assert tool_calls is not None and len(tool_calls) == 1
        function = tool_calls[0].function  # type: ignore[union-attr]
        call_id, name, arguments = tool_calls[0].id, function.name, function.arguments
        assert fake.requests[-1].body["tool_choice"] == {"type": "any"}
    assert name == "get_weather" and json.loads(arguments) == TOOL_ARGS
    assert fake.requests[-1].body["tools"][0]["input_schema"]["required"] == ["city"]
    follow_up: list[ChatCompletionMessageParam] = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"}]
    answer = sdk.chat.completions.create(model="primary", messages=follow_up, tools=TOOLS)
    assert answer.choices[0].message.content == "Hello from the fake provider."
    turns = fake.requests[-1].body["messages"]
    assert turns[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": call_id, "name": "get_weather", "input": TOOL_ARGS}]}
    assert turns[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call_id, "content": "Sunny, 21 C"}]}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_tool_call_round_trip(anthropic_first: tuple[FakeProvider, FakeProvider, str],
                              stream: bool) -> None:
    fake, _, url = anthropic_first
    _tool_round_trip(url, fake, stream)


@pytest.mark.parametrize("fault", [Fault.status(529), Fault.status(500), Fault.status(401),
                                   Fault.error_mid_stream(0, 529), Fault.malformed()],
                         ids=["529", "500", "401", "error-event", "malformed"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_provider_errors_fall_back(anthropic_first: tuple[FakeProvider, FakeProvider, str],
                                   fault: Fault, stream: bool) -> None:
    fake, backup, url = anthropic_first
    fake.set_default(fault)
    response = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "model": "primary", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-routegate-model"] == "backup"
    assert backup.requests[-1].body["model"] == "backup-up"


def test_rate_limit_with_short_retry_after_retries_the_same_model(
        anthropic_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    fake, backup, url = anthropic_first
    fake.inject(Fault.status(429, headers={"retry-after": "0"}))
    completion = client(url).chat.completions.create(
        model="primary", messages=[{"role": "user", "content": "Hi"}])
    assert completion.model == "primary-up"
    assert len(fake.requests) == 2 and not backup.requests


def test_prompt_too_long_moves_to_a_larger_context_window(
        anthropic_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    fake, backup, url = anthropic_first
    fake.set_default(Fault.status(400, code="context_length_exceeded"))
    backup.inject(Fault.status(400, code="context_length_exceeded"), model="backup-up")
    response = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "model": "primary", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200 and response.headers["x-routegate-model"] == "big"


def test_invalid_request_is_the_clients_and_not_retried(
        anthropic_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    fake, backup, url = anthropic_first
    fake.set_default(Fault.status(400, message="messages.0.content: bad block"))
    with pytest.raises(openai.BadRequestError) as info:
        client(url).chat.completions.create(model="primary",
                                            messages=[{"role": "user", "content": "Hi"}])
    assert "bad block" in info.value.message
    assert len(fake.requests) == 1 and not backup.requests


def _fields(body: dict[str, Any]) -> dict[str, msgspec.Raw]:
    return {k: msgspec.Raw(msgspec.json.encode(v)) for k, v in body.items()}


def test_request_translation_of_images_tools_and_parameters() -> None:
    body = to_anthropic_request(_fields({
        "model": "x", "max_completion_tokens": 99, "stop": "###", "user": "u-1",
        "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Rain"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "Sun"}]},
            {"role": "user", "content": "Thanks"}]}), "claude-x", 4096, stream=False)
    assert body["max_tokens"] == 99 and body["stop_sequences"] == ["###"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather",
                                   "disable_parallel_tool_use": True}
    user, assistant, results = body["messages"]
    assert user["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    assert user["content"][2] == {"type": "image", "source": {
        "type": "url", "url": "https://example.com/cat.jpg"}}
    assert [b["type"] for b in assistant["content"]] == ["text", "tool_use", "tool_use"]
    assert assistant["content"][2]["input"] == {"city": "Rome"}
    # both tool results and the next user text share one user turn
    assert results["role"] == "user"
    assert [b.get("tool_use_id") for b in results["content"]] == ["call_1", "call_2", None]
    assert results["content"][1]["content"] == "Sun"
    assert "stream" not in body
