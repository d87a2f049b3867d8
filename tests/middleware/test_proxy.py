"""The gateway as an OpenAI-compatible proxy, driven by the official openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bench.fakes import FakeProvider

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the gateway please"}]


def test_sync_sdk_non_streaming_answer_and_routing_headers(gateway: tuple[FakeProvider, str]) -> None:
    fake, url = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="cheap", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake provider."
    assert completion.model == "cheap-up"  # the model that actually answered
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-routegate-model"] == "cheap"
    assert raw.headers["x-routegate-provider"] == "fake"
    assert len(raw.headers["x-request-id"]) >= 16
    expected_cost = (completion.usage.prompt_tokens * 0.1 + completion.usage.completion_tokens * 0.2) / 1e6
    assert float(raw.headers["x-routegate-cost-usd"]) == pytest.approx(expected_cost)
    assert fake.requests[-1].body["model"] == "cheap-up"


async def test_async_sdk_streaming_with_usage(gateway: tuple[FakeProvider, str]) -> None:
    _, url = gateway
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    stream = await client.chat.completions.create(
        model="cheap", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Hello from the fake provider."
    assert usage is not None and usage.completion_tokens == 5


def test_usage_chunk_is_dropped_when_the_client_did_not_ask(gateway: tuple[FakeProvider, str]) -> None:
    fake, url = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    chunks = list(client.chat.completions.create(model="cheap", messages=MESSAGES, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from the fake provider.")
    # ...but the gateway asked upstream for it, to count tokens
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


def test_unknown_fields_are_forwarded_byte_for_byte(gateway: tuple[FakeProvider, str]) -> None:
    fake, url = gateway
    body = (b'{"model":"cheap","messages":[{"role":"user","content":"hi"}],'
            b'"temperature":0.25,"tools":[{"type":"function","function":{"name":"f",'
            b'"parameters":{"type":"object","properties":{}}}}],"response_format":{"type":"text"},'
            b'"x_vendor":{"nested":[1,2.50,"\\u00e9"]}}')
    response = httpx.post(url + "/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200
    forwarded = fake.requests[-1].raw
    for fragment in (b'"temperature":0.25', b'"x_vendor":{"nested":[1,2.50,"\\u00e9"]}',
                     b'"response_format":{"type":"text"}', b'"name":"f"'):
        assert fragment in forwarded
    assert b'"model":"cheap-up"' in forwarded


def test_auto_model_is_classified_and_routed(gateway: tuple[FakeProvider, str]) -> None:
    fake, url = gateway
    response = httpx.post(url + "/v1/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content":
                                       "Write a Python function that reverses a linked list"}]})
    assert response.status_code == 200
    assert response.headers["x-routegate-category"] == "code"
    assert response.headers["x-routegate-model"] == "mid"  # cheapest with code >= 0.85
    assert fake.requests[-1].body["model"] == "mid-up"


def test_models_endpoint_lists_available_pool_models(gateway: tuple[FakeProvider, str]) -> None:
    _, url = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    assert [model.id for model in client.models.list()] == ["auto", "cheap", "mid", "big"]


def test_incoming_request_id_is_kept(gateway: tuple[FakeProvider, str]) -> None:
    _, url = gateway
    response = httpx.post(url + "/v1/chat/completions", headers={"x-request-id": "trace-me-123"},
                          json={"model": "cheap", "messages": MESSAGES})
    assert response.headers["x-request-id"] == "trace-me-123"
