"""Self-tests of the fake providers, over real HTTP: wire formats through the official SDKs,
auth, recorded requests, and the harness (faults: ``selftest_faults.py``).

Part of ``make test``; alone: ``python -m pytest bench/fakes/selftest.py``
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from starlette.types import Receive, Scope, Send

from bench.fakes import FakeProvider, Kind, serve_in_thread
from bench.fakes._testkit import (
    REPLY,
    TOOL_ANT,
    TOOL_OAI,
    Target,
    events,
    read_stream,
    text_of,
)


def test_openai_sdk(servers: dict[Kind, Target]) -> None:
    t = servers["openai"]
    sdk = openai.OpenAI(base_url=t.url + "/v1", api_key="sk-test", max_retries=0)
    msgs: Any = [{"role": "user", "content": "one two three"}]
    r = sdk.chat.completions.create(model="gpt-x", messages=msgs)
    assert r.choices[0].message.content == REPLY and r.model == "gpt-x"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 5)
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-x", messages=msgs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert [m.id for m in sdk.models.list()] == ["gpt-4o-mini", "gpt-4o"]
    tools: Any = TOOL_OAI
    msgs = [{"role": "user", "content": "please CALL_TOOL"}]
    r = sdk.chat.completions.create(model="gpt-x", messages=msgs, tools=tools)
    call: Any = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    stream = sdk.chat.completions.create(model="gpt-x", messages=msgs, tools=tools, stream=True)
    args = "".join(
        tc.function.arguments or ""
        for c in stream
        for tc in (c.choices[0].delta.tool_calls or [])
        if tc.function
    )
    assert json.loads(args) == {"city": "Paris"}


def test_openai_usage_chunk_only_when_asked(servers: dict[Kind, Target]) -> None:
    t = servers["openai"]
    path, headers, body = t.request(stream=True)
    del body["stream_options"]
    raw = httpx.post(t.url + path, headers=headers, json=body).content
    evs = events("openai", raw)
    assert evs[-1] == "[DONE]" and all("usage" not in e for e in evs[:-1])
    bad = httpx.post(t.url + path, headers=headers, json={**body, "stream": False, "stream_options": {}})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_anthropic_sdk(servers: dict[Kind, Target]) -> None:
    t = servers["anthropic"]
    sdk = anthropic.Anthropic(base_url=t.url, api_key="x", max_retries=0)
    msgs: Any = [{"role": "user", "content": "one two three"}]
    m = sdk.messages.create(model="claude-x", max_tokens=64, messages=msgs)
    assert m.content[0].type == "text" and m.content[0].text == REPLY
    assert (m.usage.input_tokens, m.usage.output_tokens, m.model) == (3, 5, "claude-x")
    with sdk.messages.stream(model="claude-x", max_tokens=64, messages=msgs) as s:
        assert "".join(s.text_stream) == REPLY
        final = s.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5
    raw = httpx.post(
        t.url + "/v1/messages",
        headers={"x-api-key": "x", "anthropic-version": "2023-06-01"},
        json={"model": "c", "max_tokens": 5, "messages": msgs, "stream": True},
    ).content
    order = [line[7:] for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert order == [
        b"message_start",
        b"content_block_start",
        b"ping",
        *[b"content_block_delta"] * 5,
        b"content_block_stop",
        b"message_delta",
        b"message_stop",
    ]
    tools: Any = TOOL_ANT
    msgs = [{"role": "user", "content": "CALL_TOOL now"}]
    with sdk.messages.stream(model="c", max_tokens=64, messages=msgs, tools=tools) as s:
        final = s.get_final_message()
    block: Any = final.content[0]
    assert final.stop_reason == "tool_use" and block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"city": "Paris"})


def test_gemini(servers: dict[Kind, Target], client: httpx.Client) -> None:
    t = servers["gemini"]
    r = t.post(client, model="gemini-x").json()
    assert r["candidates"][0]["content"]["parts"][0]["text"] == REPLY
    assert r["usageMetadata"]["promptTokenCount"] == 3 and r["modelVersion"] == "gemini-x"
    raw, err = read_stream(t, client)
    assert err is None and raw.endswith(b"\r\n\r\n") and raw.count(b"data: ") == 6
    evs = events("gemini", raw)
    assert "".join(text_of("gemini", evs)) == REPLY
    assert evs[-1]["candidates"][0]["finishReason"] == "STOP"
    assert evs[-1]["usageMetadata"]["totalTokenCount"] == 8
    r = t.post(client, text="CALL_TOOL", tools=True).json()
    assert r["candidates"][0]["content"]["parts"][0]["functionCall"] == {
        "name": "get_weather",
        "args": {"city": "Paris"},
    }
    path = "/v1beta/models/g:streamGenerateContent"
    assert client.post(t.url + path, headers={"x-goog-api-key": "k"}, json={}).status_code == 400
    assert client.get(t.url + "/v1beta/models", params={"key": "k"}).json()["models"]


def test_streamed_tool_call(t: Target, client: httpx.Client) -> None:
    raw, err = read_stream(t, client, text="CALL_TOOL please", tools=True)
    assert err is None
    assert json.loads("".join(text_of(t.kind, events(t.kind, raw)))) == {"city": "Paris"}


def test_auth_required(t: Target, client: httpx.Client) -> None:
    path, _, body = t.request(stream=False)
    r = client.post(t.url + path, json=body)
    assert r.status_code == {"openai": 401, "anthropic": 401, "gemini": 403}[t.kind]
    assert "error" in r.json()
    if t.kind == "anthropic":
        r = client.post(t.url + path, json=body, headers={"x-api-key": "x"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_recorded_requests(t: Target, client: httpx.Client) -> None:
    t.post(client, model="rec-model")
    (rec,) = t.fake.requests
    assert rec.model == "rec-model" and rec.method == "POST" and isinstance(rec.body, dict)
    assert all(k == k.lower() for k in rec.headers) and rec.received_at <= time.monotonic()


# -- the harness itself -----------------------------------------------------------------------
def test_serve_in_thread_generic_app_with_lifespan() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve_in_thread(app, lifespan="on") as url:
        assert httpx.get(url).status_code == 204
    assert seen == ["lifespan.startup", "lifespan.shutdown"]

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "nope"})

    with pytest.raises(RuntimeError), serve_in_thread(broken, lifespan="on"):
        pass


def test_cli_standalone() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "bench.fakes", "--kind", "openai", "--port", str(port), "--chunks", "3"]
    proc = subprocess.Popen(cmd, cwd=root)
    try:
        t = Target("openai", FakeProvider("openai"), f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 10
        with httpx.Client(timeout=2.0) as c:
            while True:
                raw, err = read_stream(t, c)
                if not isinstance(err, httpx.ConnectError):
                    break
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert err is None and len(text_of("openai", events("openai", raw))) == 3
    finally:
        proc.terminate()
        proc.wait(10)
