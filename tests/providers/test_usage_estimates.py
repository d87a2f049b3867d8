"""Token counts for answers without usage: counted with the local GGUF's tokenizer and marked
as estimated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import llama_cpp
import msgspec
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware import create_app
from routegate.middleware.asgi_types import Receive, Scope, Send
from routegate.middleware.config import UsageConfig
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.tokens import EstimatedUsage, TokenEstimator
from routegate.middleware.wire.openai import ChatRequest
from routegate.sidecar.local_llm import default_model_path
from tests.providers.native_pool import Recorder, model, native_config

ANSWER = "Tokenizers split text into pieces; this answer came without any usage."
PROMPT = [{"role": "user", "content": "Count my tokens, please"}]


@pytest.fixture(scope="module")
def vocab() -> llama_cpp.Llama:
    return llama_cpp.Llama(default_model_path(), vocab_only=True, verbose=False)


def tokens(vocab: llama_cpp.Llama, text: str) -> int:
    return len(vocab.tokenize(text.encode(), False, False))


@pytest.fixture
def no_usage_gateway() -> Iterator[tuple[FakeProvider, Recorder, str]]:
    fake = FakeProvider(kind="openai")
    recorder = Recorder()
    with serve_in_thread(fake) as fake_url:
        config = native_config({"p": ("openai", fake_url)}, {"primary": model("p", "up")})
        app = create_app(config)
        app.gateway.observers.add(recorder)
        with serve_in_thread(app, lifespan="on") as url:
            yield fake, recorder, url


def _ask(url: str, stream: bool) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=15, json={
        "model": "primary", "stream": stream, "messages": PROMPT,
        **({"stream_options": {"include_usage": True}} if stream else {})})


def _client_usage(response: httpx.Response) -> dict[str, object]:
    if not response.headers["content-type"].startswith("text/event-stream"):
        usage: dict[str, object] = response.json()["usage"]
        return usage
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: {")]
    assert response.text.endswith("data: [DONE]\n\n")
    assert events[-1]["choices"] == []  # the usage chunk comes last, before [DONE]
    usage = events[-1]["usage"]
    return usage


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_missing_usage_is_estimated_with_the_gguf_tokenizer(
        no_usage_gateway: tuple[FakeProvider, Recorder, str], vocab: llama_cpp.Llama,
        stream: bool) -> None:
    fake, recorder, url = no_usage_gateway
    if stream:
        half = len(ANSWER) // 2
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                  {"choices": [{"index": 0, "delta": {"content": ANSWER[:half]}}]},
                  {"choices": [{"index": 0, "delta": {"content": ANSWER[half:]},
                                "finish_reason": "stop"}]}]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    else:
        body = json.dumps({"id": "x", "object": "chat.completion", "model": "up", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ANSWER},
             "finish_reason": "stop"}]})
    fake.set_default(Fault.status(200, body=body))
    response = _ask(url, stream)
    assert ANSWER[-10:] in response.text
    attempt = recorder.last().attempts[0]
    assert attempt.usage_estimated
    assert isinstance(attempt.usage, EstimatedUsage)
    assert attempt.usage.completion_tokens == tokens(vocab, ANSWER)
    prompt = tokens(vocab, PROMPT[0]["content"])
    assert prompt < attempt.usage.prompt_tokens <= prompt + 4
    assert attempt.cost_usd is not None and attempt.cost_usd > 0
    # the client sees the same counts, marked
    assert _client_usage(response) == {
        "prompt_tokens": attempt.usage.prompt_tokens,
        "completion_tokens": attempt.usage.completion_tokens,
        "total_tokens": attempt.usage.total_tokens, "estimated": True}


def test_reported_usage_is_not_estimated(no_usage_gateway: tuple[FakeProvider, Recorder, str]) -> None:
    _, recorder, url = no_usage_gateway
    for stream in (False, True):
        usage = _client_usage(_ask(url, stream))
        attempt = recorder.last().attempts[0]
        assert attempt.usage is not None and not attempt.usage_estimated
        assert "estimated" not in usage and usage["completion_tokens"] == 5


async def test_without_a_tokenizer_the_estimate_falls_back_to_characters() -> None:
    estimator = TokenEstimator(UsageConfig(tokenizer_path="/nonexistent/model.gguf"))
    body = msgspec.json.encode({"model": "m", "messages": PROMPT})
    request = ClientRequest(msgspec.json.decode(body, type=dict[str, msgspec.Raw]),
                            msgspec.json.decode(body, type=ChatRequest), False)
    usage = await estimator.estimate(request, "x" * 40)
    assert estimator.method == "chars/4"
    assert usage.completion_tokens == 10 and usage.estimated


async def _usage_then_done_apart(scope: Scope, receive: Receive, send: Send) -> None:
    """An OpenAI upstream whose usage chunk and ``[DONE]`` arrive in separate reads, as real
    ones often do."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "up",
             "choices": [{"index": 0, "delta": {"content": ANSWER}, "finish_reason": "stop"}]}
    usage = {"id": "c1", "object": "chat.completion.chunk", "model": "up", "choices": [],
             "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "more_body": True,
                "body": f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(usage)}\n\n".encode()})
    await asyncio.sleep(0.05)  # the terminator comes in a later read
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def test_reported_usage_in_an_earlier_read_than_done_is_not_doubled() -> None:
    with serve_in_thread(_usage_then_done_apart) as fake_url:
        config = native_config({"p": ("openai", fake_url)}, {"primary": model("p", "up")})
        with serve_in_thread(create_app(config), lifespan="on") as url:
            response = _ask(url, stream=True)
    usages = [json.loads(line[6:])["usage"] for line in response.text.splitlines()
              if line.startswith("data: {") and '"usage"' in line]
    assert usages == [{"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}]
