"""The Gemini adapter: the official openai SDK through the gateway to a fake Gemini upstream
(generateContent, streamGenerateContent?alt=sse, function calls, usageMetadata, errors)."""

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
from routegate.middleware.config import ModelConfig, ProviderConfig
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.providers.gemini import GeminiAdapter
from routegate.middleware.wire.gemini import to_gemini_request
from routegate.middleware.wire.openai import ChatRequest
from tests.providers.native_pool import two_kinds

TOOLS: list[ChatCompletionToolParam] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "additionalProperties": False,
                   "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_ARGS = {"city": "Paris"}


@pytest.fixture
def gemini_first() -> Iterator[tuple[FakeProvider, FakeProvider, str]]:
    with two_kinds("gemini", "openai") as setup:
        yield setup


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)


def test_answer_is_translated_both_ways(gemini_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    fake, _, url = gemini_first
    completion = client(url).chat.completions.create(
        model="primary", stop="END", temperature=0.3, max_tokens=64, seed=7,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi there"},
                  {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "How are you"}])
    assert completion.choices[0].message.content == "Hello from the fake provider."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "primary-up"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (8, 5)
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/primary-up:generateContent"
    assert sent.headers["x-goog-api-key"] == "sk-test-provider-secret"
    assert "key" not in sent.query  # never in the URL, where logs keep it
    body = sent.body
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["generationConfig"] == {"temperature": 0.3, "seed": 7, "maxOutputTokens": 64,
                                        "stopSequences": ["END"]}


def test_stream_with_usage(gemini_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    fake, _, url = gemini_first
    stream = client(url).chat.completions.create(
        model="primary", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hi"}])
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Hello from the fake provider."
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens == 1
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/primary-up:streamGenerateContent" and sent.query == "alt=sse"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_function_call_round_trip(gemini_first: tuple[FakeProvider, FakeProvider, str],
                                  stream: bool) -> None:
    fake, _, url = gemini_first
    sdk = client(url)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the weather? CALL_TOOL"}]
    if stream:
        call_id = name = arguments = ""
        finish = None
        for chunk in sdk.chat.completions.create(model="primary", messages=messages, tools=TOOLS,
                                                 stream=True):
            for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                call_id += call.id or ""
                if call.function is not None:
                    name += call.function.name or ""
                    arguments += call.function.arguments or ""
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert finish == "tool_calls"
    else:
        completion = sdk.chat.completions.create(model="primary", messages=messages, tools=TOOLS,
                                                 tool_choice="required")
        assert completion.choices[0].finish_reason == "tool_calls"
        calls = completion.choices[0].message.tool_calls
        assert calls is not None and len(calls) == 1
        call_id, name = calls[0].id, calls[0].function.name  # type: ignore[union-attr]
        arguments = calls[0].function.arguments  # type: ignore[union-attr]
        assert fake.requests[-1].body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert call_id and name == "get_weather" and json.loads(arguments) == TOOL_ARGS
    declaration = fake.requests[-1].body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather"
    assert "additionalProperties" not in declaration["parameters"]
    follow_up: list[ChatCompletionMessageParam] = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"}]
    answer = sdk.chat.completions.create(model="primary", messages=follow_up, tools=TOOLS)
    assert answer.choices[0].message.content == "Hello from the fake provider."
    contents = fake.requests[-1].body["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": TOOL_ARGS}}]}
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"result": "Sunny, 21 C"}}}]}


@pytest.mark.parametrize("fault", [Fault.status(503), Fault.status(500), Fault.status(403),
                                   Fault.status(429), Fault.error_mid_stream(0, 503),
                                   Fault.malformed()],
                         ids=["503", "500", "403", "429", "error-event", "malformed"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_provider_errors_fall_back(gemini_first: tuple[FakeProvider, FakeProvider, str],
                                   fault: Fault, stream: bool) -> None:
    fake, backup, url = gemini_first
    fake.set_default(fault)
    response = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "model": "primary", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-routegate-model"] == "backup"
    assert backup.requests[-1].body["model"] == "backup-up"


def test_token_limit_moves_to_a_larger_context_window(
        gemini_first: tuple[FakeProvider, FakeProvider, str]) -> None:
    fake, backup, url = gemini_first
    fake.set_default(Fault.status(400, code="context_length_exceeded"))
    backup.inject(Fault.status(400, code="context_length_exceeded"), model="backup-up")
    response = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "model": "primary", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200 and response.headers["x-routegate-model"] == "big"


@pytest.mark.parametrize(("fault", "code"), [
    (Fault.status(400), "invalid_request"),
    (Fault.status(400, code="content_policy_violation"), "content_policy_violation")])
def test_invalid_argument_is_the_clients_and_not_retried(
        gemini_first: tuple[FakeProvider, FakeProvider, str], fault: Fault, code: str) -> None:
    fake, backup, url = gemini_first
    fake.set_default(fault)
    with pytest.raises(openai.BadRequestError) as info:
        client(url).chat.completions.create(model="primary",
                                            messages=[{"role": "user", "content": "Hi"}])
    assert info.value.code == code
    assert len(fake.requests) == 1 and not backup.requests


def _fields(body: dict[str, Any]) -> dict[str, msgspec.Raw]:
    return {k: msgspec.Raw(msgspec.json.encode(v)) for k, v in body.items()}


def test_request_translation_of_images_and_json_mode() -> None:
    body = to_gemini_request(_fields({
        "model": "x", "response_format": {"type": "json_schema", "json_schema": {
            "name": "r", "schema": {"type": "object", "additionalProperties": False,
                                    "properties": {"a": {"type": "string"}}}}},
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "tools": TOOLS,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png?x=1"}}]}]}))
    parts = body["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    assert parts[2] == {"fileData": {"mimeType": "image/png",
                                     "fileUri": "https://example.com/cat.png?x=1"}}
    assert body["generationConfig"] == {"responseMimeType": "application/json", "responseSchema": {
        "type": "object", "properties": {"a": {"type": "string"}}}}
    assert body["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_blocked_prompt_and_retry_info_with_a_mock_transport() -> None:
    adapter = GeminiAdapter(ProviderConfig(type="gemini", base_url="https://g.test/v1beta"), "k")
    blocked = adapter.parse_answer(b'{"promptFeedback": {"blockReason": "SAFETY"}}')
    assert blocked.finish_reasons == ("content_filter",)
    failure = adapter.judge_error(429, msgspec.json.encode({"error": {
        "code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}}),
        httpx.Headers())
    assert failure.retry_after_s == 1.5 and not failure.client_fault

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking", "thought": True}, {"text": "Hi"}]}, "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2,
                              "thoughtsTokenCount": 4, "totalTokenCount": 9}})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    chat = ChatRequest(model="m", messages=[])
    request = ClientRequest(_fields({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                            chat, False)
    upstream = adapter.build_request(httpx.AsyncClient(), request, ModelConfig(provider="g"),
                                     "models/gemini-2.5-pro")
    response = client.send(upstream)
    answer = adapter.parse_answer(response.content)
    assert str(seen[0].url) == "https://g.test/v1beta/models/gemini-2.5-pro:generateContent"
    assert json.loads(answer.body)["choices"][0] == {
        "index": 0, "message": {"role": "assistant", "content": "Hi"},
        "finish_reason": "length", "logprobs": None}
    assert answer.usage is not None and answer.usage.completion_tokens == 6
