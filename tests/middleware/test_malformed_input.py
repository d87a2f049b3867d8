"""Malformed JSON (deep nesting, invalid UTF-8) is a 400 in the endpoint's error shape on every
endpoint that decodes a client body, never a 500 with a traceback in the log; wrong methods
and unknown paths carry a 4xx error type, not ``server_error``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from bench.fakes import FakeProvider
from tests.adaptive.adaptive_helpers import ADMIN, TOKEN
from tests.conftest import pool_config, running_gateway

DEEP = b'{"model": "cheap", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}"
BAD_UTF8 = b'{"model": "cheap", "messages": [{"role": "user", "content": "caf\xc3\x28 \xff"}]}'
ANTHROPIC_BAD_UTF8 = (b'{"model": "cheap", "max_tokens": 5, '
                      b'"messages": [{"role": "user", "content": "\xff\xfe"}]}')
AUTH = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}


@pytest.fixture
def admin_gateway(fake_openai: tuple[FakeProvider, str]) -> Iterator[tuple[FakeProvider, str]]:
    fake, url = fake_openai
    with running_gateway(pool_config({"fake": url}, extra={"admin": ADMIN})) as gateway_url:
        yield fake, gateway_url


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/admin/explain",
                                  "/v1/feedback", "/admin/weights"])
@pytest.mark.parametrize("body", [DEEP, BAD_UTF8, ANTHROPIC_BAD_UTF8], ids=["deep", "utf8",
                                                                              "utf8-anthropic"])
def test_malformed_json_is_400_everywhere(admin_gateway: tuple[FakeProvider, str], path: str,
                                          body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    fake, url = admin_gateway
    method = "PUT" if path == "/admin/weights" else "POST"
    with caplog.at_level(logging.INFO):
        response = httpx.request(method, url + path, content=body, headers=AUTH, timeout=10)
    assert response.status_code == 400, response.text
    if path == "/v1/messages":  # Anthropic's error shape on Anthropic's endpoint
        assert response.json()["type"] == "error"
        assert response.json()["error"]["type"] == "invalid_request_error"
    else:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    assert "Traceback" not in response.text and "Recursion" not in response.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not fake.requests  # nothing reached a provider


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405),
    ("GET", "/v1/messages", 405), ("GET", "/v1/feedback", 405),
    ("POST", "/healthz", 405), ("PUT", "/readyz", 405),
    ("GET", "/v1/nothing-here", 404), ("GET", "/admin/nothing-here", 404),
    ("PUT", "/admin/weights", 404),  # (a body naming a model that does not exist)
])
def test_4xx_errors_carry_a_client_error_type(admin_gateway: tuple[FakeProvider, str],
                                              method: str, path: str, status: int) -> None:
    _, url = admin_gateway
    body = b'{"model": "nope", "category": "chat", "weight": 1}' if method == "PUT" else None
    response = httpx.request(method, url + path, headers=AUTH, content=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    kind = error["type"] if isinstance(error, dict) else None
    assert kind in ("invalid_request_error", "not_found_error"), response.text
    if status == 405 and path in ("/healthz", "/readyz"):
        assert response.headers["allow"] == "GET, HEAD"
        assert error["code"] == "method_not_allowed"
