"""A provider (or a proxy in front of one) that echoes our request's headers in its errors
must not hand the provider key to the client, the log, the spans or the admin API."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware.request.scrub import REDACTED, Scrubber
from tests.adaptive.adaptive_helpers import ADMIN, TOKEN, admin
from tests.conftest import running_gateway
from tests.otel.otel_harness import traced_gateway
from tests.providers.native_pool import Kind, model, native_config

KEY = os.environ["ROUTEGATE_TEST_PROVIDER_KEY"]
HELLO = [{"role": "user", "content": "Hello there"}]
Echo = tuple[Kind, FakeProvider, str]


@pytest.fixture(params=["openai", "anthropic", "gemini"])
def echo(request: pytest.FixtureRequest) -> Iterator[Echo]:
    """The gateway (with an admin token) over one fake of each wire format."""
    kind: Kind = request.param
    fake = FakeProvider(kind=kind)
    with serve_in_thread(fake) as fake_url:
        config = native_config({"p": (kind, fake_url)},
                               {"primary": model("p", "primary-up", 4096, ("backup",)),
                                "backup": model("p", "backup-up", 16384)}, {"admin": ADMIN})
        with running_gateway(config) as url:
            yield kind, fake, url


def _openai_call(url: str, stream: bool) -> bytes:
    response = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "model": "primary", "messages": HELLO, "stream": stream})
    return response.content


def _anthropic_call(url: str, stream: bool) -> bytes:
    response = httpx.post(url + "/v1/messages", timeout=10, json={
        "model": "primary", "max_tokens": 20, "messages": HELLO, "stream": stream})
    return response.content


CALLS = {"openai-ingress": _openai_call, "anthropic-ingress": _anthropic_call}


def _assert_clean(seen: bytes, caplog: pytest.LogCaptureFixture, url: str) -> None:
    assert KEY.encode() not in seen, seen
    assert TOKEN.encode() not in seen
    assert KEY not in caplog.text and TOKEN not in caplog.text
    stats = admin(url, "GET", "/admin/stats")
    assert stats.status_code == 200 and KEY not in stats.text


@pytest.mark.parametrize("ingress", list(CALLS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_echoed_400_is_returned_without_the_key(echo: Echo, ingress: str, stream: bool,
                                                caplog: pytest.LogCaptureFixture) -> None:
    _kind, fake, url = echo
    fake.inject(Fault.status(400, echo_headers=True))
    with caplog.at_level(logging.DEBUG):
        body = CALLS[ingress](url, stream)
    assert b"headers received" in body  # the provider's message is kept ...
    assert REDACTED.encode() in body  # ... with the secrets taken out
    _assert_clean(body, caplog, url)


@pytest.mark.parametrize("ingress", list(CALLS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("fault", [
    Fault.status(429, echo_headers=True, headers={"retry-after": "0"}),
    Fault.status(500, echo_headers=True),
    Fault.error_mid_stream(0, 500, echo_headers=True),  # an error event before any content
], ids=["429", "500", "error-event-first"])
def test_echoing_failures_listed_in_the_502_hold_no_key(
        echo: Echo, ingress: str, stream: bool, fault: Fault,
        caplog: pytest.LogCaptureFixture) -> None:
    _kind, fake, url = echo
    fake.set_default(fault)
    with caplog.at_level(logging.DEBUG):
        body = CALLS[ingress](url, stream)
    assert b"attempts failed" in body or b"error" in body
    _assert_clean(body, caplog, url)


@pytest.mark.parametrize("ingress", list(CALLS))
def test_in_stream_error_event_is_relayed_without_the_key(
        echo: Echo, ingress: str, caplog: pytest.LogCaptureFixture) -> None:
    kind, fake, url = echo
    fake.inject(Fault.error_mid_stream(2, 500, echo_headers=True))
    with caplog.at_level(logging.DEBUG):
        body = CALLS[ingress](url, True)
    assert b"error" in body
    if kind == "openai":  # relayed as the provider sent it, minus the secrets
        assert b"headers received" in body and REDACTED.encode() in body
    _assert_clean(body, caplog, url)


def test_sdks_see_the_provider_error_without_the_key(echo: Echo) -> None:
    _kind, fake, url = echo
    fake.inject(Fault.status(400, echo_headers=True), times=2)
    with pytest.raises(openai.BadRequestError) as caught:
        openai.OpenAI(base_url=url + "/v1", api_key="client", max_retries=0).chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "hi"}])
    assert KEY not in str(caught.value) and "headers received" in str(caught.value)
    with pytest.raises(anthropic.BadRequestError) as caught_a:
        anthropic.Anthropic(base_url=url, api_key="client", max_retries=0).messages.create(
            model="primary", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert KEY not in str(caught_a.value) and "headers received" in str(caught_a.value)


def test_spans_hold_no_key() -> None:
    # Anthropic's error event before content becomes the attempt's failure detail, which
    # the attempt span's status carries
    fake = FakeProvider(kind="anthropic")
    fake.set_default(Fault.error_mid_stream(0, 500, echo_headers=True))
    with serve_in_thread(fake) as fake_url:
        config = native_config({"p": ("anthropic", fake_url)},
                               {"primary": model("p", "primary-up", 4096, ("backup",)),
                                "backup": model("p", "backup-up", 16384)})
        with traced_gateway(config) as traced:
            httpx.post(traced.url + "/v1/chat/completions", timeout=10, json={
                "model": "primary", "messages": HELLO, "stream": True})
            spans = traced.wait_requests(1)
    dumped = "".join(span.to_json() for span in spans)
    assert "error event before content" in dumped and REDACTED in dumped
    assert KEY not in dumped


def test_scrubber_redacts_values_and_auth_headers() -> None:
    scrub = Scrubber(["sk-live-0123456789", "tok/with\"quote", "ab"])
    text = ('{"message": "bad key sk-live-0123456789; Authorization: Bearer other-token-xyz; '
            'x-api-key=abc123456; \\"x-goog-api-key\\": \\"AIzaXYZ\\"; tok/with\\"quote", '
            '"type": "invalid_request_error"}')
    out = scrub.text(text)
    assert json.loads(out)["type"] == "invalid_request_error"  # still JSON, type kept
    for secret in ("sk-live-0123456789", "other-token-xyz", "abc123456", "AIzaXYZ", "tok/with"):
        assert secret not in out, out
    assert "Authorization: Bearer [REDACTED]" in out and "bad key [REDACTED]" in out
    assert scrub.bytes(text.encode()) == out.encode()
    assert scrub.text("a bearer of bad news, about tabs") == "a bearer of bad news, about tabs"
