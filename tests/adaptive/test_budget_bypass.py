"""Issue 11 item 1: output limits cannot defeat a budget. Negative, zero, oversized or non-integer
``max_tokens`` / ``max_completion_tokens`` / ``n`` are 400s naming the field, and reservations
are held per request and released exactly (never a phantom reservation that locks a client
out)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware.config import parse_config
from routegate.middleware.operations.budgets import ClientLimiter, hash_key, reservation_usd
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.wire.openai import ChatRequest
from tests.adaptive.adaptive_helpers import ADMIN, HELLO, admin, chat, eventually
from tests.conftest import pool_config, running_gateway

KEY = "sk-client-attacker"
# $1000 per million tokens either way: one answer from the fake costs $0.007
PRICEY: dict[str, Any] = {"provider": "fake", "input_usd_per_mtok": 1000.0,
                          "output_usd_per_mtok": 1000.0, "context_window": 8192,
                          "capabilities": {"chat": 0.9}}
# max_tokens that make one request reserve about $1.50 on PRICEY (prompt bytes + output)
MAX_TOKENS_FOR_1_50 = 1440


def _auth() -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"}


def _served(daily_usd: float) -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url:
        config = pool_config({"fake": fake_url}, models={"pricey": PRICEY},
                             routes={"chat": {"min_capability": 0.5}},
                             extra={"admin": ADMIN, "clients": {"attacker": {
                                 "key_sha256": hash_key(KEY), "daily_usd": daily_usd}}})
        with running_gateway(config) as url:
            yield fake, url


@pytest.fixture
def one_cent() -> Iterator[tuple[FakeProvider, str]]:
    yield from _served(0.01)


@pytest.fixture
def one_dollar() -> Iterator[tuple[FakeProvider, str]]:
    yield from _served(1.0)


def _client_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = admin(url, "GET", "/admin/stats").json()["clients"]["attacker"]
    return stats


def _in_background(url: str, **body: Any) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(chat(url, headers=_auth(), **body)))
    thread.start()
    return thread, out


async def _concurrent(url: str, n: int, **body: Any) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=n)) as client:
        payload = {"model": "auto", "messages": HELLO, **body}
        return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=payload,
                                                  headers=_auth()) for _ in range(n)))


def test_the_issue_attack_sequence_ends_within_budget(one_cent: tuple[FakeProvider, str]) -> None:
    """$0.01 a day: a negative max_tokens on a slow answer, 20 concurrent $1.50 requests while
    it is in flight, then n=-1 with a huge max_tokens. Spending stays within the budget."""
    fake, url = one_cent
    explain = admin(url, "POST", "/admin/explain", {"model": "auto", "messages": HELLO,
                                                    "max_tokens": MAX_TOKENS_FOR_1_50}).json()
    assert explain["max_cost_usd"] == pytest.approx(1.5, abs=0.05)
    fake.inject(Fault.slow_chunks(0.3), times=1)  # the negative request stays in flight
    thread, negative = _in_background(url, max_tokens=-1_000_000_000)
    eventually(lambda: bool(fake.requests) or not thread.is_alive())
    burst = asyncio.run(_concurrent(url, 20, max_tokens=MAX_TOKENS_FOR_1_50))
    thread.join(10)
    last = chat(url, headers=_auth(), n=-1, max_tokens=100_000_000)
    assert negative[0].status_code == 400
    assert negative[0].json()["error"]["param"] == "max_tokens"
    assert [r.status_code for r in burst] == [429] * 20
    assert last.status_code == 400 and last.json()["error"]["param"] == "n"
    stats = _client_stats(url)
    assert stats["spent_today_usd"] <= 0.01
    assert stats["reserved_usd"] == 0 and stats["in_flight"] == 0
    assert fake.requests == []


def test_a_negative_request_overlapping_normal_ones_cannot_lock_the_client_out(
        one_dollar: tuple[FakeProvider, str]) -> None:
    """The negative request admitted first and settled last used to leave ``reserved_usd`` at
    its absolute value with nothing in flight: every later request got 429."""
    fake, url = one_dollar
    fake.inject(Fault.slow_chunks(0.3), times=1)
    thread, negative = _in_background(url, max_tokens=-1_000_000_000)
    eventually(lambda: bool(fake.requests) or not thread.is_alive())
    assert chat(url, headers=_auth(), max_tokens=10).status_code == 200
    thread.join(10)
    assert negative[0].status_code == 400
    stats = _client_stats(url)
    assert stats["reserved_usd"] == 0 and stats["in_flight"] == 0
    assert chat(url, headers=_auth(), max_tokens=10).status_code == 200  # not locked out


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", True), ("max_tokens", 10.5),
    ("max_tokens", 8193), ("max_tokens", 10**40), ("max_completion_tokens", -5),
    ("max_completion_tokens", 9000), ("n", 0), ("n", -1), ("n", 17), ("n", "2")])
def test_output_limits_are_checked_with_the_field_named(
        one_dollar: tuple[FakeProvider, str], field: str, value: Any) -> None:
    fake, url = one_dollar
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hi"}],
                                       extra_body={field: value})
    assert raised.value.status_code == 400
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == field, error
    assert error["type"] == "invalid_request_error"
    assert fake.requests == [] and _client_stats(url)["requests"] == 0


@pytest.mark.parametrize("value", [0, -1_000_000_000, 8193])
def test_anthropic_ingress_checks_max_tokens(one_dollar: tuple[FakeProvider, str],
                                             value: int) -> None:
    fake, url = one_dollar
    client = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="pricey", max_tokens=value,
                               messages=[{"role": "user", "content": "Hi"}])
    assert "max_tokens" in str(raised.value)
    assert fake.requests == [] and _client_stats(url)["reserved_usd"] == 0


CONFIG = parse_config({"providers": {"p": {"type": "openai", "base_url": "http://x/v1"}},
                       "models": {"m": {"provider": "p", "input_usd_per_mtok": 1.0,
                                        "output_usd_per_mtok": 2.0}},
                       "clients": {"c": {"key_sha256": hash_key("k"), "daily_usd": 10.0}}})


def test_reservations_are_released_exactly_once_and_settling_never_refunds() -> None:
    limiter = ClientLimiter(CONFIG, wall=lambda: 1_700_000_000.0)
    first, second = limiter.admit("c", 1.0), limiter.admit("c", 2.0)
    limiter.settle(first, 0.5)
    limiter.settle(first, 0.5)  # a second settle of the same request changes nothing
    stats = limiter.stats()["c"]
    assert stats["reserved_usd"] == 2.0 and stats["in_flight"] == 1
    assert stats["spent_today_usd"] == 0.5
    limiter.settle(second, -100.0)  # a provider reporting negative usage refunds nothing
    stats = limiter.stats()["c"]
    assert stats["reserved_usd"] == 0 and stats["in_flight"] == 0
    assert stats["spent_today_usd"] == 0.5
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            limiter.admit("c", bad)
    assert limiter.stats()["c"]["reserved_usd"] == 0


def test_the_reservation_covers_the_larger_output_limit_and_at_least_the_prompt() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"Hi"}],' \
           b'"max_completion_tokens":1,"max_tokens":100000}'
    import msgspec

    fields = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    request = ClientRequest(fields, msgspec.json.decode(body, type=ChatRequest), False)
    prompt_only = sum(len(raw) for raw in fields.values()) * 1.0 / 1e6
    assert reservation_usd(request, [CONFIG.models["m"]]) == pytest.approx(
        prompt_only + 100_000 * 2.0 / 1e6)
