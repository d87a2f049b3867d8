"""Redis trouble never stops traffic: frozen (slow), killed and restarted mid-load, the fleet
keeps answering, /readyz says degraded and then ready, and the spend adds up afterwards."""

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

KEY = "sk-fleet-outage-client"
USD_PER_TOKEN = 1e-3
MODELS = {"m": {"provider": "fake", "upstream": "m-up", "input_usd_per_mtok": 1000.0,
                "output_usd_per_mtok": 1000.0, "context_window": 4096,
                "capabilities": {"chat": 0.9}}}
CLIENTS = {"clients": {"steady": client_entry(KEY, daily_usd=1000.0)}}


@pytest.fixture
def fake_url() -> Iterator[str]:
    with serve_in_thread(FakeProvider(kind="openai")) as url:
        yield url


async def _ask(fleet: Fleet, replica: int) -> tuple[int, str, float]:
    """(status, error code or "", cost in USD of the answer)."""
    client = fleet.client(replica, KEY)
    try:
        answer = await client.chat.completions.create(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "Say hello."}])
        usage = answer.usage
        assert usage is not None
        return 200, "", (usage.prompt_tokens + usage.completion_tokens) * USD_PER_TOKEN
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return exc.status_code, str(body.get("code", "")), 0.0
    finally:
        await client.close()


def _serve(fleet: Fleet, count: int) -> list[tuple[int, str, float]]:
    async def run() -> list[tuple[int, str, float]]:
        return await asyncio.gather(*(_ask(fleet, i % len(fleet.urls)) for i in range(count)))
    return asyncio.run(run())


def _all_status(fleet: Fleet, status: str) -> bool:
    return all(fleet.readyz(i)["status"] == status for i in range(len(fleet.urls)))


def _settled_spend(fleet: Fleet) -> float:
    def settled() -> dict[str, Any] | None:
        fleet_view = fleet.admin(0, "GET", "/admin/stats").json()["fleet"]
        client: dict[str, Any] = fleet_view.get("clients", {}).get("steady", {})
        return client if fleet_view["available"] and client.get("in_flight") == 0 else None
    return float(fleet.wait_until(settled, "every settle in Redis")["spent_today_usd"])


def _incidents(fleet: Fleet) -> int:
    return fleet.log_text().count("shared state (Redis) unreachable")


def test_slow_then_dead_redis_never_fails_a_request(tmp_path: Path, redis_server: RedisServer,
                                                     fake_url: str) -> None:
    with running_fleet(tmp_path, redis_server, {"fake": fake_url}, models=MODELS, extra=CLIENTS,
                       state={"command_timeout_s": 0.5}) as fleet:
        served = _serve(fleet, 15)
        # Redis frozen: it accepts connections and never answers (a hung or overloaded Redis)
        with redis_server.frozen():
            fleet.wait_until(lambda: _all_status(fleet, "degraded"), "every replica degraded")
            served += _serve(fleet, 15)  # admitted on each replica's own accounting ("open")
        fleet.wait_until(lambda: _all_status(fleet, "ready"), "every replica ready again")
        served += _serve(fleet, 15)
        assert {(status, code) for status, code, _ in served} == {(200, "")}
        # nothing lost, nothing charged twice: the outage's spend was sent once it was back
        assert _settled_spend(fleet) == pytest.approx(sum(c for _, _, c in served), abs=1e-9)
        assert _incidents(fleet) == 3  # one line per replica for the incident, not per request

        # killed, then restarted empty (no persistence here) on the same port
        redis_server.kill()
        fleet.wait_until(lambda: _all_status(fleet, "degraded"), "degraded after the kill")
        after_kill = _serve(fleet, 15)
        redis_server.start()
        fleet.wait_until(lambda: _all_status(fleet, "ready"), "ready after the restart")
        after_kill += _serve(fleet, 15)
        assert {(status, code) for status, code, _ in after_kill} == {(200, "")}
        assert _settled_spend(fleet) == pytest.approx(sum(c for _, _, c in after_kill), abs=1e-9)
        assert _incidents(fleet) == 6


def test_closed_policy_refuses_budgeted_requests_while_redis_is_down(
        tmp_path: Path, redis_server: RedisServer, fake_url: str) -> None:
    with running_fleet(tmp_path, redis_server, {"fake": fake_url}, models=MODELS, extra=CLIENTS,
                       replicas=1, state={"on_unavailable": "closed"}) as fleet:
        assert {(s, code) for s, code, _ in _serve(fleet, 2)} == {(200, "")}
        redis_server.kill()
        fleet.wait_until(lambda: _all_status(fleet, "degraded"), "degraded")
        assert {(s, code) for s, code, _ in _serve(fleet, 3)} == {(503, "budget_unavailable")}
        redis_server.start()
        fleet.wait_until(lambda: _all_status(fleet, "ready"), "ready again")
        assert {(s, code) for s, code, _ in _serve(fleet, 3)} == {(200, "")}
