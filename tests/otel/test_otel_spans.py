"""Spans and metrics of real requests through a real gateway, read from in-memory exporters."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.otel import attributes as a
from tests.conftest import NO_5XX_RETRY, pool_config, running_gateway
from tests.otel.otel_harness import PATHS, Traced, attrs, by_kind, point_attrs, traced_gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
PROMPT = "Hello there"
MESSAGES = [{"role": "user", "content": PROMPT}]
SECRET = os.environ["ROUTEGATE_TEST_PROVIDER_KEY"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    """Every test runs through an injected SDK provider and through the one routegate builds."""
    value: str = request.param
    return value


@pytest.fixture
def one_provider(path: str) -> Iterator[tuple[FakeProvider, Traced]]:
    fake = FakeProvider(kind="openai", chunks=5)
    with serve_in_thread(fake) as fake_url, \
            traced_gateway(pool_config({"f": fake_url}), path) as tg:
        yield fake, tg


@pytest.fixture
def two_providers(path: str) -> Iterator[tuple[FakeProvider, FakeProvider, Traced]]:
    """cheap on provider a; mid and big on provider b."""
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="From B.")
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b, \
            traced_gateway(pool_config({"a": url_a, "b": url_b},
                                       extra={"retry": NO_5XX_RETRY}), path) as tg:
        yield first, second, tg


def post(tg: Traced, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(tg.url + "/v1/chat/completions", json=body, headers=headers, timeout=15.0)


def no_secrets_or_content(spans: list[ReadableSpan]) -> None:
    for span in spans:
        values = [str(v) for v in (span.attributes or {}).values()]
        values += [str(v) for e in span.events for v in (e.attributes or {}).values()]
        for value in values:
            assert SECRET not in value and PROMPT not in value, (span.name, value)


def test_non_streaming_request_joins_the_callers_trace(
        one_provider: tuple[FakeProvider, Traced]) -> None:
    fake, tg = one_provider
    response = post(tg, {"model": "cheap", "messages": MESSAGES}, traceparent=TRACEPARENT)
    assert response.status_code == 200, response.text
    assert response.headers["x-trace-id"] == TRACE_ID
    usage = response.json()["usage"]
    spans = tg.wait_requests(1)
    [server], [client] = by_kind(spans, SpanKind.SERVER), by_kind(spans, SpanKind.CLIENT)
    assert not by_kind(spans, SpanKind.INTERNAL)  # no classification for a named model

    # The caller's trace, and the gateway's spans nest under the caller's span.
    assert server.context is not None and client.context is not None
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert response.headers["traceresponse"] == f"00-{TRACE_ID}-{server.context.span_id:016x}-01"
    # The upstream call carries the attempt span as its parent.
    upstream = fake.requests[-1].headers
    assert upstream["traceparent"] == f"00-{TRACE_ID}-{client.context.span_id:016x}-01"

    assert client.name == "chat cheap-up"
    assert server.name == "chat cheap"
    cost = (usage["prompt_tokens"] * 0.1 + usage["completion_tokens"] * 0.2) / 1e6
    c = attrs(client)
    assert c[a.GEN_AI_OPERATION_NAME] == "chat"
    assert c[a.GEN_AI_PROVIDER_NAME] == "openai"
    assert c[a.GEN_AI_REQUEST_MODEL] == "cheap-up"
    assert c[a.GEN_AI_RESPONSE_MODEL] == "cheap-up"
    assert c[a.GEN_AI_USAGE_INPUT_TOKENS] == usage["prompt_tokens"] == 2
    assert c[a.GEN_AI_USAGE_OUTPUT_TOKENS] == usage["completion_tokens"]
    # The OpenAI adapter reports finish reasons of non-streamed answers only once it parses
    # them (providers/openai.py parse_answer); when it does they must be on the span.
    assert c.get(a.GEN_AI_RESPONSE_FINISH_REASONS, ("stop",)) == ("stop",)
    assert c[a.SERVER_ADDRESS] == "127.0.0.1"
    assert c[a.SERVER_PORT] == int(fake.requests[-1].headers["host"].rsplit(":", 1)[1])
    assert c[a.RG_MODEL] == "cheap" and a.RG_ATTEMPT_INDEX not in c  # first attempt
    assert c[a.RG_COST_USD] == pytest.approx(cost)
    assert c[a.RG_TTFT_S] > 0
    assert a.ERROR_TYPE not in c and a.RG_FALLBACK not in c
    assert client.status.status_code == StatusCode.UNSET

    s = attrs(server)
    assert s[a.GEN_AI_OPERATION_NAME] == "chat"
    assert s[a.GEN_AI_REQUEST_MODEL] == "cheap"
    assert s[a.GEN_AI_REQUEST_STREAM] is False
    assert s[a.RG_MODEL] == "cheap" and s[a.RG_ATTEMPTS] == 1 and a.RG_FALLBACK not in s
    assert s[a.RG_COST_USD] == pytest.approx(cost)
    assert s[a.RG_TTFT_S] >= c[a.RG_TTFT_S]
    assert s[a.RG_OUTCOME] == "success" and s[a.HTTP_RESPONSE_STATUS_CODE] == 200
    assert s[a.RG_REQUEST_ID] == response.headers["x-request-id"]
    assert a.RG_CATEGORY not in s and a.ERROR_TYPE not in s
    # Times: the attempt lies inside the request.
    assert server.start_time is not None and server.end_time is not None
    assert client.start_time is not None and client.end_time is not None
    assert server.start_time <= client.start_time <= client.end_time <= server.end_time
    no_secrets_or_content(spans)

    points = tg.metric_points()
    tokens = {point_attrs(p)[a.GEN_AI_TOKEN_TYPE]: p for p in points[a.METRIC_TOKEN_USAGE]}
    assert tokens["input"].sum == usage["prompt_tokens"]
    assert tokens["output"].sum == usage["completion_tokens"]
    assert point_attrs(tokens["input"]) == {
        a.GEN_AI_OPERATION_NAME: "chat", a.GEN_AI_PROVIDER_NAME: "openai",
        a.GEN_AI_REQUEST_MODEL: "cheap-up", a.RG_MODEL: "cheap", a.GEN_AI_TOKEN_TYPE: "input"}
    [duration] = points[a.METRIC_OPERATION_DURATION]
    assert duration.count == 1 and a.ERROR_TYPE not in point_attrs(duration)
    [requests] = points[a.METRIC_REQUESTS]
    assert requests.value == 1 and point_attrs(requests) == {
        a.RG_MODEL: "cheap", a.RG_CATEGORY: "none", a.RG_OUTCOME: "success", a.RG_FALLBACK: False}
    [cost_point] = points[a.METRIC_COST]
    assert cost_point.value == pytest.approx(cost)
    assert points[a.METRIC_REQUEST_DURATION][0].count == 1
    assert points[a.METRIC_REQUEST_TTFT][0].count == 1
    assert a.METRIC_TIME_TO_FIRST_CHUNK not in points  # not a stream


@pytest.fixture
def slow_stream(path: str) -> Iterator[tuple[FakeProvider, Traced]]:
    """Five chunks 50 ms apart: the stream outlives its first byte by 200 ms."""
    fake = FakeProvider(kind="openai", chunks=5, chunk_delay_s=0.05)
    with serve_in_thread(fake) as fake_url, \
            traced_gateway(pool_config({"f": fake_url}), path) as tg:
        yield fake, tg


def test_streaming_auto_request_with_the_openai_sdk(
        slow_stream: tuple[FakeProvider, Traced]) -> None:
    """Classification span, streamed attempt ending with the stream's final token counts."""
    _, tg = slow_stream
    client = openai.OpenAI(base_url=tg.url + "/v1", api_key="sk-client-key", max_retries=0)
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": PROMPT}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"traceparent": TRACEPARENT})
    assert stream.response.headers["x-trace-id"] == TRACE_ID
    category = stream.response.headers["x-routegate-category"]
    chosen = stream.response.headers["x-routegate-model"]
    first_content_ns: int | None = None
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first_content_ns is None:
            first_content_ns = time.time_ns()
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens == 5 and first_content_ns is not None
    spans = tg.wait_requests(1)
    [server], [client_span] = by_kind(spans, SpanKind.SERVER), by_kind(spans, SpanKind.CLIENT)
    [classify] = by_kind(spans, SpanKind.INTERNAL)
    assert classify.name == a.CLASSIFY_SPAN
    assert server.context is not None and f"{server.context.trace_id:032x}" == TRACE_ID
    assert classify.parent is not None and classify.parent.span_id == server.context.span_id
    assert classify.start_time is not None and classify.end_time is not None
    assert client_span.start_time is not None and client_span.end_time is not None
    assert server.start_time is not None and server.end_time is not None
    assert server.start_time <= classify.start_time <= classify.end_time <= client_span.start_time
    # The attempt span ends with the stream, not when the first byte went out: the client held
    # the first chunk while four more (50 ms apart) were still to come.
    assert client_span.end_time > first_content_ns
    assert client_span.end_time <= server.end_time

    k = attrs(classify)
    assert k[a.RG_CATEGORY] == category
    method = k[a.RG_CLASSIFIER_METHOD]
    assert isinstance(method, str) and method
    assert 0.0 <= k[a.RG_CLASSIFIER_CONFIDENCE] <= 1.0
    assert k[a.RG_CLASSIFIER_LATENCY_MS] >= 0.0
    assert isinstance(k[a.RG_CLASSIFIER_COMPLEXITY], str)

    c = attrs(client_span)
    model = c[a.RG_MODEL]
    assert model == chosen
    assert client_span.name == f"chat {chosen}-up"
    assert c[a.GEN_AI_USAGE_INPUT_TOKENS] == usage.prompt_tokens
    assert c[a.GEN_AI_USAGE_OUTPUT_TOKENS] == usage.completion_tokens
    assert c[a.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert c[a.RG_TTFT_S] > 0

    s = attrs(server)
    assert server.name == "chat auto"
    assert s[a.GEN_AI_REQUEST_MODEL] == "auto" and s[a.GEN_AI_REQUEST_STREAM] is True
    assert c[a.GEN_AI_RESPONSE_MODEL] == f"{chosen}-up"
    assert s[a.RG_MODEL] == chosen
    assert s[a.RG_CATEGORY] == category
    prices = {"cheap": (0.1, 0.2), "mid": (1.0, 2.0), "big": (5.0, 10.0)}[chosen]
    assert s[a.RG_COST_USD] == pytest.approx(
        (usage.prompt_tokens * prices[0] + usage.completion_tokens * prices[1]) / 1e6)
    assert s[a.RG_ATTEMPTS] == 1 and s[a.RG_OUTCOME] == "success"
    no_secrets_or_content(spans)

    points = tg.metric_points()
    [first_chunk] = points[a.METRIC_TIME_TO_FIRST_CHUNK]
    assert first_chunk.count == 1
    [classifier] = points[a.METRIC_CLASSIFIER_DURATION]
    assert point_attrs(classifier) == {a.RG_CLASSIFIER_METHOD: method}
    [requests] = points[a.METRIC_REQUESTS]
    assert point_attrs(requests)[a.RG_CATEGORY] == category
    output = [p for p in points[a.METRIC_TOKEN_USAGE]
              if point_attrs(p)[a.GEN_AI_TOKEN_TYPE] == "output"]
    assert output[0].sum == 5


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_fallback_marks_the_failed_attempt_and_records_the_fallback(
        two_providers: tuple[FakeProvider, FakeProvider, Traced], stream: bool) -> None:
    first, second, tg = two_providers
    first.set_default(Fault.status(500))
    response = post(tg, {"model": "cheap", "messages": MESSAGES, "stream": stream})
    assert response.status_code == 200 and response.headers["x-routegate-model"] == "mid"
    spans = tg.wait_requests(1)
    [server] = by_kind(spans, SpanKind.SERVER)
    failed, answered = by_kind(spans, SpanKind.CLIENT)
    assert (failed.name, answered.name) == ("chat cheap-up", "chat mid-up")
    f, ok = attrs(failed), attrs(answered)
    assert f[a.ERROR_TYPE] == "500" and failed.status.status_code == StatusCode.ERROR
    assert f[a.RG_MODEL] == "cheap" and a.RG_ATTEMPT_INDEX not in f
    assert a.GEN_AI_USAGE_OUTPUT_TOKENS not in f and a.GEN_AI_RESPONSE_MODEL not in f
    assert ok[a.RG_FALLBACK] is True and ok[a.RG_ATTEMPT_INDEX] == 1
    assert ok[a.RG_MODEL] == "mid" and a.ERROR_TYPE not in ok
    assert ok[a.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    assert answered.status.status_code == StatusCode.UNSET
    # Each upstream call carried its own attempt span.
    assert server.context is not None and failed.context is not None
    assert answered.context is not None
    assert first.requests[-1].headers["traceparent"].split("-")[2] == f"{failed.context.span_id:016x}"
    assert second.requests[-1].headers["traceparent"].split("-")[2] == \
        f"{answered.context.span_id:016x}"

    s = attrs(server)
    assert s[a.RG_ATTEMPTS] == 2 and s[a.RG_FALLBACK] is True and s[a.RG_MODEL] == "mid"
    assert ok[a.GEN_AI_RESPONSE_MODEL] == "mid-up" and s[a.RG_OUTCOME] == "success"
    assert server.status.status_code == StatusCode.UNSET
    [event] = [e for e in server.events if e.name == a.RG_FALLBACK_EVENT]
    assert dict(event.attributes or {}) == {
        a.RG_FALLBACK_FROM: "cheap", a.RG_MODEL: "mid", a.RG_ATTEMPT_INDEX: 1,
        a.RG_FALLBACK_REASON: "500"}

    points = tg.metric_points()
    errors = [p for p in points[a.METRIC_OPERATION_DURATION] if a.ERROR_TYPE in point_attrs(p)]
    assert [point_attrs(p)[a.ERROR_TYPE] for p in errors] == ["500"]
    [requests] = points[a.METRIC_REQUESTS]
    assert point_attrs(requests)[a.RG_FALLBACK] is True
    assert point_attrs(requests)[a.RG_MODEL] == "mid"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_all_attempts_failing_is_an_error_span(
        two_providers: tuple[FakeProvider, FakeProvider, Traced], stream: bool) -> None:
    first, second, tg = two_providers
    first.set_default(Fault.status(500))
    second.set_default(Fault.status(503))
    response = post(tg, {"model": "cheap", "messages": MESSAGES, "stream": stream},
                    traceparent=TRACEPARENT)
    assert response.status_code == 502
    assert response.headers["x-trace-id"] == TRACE_ID
    spans = tg.wait_requests(1)
    [server] = by_kind(spans, SpanKind.SERVER)
    attempts = by_kind(spans, SpanKind.CLIENT)
    assert [attrs(s)[a.RG_MODEL] for s in attempts] == ["cheap", "mid", "big"]
    assert [attrs(s)[a.ERROR_TYPE] for s in attempts] == ["500", "503", "503"]
    assert all(s.status.status_code == StatusCode.ERROR for s in attempts)
    s = attrs(server)
    assert server.status.status_code == StatusCode.ERROR
    assert s[a.ERROR_TYPE] == "all_attempts_failed"
    assert s[a.HTTP_RESPONSE_STATUS_CODE] == 502 and s[a.RG_OUTCOME] == "error"
    assert s[a.RG_ATTEMPTS] == 3 and s[a.RG_FALLBACK] is True
    assert a.RG_MODEL not in s
    assert s[a.RG_COST_USD] == 0.0
    assert len([e for e in server.events if e.name == a.RG_FALLBACK_EVENT]) == 2
    [requests] = tg.metric_points()[a.METRIC_REQUESTS]
    assert point_attrs(requests)[a.RG_OUTCOME] == "error"
    assert point_attrs(requests)[a.RG_MODEL] == "none"
    assert a.METRIC_TOKEN_USAGE not in tg.metric_points()


def test_client_error_is_recorded_but_not_a_server_fault(
        one_provider: tuple[FakeProvider, Traced]) -> None:
    _, tg = one_provider
    response = post(tg, {"model": "no-such-model", "messages": MESSAGES})
    assert response.status_code == 404
    spans = tg.wait_requests(1)
    [server] = by_kind(spans, SpanKind.SERVER)
    assert not by_kind(spans, SpanKind.CLIENT)
    s = attrs(server)
    assert s[a.ERROR_TYPE] == "model_not_found" and s[a.RG_OUTCOME] == "client_error"
    assert s[a.HTTP_RESPONSE_STATUS_CODE] == 404 and s[a.RG_ATTEMPTS] == 0
    assert server.status.status_code == StatusCode.UNSET


def test_stream_interrupted_after_the_first_byte_is_an_error(
        one_provider: tuple[FakeProvider, Traced]) -> None:
    fake, tg = one_provider
    fake.set_default(Fault.reset_mid_stream(2))
    response = post(tg, {"model": "cheap", "messages": MESSAGES, "stream": True})
    assert response.status_code == 200 and "stream_interrupted" in response.text
    spans = tg.wait_requests(1)
    [server], [client] = by_kind(spans, SpanKind.SERVER), by_kind(spans, SpanKind.CLIENT)
    assert attrs(client)[a.ERROR_TYPE] == "stream_interrupted"
    assert client.status.status_code == StatusCode.ERROR
    assert attrs(server)[a.ERROR_TYPE] == "stream_interrupted"
    assert server.status.status_code == StatusCode.ERROR


def test_without_a_traceparent_a_new_trace_is_started_and_returned(
        one_provider: tuple[FakeProvider, Traced]) -> None:
    _, tg = one_provider
    response = post(tg, {"model": "cheap", "messages": MESSAGES})
    [server] = by_kind(tg.wait_requests(1), SpanKind.SERVER)
    assert server.parent is None and server.context is not None
    assert response.headers["x-trace-id"] == f"{server.context.trace_id:032x}"


def test_content_is_captured_only_when_opted_in_and_keys_never(
        fake_openai: tuple[FakeProvider, str], path: str) -> None:
    fake, fake_url = fake_openai
    config = pool_config({"f": fake_url}, extra={"telemetry": {"capture_content": True}})
    with traced_gateway(config, path) as tg:
        post(tg, {"model": "cheap", "messages": MESSAGES}, authorization="Bearer sk-client-x",
             traceparent=TRACEPARENT, baggage="user.email=someone@example.com")
        spans = tg.wait_requests(1)
    [client] = by_kind(spans, SpanKind.CLIENT)
    captured = json.loads(attrs(client)[a.GEN_AI_INPUT_MESSAGES])
    assert captured == [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    for span in spans:
        for value in (span.attributes or {}).values():
            assert SECRET not in str(value) and "sk-client-x" not in str(value)
    # The trace context goes upstream; the caller's baggage does not.
    upstream = fake.requests[-1].headers
    assert upstream["traceparent"].split("-")[1] == TRACE_ID and "baggage" not in upstream


def test_telemetry_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch,
                                              fake_openai: tuple[FakeProvider, str]) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    _, fake_url = fake_openai
    with running_gateway(pool_config({"f": fake_url})) as url:
        response = httpx.post(url + "/v1/chat/completions",
                              json={"model": "cheap", "messages": MESSAGES}, timeout=15.0)
    assert response.status_code == 200
    assert "x-trace-id" not in response.headers and "traceresponse" not in response.headers


def test_mid_stream_recovery_is_on_the_trace(path: str) -> None:
    """A stream cut after two chunks is finished by the next model; the trace shows the broken
    attempt, the continuation attempt and the recovery count on the server span."""
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="From B.")
    first.set_default(Fault.reset_mid_stream(2))
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
        config = pool_config({"a": url_a, "b": url_b},
                             extra={"recovery": {"mode": "continue", "max_splices": 1}})
        with traced_gateway(config, path) as tg:
            response = post(tg, {"model": "cheap", "stream": True, "messages": MESSAGES})
            spans = tg.wait_requests(1)
    assert response.status_code == 200 and "[DONE]" in response.text
    [server] = by_kind(spans, SpanKind.SERVER)
    broken, continued = by_kind(spans, SpanKind.CLIENT)
    assert attrs(server)[a.RG_RECOVERIES] == 1
    assert a.ERROR_TYPE in attrs(broken)
    assert attrs(continued)[a.RG_CONTINUATION_OF] == 0
