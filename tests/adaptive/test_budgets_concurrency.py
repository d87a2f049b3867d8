"""Client keys (hashed in config), USD budgets held under 100 concurrent requests, rate limits,
and the cost header."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware.operations.budgets import hash_key
from tests.adaptive.adaptive_helpers import ADMIN, HELLO, admin, chat
from tests.conftest import pool_config, running_gateway

KEY, OTHER = "sk-client-alpha", "sk-client-beta"
# $1000 per million tokens either way: one answer from the fake (2 prompt words, 5 pieces)
# costs 7 tokens = $0.007.
PRICEY: dict[str, Any] = {"provider": "fake", "input_usd_per_mtok": 1000.0,
                          "output_usd_per_mtok": 1000.0, "capabilities": {"chat": 0.9}}
ANSWER_COST = 0.007


def gateway(clients: dict[str, Any]) -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(kind="openai")
    fake.set_default(Fault.slow_chunks(0.05))  # requests overlap
    with serve_in_thread(fake) as fake_url:
        config = pool_config({"fake": fake_url}, models={"pricey": PRICEY},
                             routes={"chat": {"min_capability": 0.5}},
                             extra={"clients": clients, "admin": ADMIN})
        with running_gateway(config) as url:
            yield fake, url


@pytest.fixture
def budgeted() -> Iterator[tuple[FakeProvider, str]]:
    yield from gateway({"alpha": {"key_sha256": hash_key(KEY), "daily_usd": 0.5},
                        "beta": {"key_sha256": hash_key(OTHER), "requests_per_minute": 3}})


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_keys_are_required_and_checked(budgeted: tuple[FakeProvider, str]) -> None:
    _, url = budgeted
    missing = chat(url)
    assert missing.status_code == 401 and "Missing API key" in missing.json()["error"]["message"]
    assert chat(url, headers=auth("sk-wrong")).status_code == 401
    ok = chat(url, headers=auth(KEY), max_tokens=10)
    assert ok.status_code == 200, ok.text
    assert chat(url, headers={"x-api-key": KEY}, max_tokens=10).status_code == 200


def test_cost_header_on_whole_answers_only(budgeted: tuple[FakeProvider, str]) -> None:
    _, url = budgeted
    response = chat(url, headers=auth(KEY), max_tokens=10)
    assert float(response.headers["x-routegate-cost-usd"]) == pytest.approx(ANSWER_COST)
    streamed = chat(url, headers=auth(KEY), stream=True, max_tokens=10)
    assert streamed.status_code == 200 and "x-routegate-cost-usd" not in streamed.headers
    stats = admin(url, "GET", "/admin/stats").json()
    window = stats["models"]["pricey"]["windows"]["1m"]
    assert window["cost_per_request_usd"] == pytest.approx(ANSWER_COST)
    assert stats["clients"]["alpha"]["spent_today_usd"] == pytest.approx(2 * ANSWER_COST)


async def _burst(url: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        body = {"model": "auto", "messages": HELLO, "max_tokens": 10}
        return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=body,
                                                  headers=auth(KEY)) for _ in range(n)))


def test_budget_holds_under_100_concurrent_requests(budgeted: tuple[FakeProvider, str]) -> None:
    fake, url = budgeted
    explain = admin(url, "POST", "/admin/explain",
                    {"model": "auto", "messages": HELLO, "max_tokens": 10}).json()
    reservation = explain["max_cost_usd"]
    assert reservation > ANSWER_COST
    responses = asyncio.run(_burst(url, 100))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 100
    assert ok and refused
    error = refused[0].json()["error"]
    assert error["code"] == "budget_exceeded" and "daily budget of $0.5" in error["message"]
    client = admin(url, "GET", "/admin/stats").json()["clients"]["alpha"]
    assert client["spent_today_usd"] == pytest.approx(len(ok) * ANSWER_COST)
    assert client["spent_today_usd"] <= 0.5
    assert client["reserved_usd"] == 0 and client["in_flight"] == 0
    assert len(fake.requests) == len(ok)  # refused requests never reached the provider
    # all admitted together: only as many as the reservations fit could run at once
    assert len(ok) >= int(0.5 // reservation)


def test_rate_limit_per_client(budgeted: tuple[FakeProvider, str]) -> None:
    _, url = budgeted
    codes = [chat(url, headers=auth(OTHER), max_tokens=5).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    limited = chat(url, headers=auth(OTHER))
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    assert chat(url, headers=auth(KEY), max_tokens=5).status_code == 200  # others unaffected


def test_adaptive_off_keeps_operator_controls_but_not_health(
        fake_openai: tuple[FakeProvider, str]) -> None:
    fake, fake_url = fake_openai
    adaptive = {"enabled": False, "breaker": {"consecutive_failures": 1}}
    with running_gateway(pool_config({"fake": fake_url},
                                     extra={"adaptive": adaptive, "admin": ADMIN})) as url:
        fake.inject(Fault.status(503), model="cheap-up", times=3)
        for _ in range(3):
            chat(url, model="cheap")
        assert len(fake.requests) == 6  # cheap tried every time: health does not steer
        admin(url, "POST", "/admin/models/cheap/disable")
        assert chat(url, model="cheap").headers["x-routegate-model"] == "mid"
