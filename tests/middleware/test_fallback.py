"""Each upstream fault either falls back before the first byte or errors as specified."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bench.fakes import FakeProvider, Fault, serve_in_thread
from tests.conftest import NO_5XX_RETRY, answer_text, pool_config, running_gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def two_providers() -> Iterator[tuple[FakeProvider, FakeProvider, str]]:
    """cheap on provider A; mid and big on provider B."""
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="From B.")
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b, \
            running_gateway(pool_config({"a": url_a, "b": url_b})) as url:
        yield first, second, url


def ask(url: str, *, stream: bool = False, model: str = "cheap") -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=15.0,
                      json={"model": model, "messages": MESSAGES, "stream": stream})


@pytest.mark.parametrize("fault", [
    Fault.status(500), Fault.status(503), Fault.status(529), Fault.hang(3.0), Fault.malformed(),
    Fault.status(401), Fault.reset_mid_stream(0),
], ids=lambda f: type(f).__name__ + str(getattr(f, "http_status", "")))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_failure_before_first_byte_falls_back(two_providers: tuple[FakeProvider, FakeProvider, str],
                                              fault: Fault, stream: bool) -> None:
    first, second, url = two_providers
    first.set_default(fault)
    response = ask(url, stream=stream)
    assert response.status_code == 200, response.text
    assert response.headers["x-routegate-model"] == "mid"
    assert answer_text(response) == "From B."
    assert second.requests[-1].body["model"] == "mid-up"


def test_stream_hang_after_headers_is_a_first_token_timeout(
        two_providers: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, _, url = two_providers
    first.set_default(Fault.hang_after_headers(3.0))
    response = ask(url, stream=True)
    assert response.status_code == 200 and response.headers["x-routegate-model"] == "mid"


def test_429_with_short_retry_after_is_retried_on_the_same_model(
        two_providers: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, second, url = two_providers
    first.inject(Fault.status(429, headers={"retry-after": "0.2"}))
    response = ask(url)
    assert response.status_code == 200
    assert response.headers["x-routegate-model"] == "cheap"
    assert [r.body["model"] for r in first.requests] == ["cheap-up", "cheap-up"]
    assert not second.requests
    assert first.requests[1].received_at - first.requests[0].received_at >= 0.2


def test_429_with_long_retry_after_moves_on(two_providers: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, _, url = two_providers
    first.inject(Fault.status(429, headers={"retry-after": "30"}))
    response = ask(url)
    assert response.status_code == 200 and response.headers["x-routegate-model"] == "mid"
    assert len(first.requests) == 1


def test_context_length_exceeded_moves_to_a_larger_context_window(
        two_providers: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, second, url = two_providers
    first.set_default(Fault.status(400, code="context_length_exceeded"))
    second.inject(Fault.status(400, code="context_length_exceeded"), model="mid-up")
    response = ask(url)
    assert response.status_code == 200
    assert response.headers["x-routegate-model"] == "big"  # cheap 4k -> mid 16k -> big 128k
    assert [r.body["model"] for r in second.requests] == ["mid-up", "big-up"]


def test_content_policy_rejection_is_returned_with_its_reason_not_retried(
        two_providers: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, second, url = two_providers
    first.set_default(Fault.status(400, code="content_policy_violation"))
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="cheap", messages=MESSAGES)
    assert info.value.code == "content_policy_violation"
    assert len(first.requests) == 1 and not second.requests


def test_every_attempt_failing_is_a_502_listing_attempts_without_secrets(
        two_providers: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, second, url = two_providers
    first.set_default(Fault.status(500))
    second.set_default(Fault.status(503))
    response = ask(url)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "all_attempts_failed" and error["type"] == "upstream_error"
    for name in ("cheap", "mid", "big"):
        assert name in error["message"]
    assert "sk-test-provider-secret" not in response.text
    assert "Traceback" not in response.text


def test_every_attempt_timing_out_is_a_504(two_providers: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, second, url = two_providers
    first.set_default(Fault.hang(5.0))
    second.set_default(Fault.hang(5.0))
    response = ask(url, stream=True)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "all_attempts_failed"


def test_total_deadline_bounds_the_whole_request(fake_openai: tuple[FakeProvider, str]) -> None:
    fake, fake_url = fake_openai
    fake.set_default(Fault.hang(10.0))
    config = pool_config({"f": fake_url}, extra={"server": {"request_timeout_s": 1.5}},
                         timeouts={"connect_s": 1.0, "first_token_s": 5.0, "idle_s": 5.0,
                                   "total_s": 5.0})
    with running_gateway(config) as url:
        response = ask(url, stream=True)
    assert response.status_code == 504
    assert len(fake.requests) == 1  # the deadline, not three 5 s waits, ended it


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_single_5xx_is_retried_on_the_same_model(
        two_providers: tuple[FakeProvider, FakeProvider, str], status: int, stream: bool) -> None:
    first, second, url = two_providers
    first.inject(Fault.status(status))
    response = ask(url, stream=stream)
    assert response.status_code == 200, response.text
    assert response.headers["x-routegate-model"] == "cheap"
    assert [r.body["model"] for r in first.requests] == ["cheap-up", "cheap-up"]
    assert not second.requests


def test_a_persistent_5xx_falls_back_after_exactly_one_retry(
        two_providers: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, second, url = two_providers
    first.set_default(Fault.status(500))
    response = ask(url)
    assert response.status_code == 200 and response.headers["x-routegate-model"] == "mid"
    assert len(first.requests) == 2  # 1 + retry.same_model_5xx
    assert [r.body["model"] for r in second.requests] == ["mid-up"]


def test_same_model_5xx_0_moves_on_at_once_and_other_failures_are_not_retried(
        fake_openai: tuple[FakeProvider, str]) -> None:
    fake, fake_url = fake_openai
    config = pool_config({"a": fake_url}, extra={"retry": NO_5XX_RETRY})
    with running_gateway(config) as url:
        fake.inject(Fault.status(500), model="cheap-up")
        assert ask(url).headers["x-routegate-model"] == "mid"
        fake.inject(Fault.status(529), model="mid-up")  # overloaded: not a one-off, move on
        assert ask(url, model="mid").headers["x-routegate-model"] == "big"
    assert [r.body["model"] for r in fake.requests] == ["cheap-up", "mid-up", "mid-up", "big-up"]


def _context_pool(cheap_window: int, mid_window: int | None) -> dict[str, dict[str, object]]:
    mid: dict[str, object] = {"provider": "b", "upstream": "mid-up", "input_usd_per_mtok": 1.0,
                              "capabilities": {"chat": 0.9}}
    if mid_window is not None:
        mid["context_window"] = mid_window
    return {"cheap": {"provider": "a", "upstream": "cheap-up", "context_window": cheap_window,
                      "capabilities": {"chat": 0.8}, "fallbacks": ["mid"]},
            "mid": mid}


@pytest.mark.parametrize(("cheap_window", "mid_window"), [(16384, 16384), (16384, None)],
                         ids=["equal", "unknown"])
def test_context_length_error_tries_the_declared_fallbacks_of_equal_or_unknown_window(
        cheap_window: int, mid_window: int | None) -> None:
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="From B.")
    first.set_default(Fault.status(400, code="context_length_exceeded"))
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
        config = pool_config({"a": url_a, "b": url_b},
                             models=_context_pool(cheap_window, mid_window))
        with running_gateway(config) as url:
            response = ask(url)
    assert response.status_code == 200, response.text
    assert response.headers["x-routegate-model"] == "mid" and answer_text(response) == "From B."
    assert len(first.requests) == 1


def test_context_length_error_skips_a_declared_fallback_known_to_be_smaller() -> None:
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai")
    first.set_default(Fault.status(400, code="context_length_exceeded"))
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
        config = pool_config({"a": url_a, "b": url_b}, models=_context_pool(16384, 8192))
        with running_gateway(config) as url:
            response = ask(url)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert not second.requests
