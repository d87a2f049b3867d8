"""Slow and oversized clients against the protocol ``routegate serve`` runs (running_gateway
serves through the same class): raw sockets, short limits, assertions on outcomes."""

from __future__ import annotations

import asyncio
import inspect
import logging
import select
import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from bench.fakes import FakeProvider
from routegate.middleware.standalone.http_protocol import GuardedHttpToolsProtocol
from tests.conftest import pool_config, running_gateway

LIMITS = {"max_header_bytes": 8192, "header_timeout_s": 0.5, "body_timeout_s": 0.5,
          "keepalive_timeout_s": 0.5}
GET = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


@contextmanager
def gateway(fake_url: str, **server: Any) -> Iterator[tuple[str, int]]:
    config = pool_config({"f": fake_url}, extra={"server": {"request_timeout_s": 10.0,
                                                            **LIMITS, **server}})
    with running_gateway(config) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5.0)


def read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes (bounded: the socket times out)."""
    data = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("keep_alive", [False, True], ids=["first", "after-a-request"])
def test_oversized_header_section_is_431_and_closed(
        fake_openai: tuple[FakeProvider, str], keep_alive: bool) -> None:
    with gateway(fake_openai[1], max_header_bytes=65536) as address, \
            closing(connect(address)) as sock:
        if keep_alive:
            sock.sendall(GET)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n"
        with suppress(OSError):  # the server may stop reading once it has answered
            sock.sendall(head)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"code":"request_header_fields_too_large"' in answer
    assert b"connection: close" in answer


def test_a_large_body_behind_a_small_head_is_fine(fake_openai: tuple[FakeProvider, str]) -> None:
    with gateway(fake_openai[1]) as (host, port):
        body = ('{"model": "cheap", "messages": [{"role": "user", "content": "'
                + "word " * 60_000 + '"}]}')
        response = httpx.post(f"http://{host}:{port}/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"}, timeout=10)
        many_headers = {f"x-h{i}": "v" * 50 for i in range(100)}  # ~6 KB: under 8 KiB
        small = httpx.get(f"http://{host}:{port}/healthz", headers=many_headers)
    assert response.status_code == 200, response.text
    assert small.status_code == 200


def test_slowloris_head_is_408_and_closed(fake_openai: tuple[FakeProvider, str]) -> None:
    with gateway(fake_openai[1]) as address, closing(connect(address)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        for i in range(100):  # one header line per 0.1 s until the server answers or closes
            if select.select([sock], [], [], 0.1)[0]:
                break
            try:
                sock.sendall(b"x-slow-%d: 1\r\n" % i)
            except OSError:
                break
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"code":"request_timeout"' in answer


def test_idle_connections_are_closed(fake_openai: tuple[FakeProvider, str]) -> None:
    with gateway(fake_openai[1]) as address:
        with closing(connect(address)) as silent:  # never sends a byte: closed, no answer
            assert read_until_closed(silent) == b""
        with closing(connect(address)) as keepalive:  # one answer, then idle
            keepalive.sendall(GET)
            answer = read_until_closed(keepalive)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1


def test_short_body_is_408(fake_openai: tuple[FakeProvider, str],
                           caplog: pytest.LogCaptureFixture) -> None:
    fake, url = fake_openai
    with gateway(url) as address, closing(connect(address)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: 500\r\n\r\n"
                     b'{"model": "cheap", "messages": [')
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert not fake.requests
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_connection_cap_refuses_extra_connections_until_one_is_released(
        fake_openai: tuple[FakeProvider, str], caplog: pytest.LogCaptureFixture) -> None:
    with gateway(fake_openai[1], max_connections=3, header_timeout_s=30.0,
                 keepalive_timeout_s=30.0) as address:
        held = [connect(address) for _ in range(3)]
        try:
            for sock in held:  # answered: each is open and counted by the server
                sock.sendall(GET)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            with caplog.at_level(logging.WARNING, logger="routegate"):
                for _ in range(2):
                    with closing(connect(address)) as extra:
                        with suppress(OSError):
                            extra.sendall(GET)
                        answer = read_until_closed(extra)
                    assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            cap_lines = [r for r in caplog.records if "connection cap reached" in r.getMessage()]
            assert len(cap_lines) == 1  # rate-limited: one line for both refusals
        finally:
            for sock in held[1:]:
                sock.close()
        served = None
        for _ in range(100):  # the server sees the close within a few loop steps
            try:
                served = httpx.get(f"http://{address[0]}:{address[1]}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        held[0].close()
    assert served is not None and served.status_code == 200


def test_uvicorn_internals_the_protocol_relies_on() -> None:
    """Fails loudly when an uvicorn release moves what GuardedHttpToolsProtocol uses."""
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    loop = asyncio.new_event_loop()
    try:
        protocol = httptools_impl.HttpToolsProtocol(
            uvicorn.Config(app=app, http="httptools"), ServerState(), {}, loop)
    finally:
        loop.close()
    for attribute in ("connections", "cycle", "timeout_keep_alive", "transport", "flow",
                      "loop", "parser"):
        assert hasattr(protocol, attribute), attribute
    assert isinstance(protocol.connections, set)
    for method in ("on_message_begin", "on_headers_complete", "on_message_complete",
                   "data_received", "connection_made", "connection_lost"):
        assert callable(getattr(protocol, method)), method
    # the keep-alive timer is armed from this attribute after each response
    assert "self.timeout_keep_alive" in inspect.getsource(
        httptools_impl.HttpToolsProtocol.on_response_complete)
    cycle = inspect.signature(httptools_impl.RequestResponseCycle).parameters
    assert "keep_alive" in cycle
    source = inspect.getsource(httptools_impl.RequestResponseCycle.__init__)
    assert "self.response_started" in source and "self.response_complete" in source
    assert issubclass(GuardedHttpToolsProtocol, httptools_impl.HttpToolsProtocol)
