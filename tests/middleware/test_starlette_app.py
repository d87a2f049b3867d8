"""Issue 12 item 3: the standalone app is a Starlette application with RouterMiddleware
mounted, the operator endpoints (health, /admin, feedback) are Starlette routes, and mounted in
a host app (Starlette or plain ASGI) they answer in the API's error shape while the host's own
routes stay the host's."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import RouterMiddleware, create_app
from routegate.middleware.asgi_types import ASGIApp, Receive, Scope, Send
from tests.adaptive.adaptive_helpers import ADMIN, TOKEN, admin
from tests.conftest import pool_config


def test_the_standalone_app_is_starlette_and_its_operator_routes_are_starlette_routes(
        fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    app = create_app(pool_config({"f": fake_url}, extra={"admin": ADMIN}))
    assert isinstance(app, Starlette)
    assert {r.path for r in app.routes if isinstance(r, Route)} == {"/healthz", "/readyz"}
    with serve_in_thread(app, lifespan="on") as url:
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        assert admin(url, "GET", "/admin/stats").status_code == 200
        operator = {r.path for r in app.gateway.routes if isinstance(r, Route)}
        assert operator == {"/v1/feedback", "/admin", "/admin/{path:path}"}
        assert "/v1/chat/completions" in app.gateway.endpoints  # the hot path: pure ASGI


async def _host_own(request: Request) -> JSONResponse:
    return JSONResponse({"host": request.url.path, "url": str(request.url_for("own"))})


async def _plain_host(scope: Scope, receive: Receive, send: Send) -> None:
    """A host that is not Starlette (no ``app`` in the scope: Starlette's routing answers
    plain text there unless told otherwise)."""
    if scope["type"] != "http":
        return
    await PlainTextResponse("plain host")(scope, receive, send)


def _starlette_host(fake_url: str) -> ASGIApp:
    return Starlette(
        routes=[Route("/admin-panel", _host_own, name="own"),
                Route("/v1/other", _host_own)],
        middleware=[Middleware(RouterMiddleware, config=pool_config(
            {"f": fake_url}, extra={"admin": ADMIN}))])


def _plain(fake_url: str) -> ASGIApp:
    return RouterMiddleware(_plain_host, config=pool_config({"f": fake_url},
                                                            extra={"admin": ADMIN}))


@pytest.fixture(params=["starlette", "plain"])
def hosted(request: pytest.FixtureRequest,
           fake_openai: tuple[FakeProvider, str]) -> Iterator[tuple[str, str]]:
    _, fake_url = fake_openai
    app = _starlette_host(fake_url) if request.param == "starlette" else _plain(fake_url)
    with serve_in_thread(app, lifespan="on") as url:
        yield request.param, url


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, object] = response.json()["error"]
    return error


def test_operator_routes_answer_in_the_api_shape_in_any_host(hosted: tuple[str, str]) -> None:
    _, url = hosted
    assert admin(url, "GET", "/admin/stats").json()["adaptive"] in (True, False)
    assert _error(admin(url, "GET", "/admin/stats", token=None), 401)["type"] == \
        "authentication_error"
    wrong = admin(url, "POST", "/admin/stats")
    assert _error(wrong, 405)["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "GET, HEAD"
    assert _error(admin(url, "GET", "/admin/nothing-here"), 404)["code"] == "not_found"
    feedback_get = httpx.get(url + "/v1/feedback")
    assert _error(feedback_get, 405)["type"] == "invalid_request_error"
    assert feedback_get.headers["allow"] == "POST"
    bad = httpx.post(url + "/v1/feedback", content=b"{", headers={"authorization":
                                                                   f"Bearer {TOKEN}"})
    assert _error(bad, 400)["type"] == "invalid_request_error"
    page = httpx.get(url + "/admin/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_the_host_routes_stay_the_hosts(hosted: tuple[str, str]) -> None:
    kind, url = hosted
    for path in ("/admin-panel", "/v1/other", "/adminx"):
        response = httpx.get(url + path)
        if kind == "plain":
            assert response.text == "plain host"
        elif path == "/adminx":
            assert response.status_code == 404 and response.text == "Not Found"  # the host's
        else:  # the host's url_for still sees the host's router
            assert response.json() == {"host": path, "url": url + "/admin-panel"}
