"""Issue 11 item 6: with client keys defined, a missing or wrong key is answered 401 before the
body is read or validated, on every client endpoint; no endpoint tells an unauthenticated caller
which models exist."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import pytest

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware.operations.budgets import hash_key
from tests.adaptive.adaptive_helpers import ADMIN, HELLO, TOKEN, chat
from tests.conftest import pool_config, running_gateway

KEY = "sk-client-auth-first"
FOUR_MB = 4 * 1024 * 1024


@pytest.fixture
def keyed() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url:
        config = pool_config({"fake": fake_url}, extra={
            "admin": ADMIN, "clients": {"team": {"key_sha256": hash_key(KEY)}}})
        with running_gateway(config) as url:
            yield fake, url


ENDPOINTS = [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("POST", "/v1/messages"),
             ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/feedback")]


def _status_line_for_headers_only(url: str, method: str, path: str,
                                  headers: dict[str, str]) -> bytes:
    """Send a request's headers announcing a 4 MB body, never the body; the response head."""
    parts = urlsplit(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}",
             "Content-Type: application/json", f"Content-Length: {FOUR_MB}",
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=5.0) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)  # socket.timeout fails the test: the gateway waited
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}])
def test_unauthenticated_requests_get_401_before_the_body_is_sent(
        keyed: tuple[FakeProvider, str], method: str, path: str,
        headers: dict[str, str]) -> None:
    fake, url = keyed
    status = _status_line_for_headers_only(url, method, path, headers)
    assert status.startswith(b"HTTP/1.1 401 "), status
    assert fake.requests == []


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_client_endpoint_answers_401_without_a_key(keyed: tuple[FakeProvider, str],
                                                         method: str, path: str) -> None:
    _, url = keyed
    response = httpx.request(method, url + path, json={"model": "no-such-model"}, timeout=10.0)
    assert response.status_code == 401
    body = response.json()
    if path.startswith("/v1/messages"):  # Anthropic's error shape on Anthropic's endpoints
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["type"] == "authentication_error"
        assert body["error"]["code"] == "invalid_api_key"


def test_no_model_existence_leak_before_auth(keyed: tuple[FakeProvider, str]) -> None:
    _, url = keyed
    for model in ("no-such-model", "cheap", "auto"):
        assert chat(url, model=model).status_code == 401
    assert chat(url, model="no-such-model", headers={"authorization": f"Bearer {KEY}"}
                ).status_code == 404  # with a key the answer is the real one


def test_the_sdks_see_authentication_errors(keyed: tuple[FakeProvider, str]) -> None:
    _, url = keyed
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    wrong = anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model="cheap", messages=[{"role": "user", "content": "Hi"}])
    listed = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0).models.list()
    assert "cheap" in [m.id for m in listed.data]
    right = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)
    assert right.messages.count_tokens(model="cheap", messages=[
        {"role": "user", "content": "Hi"}]).input_tokens > 0


def test_feedback_takes_a_client_key_or_the_admin_token(keyed: tuple[FakeProvider, str]) -> None:
    _, url = keyed
    answer = chat(url, headers={"authorization": f"Bearer {KEY}"}, messages=HELLO)
    assert answer.status_code == 200
    body = {"request_id": answer.headers["x-request-id"], "pass": True}
    for token in (KEY, TOKEN):
        sent = httpx.post(url + "/v1/feedback", json=body,
                          headers={"authorization": f"Bearer {token}"})
        assert sent.status_code == 200, sent.text
    assert httpx.post(url + "/v1/feedback", json=body).status_code == 401
