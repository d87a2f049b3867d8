"""POST /v1/messages: the official anthropic SDK against the gateway, routed to OpenAI-format,
Anthropic and Gemini upstreams, streaming and not, tool calls both ways, errors in Anthropic's
shape."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageParam, ToolParam

from bench.fakes import FakeProvider, Fault, serve_in_thread
from tests.conftest import running_gateway
from tests.providers.native_pool import Kind, model, native_config

TOOLS: list[ToolParam] = [{"name": "get_weather", "description": "Weather for a city",
                           "input_schema": {"type": "object",
                                            "properties": {"city": {"type": "string"}},
                                            "required": ["city"]}}]
REPLY = "Hello from the fake provider."


@pytest.fixture(params=["openai", "anthropic", "gemini"])
def upstream(request: pytest.FixtureRequest) -> Iterator[tuple[Kind, FakeProvider, str]]:
    """The gateway with two models on one fake of each wire format: (kind, fake, gateway URL)."""
    kind: Kind = request.param
    fake = FakeProvider(kind=kind)
    with serve_in_thread(fake) as fake_url:
        config = native_config({"p": (kind, fake_url)},
                               {"primary": model("p", "primary-up", 4096, ("backup",)),
                                "backup": model("p", "backup-up", 16384)})
        with running_gateway(config) as url:
            yield kind, fake, url


def sdk(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="client-key", max_retries=0)


def test_message(upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, fake, url = upstream
    raw = sdk(url).messages.with_raw_response.create(
        model="primary", max_tokens=100, system="Be brief.", stop_sequences=["END"],
        messages=[{"role": "user", "content": "Hi there"}])
    message = raw.parse()
    assert raw.headers["x-routegate-model"] == "primary"
    assert message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 4 and message.usage.output_tokens >= 1
    assert len(fake.requests) == 1


def test_message_stream(upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, _, url = upstream
    with sdk(url).messages.stream(model="primary", max_tokens=100,
                                  messages=[{"role": "user", "content": "Hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5 and final.usage.input_tokens == 1


def test_raw_event_order(upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, _, url = upstream
    response = httpx.post(url + "/v1/messages", timeout=10, json={
        "model": "primary", "max_tokens": 10, "stream": True,
        "messages": [{"role": "user", "content": "Hi"}]})
    kinds = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_tool_use_round_trip(upstream: tuple[Kind, FakeProvider, str], stream: bool) -> None:
    kind, fake, url = upstream
    client = sdk(url)
    messages: list[MessageParam] = [{"role": "user", "content": "Weather in Paris? CALL_TOOL"}]
    first: Message
    if stream:
        with client.messages.stream(model="primary", max_tokens=100, tools=TOOLS,
                                    messages=messages) as events:
            first = events.get_final_message()
    else:
        first = client.messages.create(model="primary", max_tokens=100, tools=TOOLS,
                                       tool_choice={"type": "any"}, messages=messages)
    assert first.stop_reason == "tool_use"
    tool_use = next(block for block in first.content if block.type == "tool_use")
    assert tool_use.name == "get_weather" and tool_use.input == {"city": "Paris"}
    assert tool_use.id
    follow_up: list[MessageParam] = [
        *messages,
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool_use.id,
                                           "name": tool_use.name, "input": tool_use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                      "content": "Sunny, 21 C"},
                                     {"type": "text", "text": "Thanks."}]}]
    answer = client.messages.create(model="primary", max_tokens=100, tools=TOOLS,
                                    messages=follow_up)
    assert answer.content[0].text == REPLY  # type: ignore[union-attr]
    sent = fake.requests[-1].body
    # the tool result reached the upstream in its own format, tied to the call
    if kind == "openai":
        assert sent["messages"][1]["tool_calls"][0]["id"] == tool_use.id
        assert sent["messages"][2:] == [
            {"role": "tool", "tool_call_id": tool_use.id, "content": "Sunny, 21 C"},
            {"role": "user", "content": "Thanks."}]
    elif kind == "anthropic":
        assert sent["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 21 C"},
            {"type": "text", "text": "Thanks."}]
    else:
        assert sent["contents"][2]["parts"] == [{"functionResponse": {
            "name": "get_weather", "response": {"result": "Sunny, 21 C"}}}, {"text": "Thanks."}]


def test_upstream_failure_falls_back_behind_the_same_endpoint(
        upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, fake, url = upstream
    fake.inject(Fault.status(503), times=2)  # the attempt and its same-model retry
    raw = sdk(url).messages.with_raw_response.create(
        model="primary", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-routegate-model"] == "backup"
    assert raw.parse().content[0].text == REPLY  # type: ignore[union-attr]


def test_errors_have_anthropics_shape(upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, fake, url = upstream
    client = sdk(url)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=10,
                               messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "The model `no-such-model` does not exist in this "
                                              "gateway's pool"}}
    response = httpx.post(url + "/v1/messages", timeout=10, json={
        "model": "primary", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 400
    assert response.json()["error"] == {"type": "invalid_request_error",
                                        "message": "max_tokens: Field required"}
    fake.set_default(Fault.status(503))
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model="primary", max_tokens=10,
                               messages=[{"role": "user", "content": "Hi"}])
    assert failed.value.status_code == 502
    body = failed.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    assert "primary" in body["error"]["message"]


def test_stream_broken_after_content_ends_with_an_error_event(
        upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, fake, url = upstream
    fake.set_default(Fault.reset_mid_stream(2))
    response = httpx.post(url + "/v1/messages", timeout=10, json={
        "model": "primary", "max_tokens": 10, "stream": True,
        "messages": [{"role": "user", "content": "Hi"}]})
    lines = response.text.splitlines()
    assert "event: error" in lines and "event: message_stop" not in lines
    error = json.loads(lines[lines.index("event: error") + 1][6:])
    assert error["type"] == "error" and "mid-stream" in error["error"]["message"]


def test_count_tokens_is_an_estimate_with_the_local_tokenizer(
        upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, fake, url = upstream
    client = sdk(url)
    short = client.messages.count_tokens(model="primary",
                                         messages=[{"role": "user", "content": "Hi"}])
    longer = client.messages.count_tokens(
        model="primary", system="You are a careful assistant.", tools=TOOLS,
        messages=[{"role": "user", "content": "Hi, how is the weather in Paris today?"}])
    assert 0 < short.input_tokens < longer.input_tokens
    assert not fake.requests  # counted locally, no provider call


def test_the_providers_model_name_finds_its_pool_model(
        upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, _, url = upstream
    raw = sdk(url).messages.with_raw_response.create(
        model="backup-up", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-routegate-model"] == "backup"


def test_auto_is_classified_and_routed(upstream: tuple[Kind, FakeProvider, str]) -> None:
    _, _, url = upstream
    raw = sdk(url).messages.with_raw_response.create(
        model="auto", max_tokens=10, messages=[{"role": "user", "content": "Hi, how are you?"}])
    assert raw.headers["x-routegate-category"] == "chat"
    assert raw.headers["x-routegate-model"] in ("primary", "backup")
