"""Mid-stream recovery: a stream cut after content started is finished by the next candidate,
spliced into the same client stream, with no text repeated; tool-call streams are not spliced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import anthropic
import httpx
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware import create_app
from tests.conftest import answer_text
from tests.providers.native_pool import Kind, Recorder, model, native_config

FIRST = "Alpha beta gamma delta epsilon"  # five chunks of six characters
SECOND = "Continued by the backup."
RECOVERY = {"recovery": {"mode": "continue", "max_splices": 1}}


@contextmanager
def recovering_gateway(first: Kind, second: Kind, *, second_reply: str = SECOND,
                       recovery: bool = True
                       ) -> Iterator[tuple[FakeProvider, FakeProvider, Recorder, str]]:
    a = FakeProvider(kind=first, reply_text=FIRST, chunks=5)
    b = FakeProvider(kind=second, reply_text=second_reply, chunks=3)
    recorder = Recorder()
    with serve_in_thread(a) as url_a, serve_in_thread(b) as url_b:
        config = native_config({"a": (first, url_a), "b": (second, url_b)},
                               {"primary": model("a", "primary-up", fallbacks=("backup",)),
                                "backup": model("b", "backup-up")},
                               RECOVERY if recovery else None)
        app = create_app(config)
        app.gateway.observers.add(recorder)
        with serve_in_thread(app, lifespan="on") as url:
            yield a, b, recorder, url


def ask(url: str, content: str = "Tell me a story", **extra: object) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=15, json={
        "model": "primary", "stream": True, "messages": [{"role": "user", "content": content}],
        **extra})


@pytest.mark.parametrize(("first", "second"), [("openai", "openai"), ("anthropic", "gemini"),
                                               ("gemini", "anthropic")])
def test_stream_cut_after_two_chunks_is_finished_by_the_backup(first: Kind, second: Kind) -> None:
    with recovering_gateway(first, second) as (a, b, recorder, url):
        a.set_default(Fault.reset_mid_stream(2))
        response = ask(url, stream_options={"include_usage": True})
        prefix = FIRST[:12]
        assert answer_text(response) == prefix + SECOND
        assert '"error"' not in response.text
        assert response.text.rstrip().endswith("data: [DONE]")
        roles = [line for line in response.text.splitlines() if '"role"' in line]
        assert len(roles) == 1  # one stream: the backup's preamble was not repeated
        # the backup was asked to continue from the text so far
        assert prefix in b.requests[-1].raw.decode()
        assert b"Continue your previous answer" in b.requests[-1].raw
        ctx = recorder.last()
        assert ctx.recoveries == 1
        broken, continued = ctx.attempts
        assert broken.model == "primary" and broken.error_after_first_byte
        assert continued.model == "backup" and continued.continuation_of == 0
        assert continued.error_after_first_byte is None
        assert ctx.state["outcome"].result == "success"
        assert ctx.state["outcome"].model == "backup"


def test_repeated_text_at_the_seam_is_not_sent_twice() -> None:
    # the backup starts by repeating the last words it was given
    with recovering_gateway("openai", "openai", second_reply="beta gamma delta.") as (
            a, _, _, url):
        a.set_default(Fault.reset_mid_stream(2))
        assert answer_text(ask(url)) == "Alpha beta gamma delta."


def test_stalled_stream_is_continued() -> None:
    with recovering_gateway("anthropic", "openai") as (a, _, recorder, url):
        a.set_default(Fault.stall_mid_stream(3, 4.0))  # the idle timeout is 1 s
        assert answer_text(ask(url)) == FIRST[:18] + SECOND
        assert "stalled" in (recorder.last().attempts[0].error_after_first_byte or "")


def test_tool_call_streams_are_not_spliced() -> None:
    with recovering_gateway("openai", "openai") as (a, b, recorder, url):
        a.set_default(Fault.reset_mid_stream(2))
        response = ask(url, "Weather? CALL_TOOL", tools=[{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}])
        last = [line for line in response.text.splitlines() if line.startswith("data:")][-1]
        assert json.loads(last[6:])["error"]["code"] == "stream_interrupted"
        assert not b.requests
        assert recorder.last().recoveries == 0


def test_splices_are_limited() -> None:
    with recovering_gateway("openai", "openai") as (a, b, recorder, url):
        a.set_default(Fault.reset_mid_stream(2))
        b.set_default(Fault.reset_mid_stream(1))
        response = ask(url)
        assert answer_text(response) == FIRST[:12] + SECOND[:8]
        assert "stream_interrupted" in response.text.rstrip().splitlines()[-1]
        ctx = recorder.last()
        assert ctx.recoveries == 1 and len(ctx.attempts) == 2
        assert ctx.state["outcome"].result == "error"


def test_off_by_default() -> None:
    with recovering_gateway("openai", "openai", recovery=False) as (a, b, _, url):
        a.set_default(Fault.reset_mid_stream(2))
        response = ask(url)
        assert "broke mid-stream" in response.text and not b.requests


def test_anthropic_client_sees_one_complete_message() -> None:
    with recovering_gateway("gemini", "openai") as (a, _, _, url):
        a.set_default(Fault.reset_mid_stream(2))
        client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
        with client.messages.stream(model="primary", max_tokens=50,
                                    messages=[{"role": "user", "content": "Hi"}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == FIRST[:12] + SECOND
        assert final.stop_reason == "end_turn"


def test_an_in_band_provider_error_mid_stream_is_continued() -> None:
    with recovering_gateway("anthropic", "openai") as (a, _, recorder, url):
        a.set_default(Fault.error_mid_stream(2, 529))  # event: error, overloaded_error
        assert answer_text(ask(url)) == FIRST[:12] + SECOND
        assert recorder.last().recoveries == 1
