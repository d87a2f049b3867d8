"""Streaming relay: no buffering, honest endings, disconnects close the upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from tests.conftest import pool_config, running_gateway

BODY = {"model": "cheap", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def slow_gateway() -> Iterator[tuple[FakeProvider, str]]:
    """Five chunks, 200 ms apart."""
    fake = FakeProvider(kind="openai", chunks=5, chunk_delay_s=0.2)
    with serve_in_thread(fake) as fake_url, running_gateway(pool_config({"f": fake_url})) as url:
        yield fake, url


def _content_events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                if choice.get("delta", {}).get("content"):
                    yield choice["delta"]["content"]


def test_each_chunk_reaches_the_client_before_the_next_is_produced(
        slow_gateway: tuple[FakeProvider, str]) -> None:
    """Causality, not stopwatch: when the client holds chunk k, the provider has sent exactly k
    (the next is 200 ms away), so nothing was held back to be sent together."""
    fake, url = slow_gateway
    seen_by_provider = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=BODY, timeout=10) as response:
        for _ in _content_events(response):
            seen_by_provider.append(fake.streams[-1].chunks_sent)
    assert seen_by_provider == [1, 2, 3, 4, 5]


def test_stream_reset_after_content_ends_with_an_in_band_error(
        gateway: tuple[FakeProvider, str]) -> None:
    fake, url = gateway
    fake.set_default(Fault.reset_mid_stream(2))
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(
                model="cheap", stream=True, messages=[{"role": "user", "content": "Hi"}]):
            received.append(chunk)
    assert "broke mid-stream" in str(info.value.message)
    assert received  # content arrived before the error: no fallback after the first byte
    assert len(fake.requests) == 1


def test_stream_stalling_mid_answer_ends_with_an_in_band_error(
        gateway: tuple[FakeProvider, str]) -> None:
    fake, url = gateway
    fake.set_default(Fault.stall_mid_stream(2, 4.0))  # idle timeout in tests is 1 s
    response = httpx.post(url + "/v1/chat/completions", json=BODY, timeout=10)
    last = [line for line in response.text.splitlines() if line.startswith("data:")][-1]
    assert json.loads(last[6:])["error"]["code"] == "stream_interrupted"
    assert "stalled" in last


def test_stream_ending_without_done_but_finished_is_completed(
        gateway: tuple[FakeProvider, str]) -> None:
    fake, url = gateway
    fake.set_default(Fault.end_without_done(5, with_finish_reason=True))
    response = httpx.post(url + "/v1/chat/completions", json=BODY, timeout=10)
    assert response.text.rstrip().endswith("data: [DONE]")
    assert '"error"' not in response.text


def test_truncated_stream_without_done_is_reported_not_passed_off_as_success(
        gateway: tuple[FakeProvider, str]) -> None:
    fake, url = gateway
    fake.set_default(Fault.end_without_done(2))
    started = time.monotonic()
    response = httpx.post(url + "/v1/chat/completions", json=BODY, timeout=10)
    assert time.monotonic() - started < 1.0  # finalised at once, not after the idle timeout
    assert "[DONE]" not in response.text
    assert "ended before the answer was complete" in response.text


def test_client_disconnect_closes_the_upstream_within_a_second(
        slow_gateway: tuple[FakeProvider, str]) -> None:
    fake, url = slow_gateway
    with httpx.stream("POST", url + "/v1/chat/completions", json=BODY, timeout=10) as response:
        next(_content_events(response))
        left_at = time.monotonic()
    record = fake.wait_for_stream_close(timeout=3.0)
    assert record.client_disconnected
    assert record.chunks_sent < 5
    assert record.closed_at is not None and record.closed_at - left_at < 1.0
