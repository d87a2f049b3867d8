"""RouterMiddleware inside a host Starlette app, and the standalone entry points."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import RouterMiddleware
from routegate.middleware.asgi_types import ASGIApp, Message, Receive, Scope, Send
from tests.conftest import pool_config

MESSAGES = [{"role": "user", "content": "hi"}]


class StampMiddleware:
    """A host's own pure ASGI middleware: tags every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-host", b"stamped")]
            await send(message)

        await self.app(scope, receive, stamped)


async def host_models(request: Request) -> JSONResponse:
    return JSONResponse({"host": "own models route"})


def test_middleware_serves_gateway_paths_and_leaves_host_routes_alone(
        fake_openai: tuple[FakeProvider, str]) -> None:
    fake, fake_url = fake_openai
    host = Starlette(
        routes=[Route("/hello", lambda request: PlainTextResponse("host says hi")),
                Route("/api/v1/models", host_models)],
        middleware=[Middleware(StampMiddleware),
                    Middleware(RouterMiddleware, config=pool_config({"f": fake_url}))],
    )
    with serve_in_thread(host, lifespan="on") as url:
        own = httpx.get(url + "/hello")
        own_models = httpx.get(url + "/api/v1/models")
        missing = httpx.get(url + "/nope")
        routed = httpx.post(url + "/v1/chat/completions",
                            json={"model": "cheap", "messages": MESSAGES})
    assert own.text == "host says hi" and own.headers["x-host"] == "stamped"
    assert own_models.json() == {"host": "own models route"}
    assert missing.status_code == 404 and missing.text == "Not Found"  # the host's own 404
    assert routed.status_code == 200 and routed.headers["x-routegate-model"] == "cheap"
    assert routed.headers["x-host"] == "stamped"  # host middleware wraps gateway answers too
    assert len(fake.requests) == 1


def test_middleware_without_host_lifespan_starts_on_first_request(
        fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    host = Starlette(routes=[Route("/x", lambda request: PlainTextResponse("x"))])
    app = RouterMiddleware(host, config=pool_config({"f": fake_url}))
    with serve_in_thread(app, lifespan="off") as url:
        response = httpx.post(url + "/v1/chat/completions",
                              json={"model": "cheap", "messages": MESSAGES})
    assert response.status_code == 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config_file(tmp_path: Path, fake_url: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[providers.fake]
type = "openai"
base_url = "{fake_url}/v1"
api_key_env = "ROUTEGATE_TEST_PROVIDER_KEY"
[models.cheap]
provider = "fake"
capabilities = {{ chat = 0.9 }}
""")
    return path


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


@pytest.mark.parametrize("entry", ["console-script", "uvicorn"])
def test_standalone_entry_points(tmp_path: Path, fake_openai: tuple[FakeProvider, str],
                                 entry: str) -> None:
    _, fake_url = fake_openai
    config, port = _config_file(tmp_path, fake_url), _free_port()
    bin_dir = Path(sys.executable).parent
    if entry == "console-script":
        command = [str(bin_dir / "routegate"), "serve", "--config", str(config), "--port", str(port)]
    else:
        command = [sys.executable, "-m", "uvicorn", "routegate.middleware.standalone.app:app",
                   "--port", str(port)]
    env = {**os.environ, "ROUTEGATE_CONFIG": str(config)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, process)
        response = httpx.post(url + "/v1/chat/completions",
                              json={"model": "cheap", "messages": MESSAGES})
        assert response.status_code == 200 and response.headers["x-routegate-model"] == "cheap"
    finally:
        process.terminate()
        process.wait(10)


def test_serve_with_a_bad_config_exits_with_the_key_path(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[providers.p]\ntype = "openai"\nbase_url = "http://x"\ntimeout = 3\n')
    routegate = Path(sys.executable).parent / "routegate"
    result = subprocess.run([str(routegate), "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "providers.p.timeout: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
