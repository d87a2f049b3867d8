"""``POST /v1/route``: routegate's decision without proxying, against the real gateway (uvicorn)
and a fake provider that must never hear of it; the caller then calls the provider itself
with the official ``openai`` SDK, as the README shows."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.trace import SpanKind

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware.request.route_only import RouteOnly
from routegate.otel import attributes as a
from tests.conftest import pool_config, running_gateway
from tests.otel.otel_harness import attrs, by_kind, traced_gateway

CODE: list[Any] = [{"role": "user", "content": "Write a Python function that reverses a linked list."}]
ADMIN = "route-admin-token"
KEYS = {"alice": "sk-route-alice", "slow": "sk-route-slow", "poor": "sk-route-poor"}


def _client(key: str, **limits: float) -> dict[str, Any]:
    return {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), **limits}


@pytest.fixture
def routed() -> Iterator[tuple[FakeProvider, str, str]]:
    """(fake, its URL, gateway URL): alice unlimited, slow 2 requests a minute, poor a budget
    smaller than any request's worst case."""
    os.environ["ROUTEGATE_ROUTE_ADMIN"] = ADMIN
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as url, running_gateway(pool_config({"fake": url}, extra={
            "admin": {"token_env": "ROUTEGATE_ROUTE_ADMIN"},
            "sessions": {"enabled": True},
            "clients": {"alice": _client(KEYS["alice"], daily_usd=10.0),
                        "slow": _client(KEYS["slow"], requests_per_minute=2),
                        "poor": _client(KEYS["poor"], daily_usd=1e-9)}})) as gateway_url:
        yield fake, url, gateway_url


def route(gateway_url: str, body: Any, key: str | None = KEYS["alice"],
          **headers: str) -> httpx.Response:
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else None
    return httpx.post(gateway_url + "/v1/route", json=None if content else body,
                      content=content, headers=headers, timeout=10.0)


def test_route_decides_without_calling_the_provider_then_the_caller_does(
        routed: tuple[FakeProvider, str, str]) -> None:
    fake, fake_url, gateway_url = routed
    answer = route(gateway_url, {"model": "auto", "messages": CODE, "max_tokens": 100},
                   **{"x-request-id": "route-1"})
    assert answer.status_code == 200, answer.text
    decision = answer.json()
    assert fake.requests == []  # no provider was called
    assert decision["request_id"] == "route-1" == answer.headers["x-request-id"]
    assert decision["model"] == "mid" == answer.headers["x-routegate-model"]
    assert (decision["provider"], decision["upstream_model"]) == ("fake", "mid-up")
    assert decision["classification"]["category"] == "code" == decision["category"]
    assert [c["model"] for c in decision["plan"]] == ["mid", "big"]
    first = decision["plan"][0]
    assert first["input_usd_per_mtok"] == 1.0 and first["output_usd_per_mtok"] == 2.0
    assert first["context_window"] == 16384 and first["reasons"]
    assert decision["max_cost_usd"] > 0
    # the caller calls the provider itself with the decision (the README's example)
    provider = openai.OpenAI(base_url=fake_url + "/v1",
                             api_key=os.environ["ROUTEGATE_TEST_PROVIDER_KEY"], max_retries=0)
    reply = provider.chat.completions.create(model=decision["upstream_model"], messages=CODE)
    assert reply.choices[0].message.content
    assert [r.body["model"] for r in fake.requests] == ["mid-up"]


def test_feedback_scores_the_routed_model(routed: tuple[FakeProvider, str, str]) -> None:
    _, _, gateway_url = routed
    decision = route(gateway_url, {"model": "auto", "messages": CODE}).json()
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=KEYS["alice"], max_retries=0)
    voted = client.post("/feedback", cast_to=httpx.Response,
                        body={"request_id": decision["request_id"], "score": 0.25})
    assert voted.json() == {"recorded": True, "model": "mid", "category": "code",
                            "score": 0.25, "replaced": False}
    # another client cannot score it
    other = httpx.post(gateway_url + "/v1/feedback", timeout=10.0,
                       headers={"authorization": f"Bearer {KEYS['slow']}"},
                       json={"request_id": decision["request_id"], "score": 1.0})
    assert other.status_code == 404


def test_limits_and_budgets_admit_it_and_nothing_is_charged(
        routed: tuple[FakeProvider, str, str]) -> None:
    fake, _, gateway_url = routed
    body = {"model": "auto", "messages": CODE}
    assert route(gateway_url, body, key=None).status_code == 401
    assert route(gateway_url, body, key="sk-unknown").status_code == 401
    assert [route(gateway_url, body, key=KEYS["slow"]).status_code for _ in range(2)] == [200] * 2
    limited = route(gateway_url, body, key=KEYS["slow"])
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    poor = route(gateway_url, body, key=KEYS["poor"])
    assert poor.status_code == 429 and poor.json()["error"]["code"] == "budget_exceeded"
    for _ in range(3):
        assert route(gateway_url, body).status_code == 200
    stats = httpx.get(gateway_url + "/admin/stats", timeout=10.0,
                      headers={"authorization": f"Bearer {ADMIN}"}).json()["clients"]
    assert stats["alice"]["spent_today_usd"] == 0 and stats["alice"]["reserved_usd"] == 0
    assert stats["alice"]["in_flight"] == 0 and stats["alice"]["requests"] == 3
    assert fake.requests == []
    for value in (KEYS["alice"], hashlib.sha256(KEYS["alice"].encode()).hexdigest()):
        assert value not in limited.text + poor.text


@pytest.mark.parametrize(("body", "status", "code", "param"), [
    (b"{not json", 400, "invalid_json", None),
    (b'["a list"]', 400, "invalid_json", None),
    ({"model": "auto"}, 400, "invalid_request", "messages"),
    ({"model": "auto", "messages": []}, 400, "invalid_request", "messages"),
    ({"model": "auto", "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request",
     "messages[0].role"),
    ({"model": "auto", "messages": CODE, "max_tokens": 10_000_000}, 400, "invalid_request",
     "max_tokens"),
    ({"model": "nope", "messages": CODE}, 404, "model_not_found", "model"),
])
def test_bad_bodies_get_openai_style_errors(routed: tuple[FakeProvider, str, str], body: Any,
                                           status: int, code: str, param: str | None) -> None:
    fake, _, gateway_url = routed
    answer = route(gateway_url, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)
    assert fake.requests == []


def test_wrong_method_and_a_named_model(routed: tuple[FakeProvider, str, str]) -> None:
    _, _, gateway_url = routed
    wrong = httpx.get(gateway_url + "/v1/route", timeout=10.0,
                      headers={"authorization": f"Bearer {KEYS['alice']}"})
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    named = route(gateway_url, {"model": "cheap", "messages": CODE}).json()
    assert named["classification"] is None and named["category"] is None
    assert [c["model"] for c in named["plan"]] == ["cheap", "mid", "big"]


def test_routing_only_keeps_the_conversation_pin(routed: tuple[FakeProvider, str, str]) -> None:
    _, _, gateway_url = routed
    session = {"x-routegate-session": "route-conversation"}
    first = route(gateway_url, {"model": "auto", "messages": CODE}, **session).json()
    chat = [*CODE, {"role": "assistant", "content": "def f(): ..."},
            {"role": "user", "content": "Thanks! Tell me more."}]
    second = route(gateway_url, {"model": "auto", "messages": chat}, **session).json()
    assert (first["model"], first["session"]) == ("mid", "new")
    assert (second["model"], second["session"]) == ("mid", "kept")


def test_route_is_traced_like_a_request() -> None:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as url, traced_gateway(
            pool_config({"fake": url}), also=[RouteOnly()]) as traced:
        answer = httpx.post(traced.url + "/v1/route", json={"model": "auto", "messages": CODE},
                            timeout=10.0)
        assert answer.status_code == 200, answer.text
        spans = traced.wait_requests(1)
    (server,) = by_kind(spans, SpanKind.SERVER)
    assert server.name == "/v1/route"
    assert attrs(server)[a.RG_MODEL] == "mid" and attrs(server)[a.RG_CATEGORY] == "code"
    assert attrs(server)[a.RG_REQUEST_ID] == answer.json()["request_id"]
    assert attrs(server)[a.HTTP_RESPONSE_STATUS_CODE] == 200
    assert answer.headers["x-trace-id"] == format(server.context.trace_id, "032x")
    assert [s.name for s in by_kind(spans, SpanKind.CLIENT)] == []  # no upstream call
    assert a.CLASSIFY_SPAN in [s.name for s in spans]
    assert fake.requests == []
