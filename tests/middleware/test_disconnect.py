"""A client that leaves while its request waits for the provider (a slow non-streaming answer,
or a stream before its first token) closes the upstream request at once: the gateway stops
paying for an answer nobody will read. Answers slower than the watch's start still arrive."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware import create_app
from routegate.middleware.request.disconnect import WATCH_AFTER_S
from routegate.middleware.standalone.http_protocol import CoalescingHttpToolsProtocol
from tests.conftest import pool_config
from tests.providers.native_pool import Recorder

# Long provider timeouts: only the client's leaving can end these requests early.
PATIENT = {"connect_s": 1.0, "first_token_s": 30.0, "idle_s": 30.0, "total_s": 30.0}
CLIENT_GIVES_UP_S = WATCH_AFTER_S + 0.5


@pytest.fixture
def patient_gateway() -> Iterator[tuple[FakeProvider, Recorder, str]]:
    fake = FakeProvider(kind="openai")
    recorder = Recorder()
    with serve_in_thread(fake) as fake_url:
        app = create_app(pool_config({"f": fake_url}, timeouts=PATIENT))
        app.gateway.observers.add(recorder)
        with serve_in_thread(app, lifespan="on", http=CoalescingHttpToolsProtocol) as url:
            yield fake, recorder, url


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse-before-first-token"])
def test_client_leaving_a_waiting_request_closes_the_upstream_within_a_second(
        patient_gateway: tuple[FakeProvider, Recorder, str], stream: bool) -> None:
    fake, recorder, url = patient_gateway
    fake.set_default(Fault.hang(20.0))
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + "/v1/chat/completions", timeout=CLIENT_GIVES_UP_S, json={
            "model": "cheap", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]})
    left_at = time.monotonic()
    record = fake.wait_for_stream_close(timeout=5.0)
    assert record.client_disconnected
    assert record.closed_at is not None and record.closed_at - left_at < 1.0
    ctx = recorder.last()
    assert ctx.state["outcome"].status == 499
    assert [a.client_disconnected for a in ctx.attempts] == [True]  # no fallback for nobody
    assert len(fake.requests) == 1


def test_an_answer_slower_than_the_watch_start_still_arrives_and_the_connection_is_reused(
        patient_gateway: tuple[FakeProvider, Recorder, str]) -> None:
    fake, recorder, url = patient_gateway
    fake.set_default(Fault.slow_chunks(WATCH_AFTER_S + 0.3))  # json: one pause, then the answer
    with httpx.Client(base_url=url, timeout=10) as client:
        body = {"model": "cheap", "messages": [{"role": "user", "content": "Hi"}]}
        first = client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"]
        assert recorder.last().state["outcome"].status == 200
        fake.set_default(None)
        second = client.post("/v1/chat/completions", json=body)  # same keep-alive connection
        assert second.status_code == 200
        assert recorder.last().state["outcome"].status == 200
