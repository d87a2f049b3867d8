"""Budgets and rate limits hold for the fleet, not per replica: three ``routegate serve``
processes on one Redis, the official openai SDK spreading one client's requests over them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from bench.fakes import FakeProvider, serve_in_thread
from tests.fleet.fleet_harness import Fleet, client_entry, running_fleet
from tests.redis_harness import RedisServer

BUDGET_KEY = "sk-fleet-budget-client"
RATE_KEY = "sk-fleet-rate-client"
USD_PER_TOKEN = 1e-3  # 1000 USD per million tokens, in and out: a few cents per request
DAILY_USD = 1.0
PER_MINUTE = 20
MODELS = {"m": {"provider": "fake", "upstream": "m-up", "input_usd_per_mtok": 1000.0,
                "output_usd_per_mtok": 1000.0, "context_window": 4096,
                "capabilities": {"chat": 0.9}}}


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url, running_fleet(
            tmp_path, redis_server, {"fake": fake_url}, models=MODELS,
            extra={"clients": {
                "budgeted": client_entry(BUDGET_KEY, daily_usd=DAILY_USD),
                "limited": client_entry(RATE_KEY, requests_per_minute=PER_MINUTE)}}) as running:
        yield running


async def _ask(fleet: Fleet, replica: int, key: str) -> tuple[int, str, Any]:
    """(status, error code or "", usage) of one chat completion."""
    client = fleet.client(replica, key)
    try:
        answer = await client.chat.completions.create(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "Say hello."}])
        return 200, "", answer.usage
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return exc.status_code, str(body.get("code", "")), None
    finally:
        await client.close()


def _fleet_client(fleet: Fleet, replica: int, name: str) -> dict[str, Any]:
    stats = fleet.admin(replica, "GET", "/admin/stats").json()
    assert stats["fleet"]["available"] is True
    client: dict[str, Any] = stats["fleet"]["clients"][name]
    return client


def test_budget_holds_across_replicas(fleet: Fleet) -> None:
    async def burst() -> list[tuple[int, str, Any]]:
        return await asyncio.gather(*(_ask(fleet, i % 3, BUDGET_KEY) for i in range(300)))

    results = asyncio.run(burst())
    statuses = {(status, code) for status, code, _ in results}
    assert statuses <= {(200, ""), (429, "budget_exceeded")}, statuses
    served = [usage for status, _, usage in results if status == 200]
    assert served and len(served) < 300
    # every replica's settles reach Redis: nothing held, the spend is what was served
    totals = fleet.wait_until(
        lambda: (c := _fleet_client(fleet, 2, "budgeted"))["in_flight"] == 0 and c,
        "reservations released")
    assert totals["reserved_usd"] == 0
    charged = sum(u.prompt_tokens + u.completion_tokens for u in served) * USD_PER_TOKEN
    assert totals["spent_today_usd"] == pytest.approx(charged, abs=1e-9)
    # the point: one budget for the fleet (three separate ones would let it spend ~3x)
    assert totals["spent_today_usd"] <= DAILY_USD + 1e-9
    assert totals["requests"] == len(served)
    # every replica reports the same fleet-wide numbers
    for replica in (0, 1):
        assert _fleet_client(fleet, replica, "budgeted")["spent_today_usd"] == pytest.approx(
            totals["spent_today_usd"], abs=1e-9)


def test_rate_limit_holds_across_replicas(fleet: Fleet) -> None:
    async def burst() -> list[tuple[int, str, Any]]:
        return await asyncio.gather(*(_ask(fleet, i % 3, RATE_KEY) for i in range(45)))

    results = asyncio.run(burst())
    codes = [(status, code) for status, code, _ in results]
    assert codes.count((200, "")) == PER_MINUTE
    assert codes.count((429, "rate_limit_exceeded")) == 45 - PER_MINUTE
    stats = _fleet_client(fleet, 1, "limited")
    assert stats["requests"] == PER_MINUTE and stats["rejected"] == 45 - PER_MINUTE
