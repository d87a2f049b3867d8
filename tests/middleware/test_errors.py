"""Bad input gets an OpenAI-style error with the right status, never a traceback."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import Gateway, RouterMiddleware
from routegate.middleware.contracts import Classification
from tests.conftest import pool_config, running_gateway


@pytest.mark.parametrize(("body", "status", "code", "param"), [
    (b"{not json", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_json", None),
    (b'{"messages": []}', 400, "invalid_request", "model"),
    (b'{"model": "cheap", "messages": []}', 400, "invalid_request", "messages"),
    (b'{"model": "cheap", "messages": [{"role": "wizard", "content": "x"}]}', 400,
     "invalid_request", "messages[0].role"),
    (b'{"model": "cheap", "messages": [{"role": "user"}], "stream": "yes"}', 400,
     "invalid_request", "stream"),
    (b'{"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}', 404,
     "model_not_found", "model"),
])
def test_bad_requests(gateway: tuple[FakeProvider, str], body: bytes, status: int, code: str,
                      param: str | None) -> None:
    fake, url = gateway
    response = httpx.post(url + "/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param
    assert error["message"] and "Traceback" not in response.text
    assert not fake.requests  # nothing reached a provider


def test_body_over_the_limit_is_413(fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    with running_gateway(pool_config({"f": fake_url},
                                     extra={"server": {"max_body_bytes": 1024}})) as url:
        response = httpx.post(url + "/v1/chat/completions", json={
            "model": "cheap", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_wrong_method_and_unknown_path(gateway: tuple[FakeProvider, str]) -> None:
    _, url = gateway
    response = httpx.get(url + "/v1/chat/completions")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    response = httpx.get(url + "/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_health_and_readiness(gateway: tuple[FakeProvider, str]) -> None:
    _, url = gateway
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200 and ready.json()["available_models"] == ["big", "cheap", "mid"]


def test_provider_without_key_is_skipped_not_fatal(fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    providers = {"keyed": {"type": "openai", "base_url": fake_url + "/v1",
                           "api_key_env": "ROUTEGATE_TEST_PROVIDER_KEY"},
                 "keyless": {"type": "openai", "base_url": fake_url + "/v1",
                             "api_key_env": "ROUTEGATE_TEST_UNSET_KEY_VARIABLE"}}
    models: dict[str, dict[str, Any]] = {"cheap": {"provider": "keyless", "capabilities": {"chat": 0.9}},
              "mid": {"provider": "keyed", "input_usd_per_mtok": 1.0,
                      "capabilities": {"chat": 0.9}}}
    config = pool_config({"f": fake_url}, models=models, routes={"chat": {}},
                         extra={"providers": providers})
    with running_gateway(config) as url:
        ready = httpx.get(url + "/readyz").json()
        response = httpx.post(url + "/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "hello"}]})
    assert ready["skipped_providers"] == {"keyless": "ROUTEGATE_TEST_UNSET_KEY_VARIABLE is not set"}
    assert response.status_code == 200 and response.headers["x-routegate-model"] == "mid"


class ExplodingClassifier:
    """A third-party classifier that breaks its contract by raising."""

    async def classify(self, text: str) -> Classification:
        raise RuntimeError("classifier exploded with secret detail")


def test_unexpected_failure_is_a_json_500_without_internals(
        fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    config = pool_config({"f": fake_url})
    app = RouterMiddleware(PlainTextResponse("host"),
                           gateway=Gateway(config, classifier=ExplodingClassifier()))
    with serve_in_thread(app, lifespan="off") as url:
        response = httpx.post(url + "/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "hi"}]})
        still_serving = httpx.post(url + "/v1/chat/completions", json={
            "model": "cheap", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret detail" not in response.text and "Traceback" not in response.text
    assert still_serving.status_code == 200
