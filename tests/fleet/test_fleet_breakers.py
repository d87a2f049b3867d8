"""Breakers and health are the fleet's, not one replica's: three ``routegate serve`` processes
on one Redis in front of a failing fake provider (the official openai SDK as the client), and
two registries on a real redis-server whose combined signal equals one registry's that saw
every request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware.config import StateConfig
from routegate.middleware.operations.model_health import Controls, HealthRegistry, LiveView
from routegate.middleware.operations.sliding_windows import Sample
from routegate.middleware.request.routing import ModelSignal
from routegate.middleware.state.health_sync import HealthSync
from routegate.middleware.state.redis_state import RedisState
from tests.adaptive.adaptive_helpers import Clock
from tests.conftest import NO_5XX_RETRY, pool_config
from tests.fleet.fleet_harness import Fleet, running_fleet
from tests.redis_harness import RedisServer, free_port, running_redis

INITIAL_WAIT_S = 4.0  # the first probe's wait; a failed probe doubles it (the cool-down cap)
DOUBLED_WAIT_S = 8.0
MODELS = {
    "flaky": {"provider": "bad", "upstream": "flaky-up", "input_usd_per_mtok": 0.1,
              "output_usd_per_mtok": 0.2, "context_window": 4096,
              "capabilities": {"chat": 0.9}, "fallbacks": ["backup"]},
    "backup": {"provider": "good", "upstream": "backup-up", "input_usd_per_mtok": 1.0,
               "output_usd_per_mtok": 2.0, "context_window": 4096,
               "capabilities": {"chat": 0.9}},
}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer
          ) -> Iterator[tuple[Fleet, FakeProvider]]:
    bad, good = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="B")
    with serve_in_thread(bad) as bad_url, serve_in_thread(good) as good_url, running_fleet(
            tmp_path, redis_server, {"bad": bad_url, "good": good_url}, models=MODELS,
            extra={"retry": NO_5XX_RETRY,  # one upstream request per failed attempt
                   "adaptive": {"breaker": {
                       "consecutive_failures": 2, "probe_backoff_initial_s": INITIAL_WAIT_S,
                       "cooldown_s": DOUBLED_WAIT_S}}}) as running:
        yield running, bad


async def _served_by(fleet: Fleet, replica: int) -> str:
    """The pool model that answered one chat completion sent to ``replica``."""
    client = fleet.client(replica)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="flaky", max_tokens=8, messages=[{"role": "user", "content": "Say hi."}])
        return raw.headers["x-routegate-model"]
    finally:
        await client.close()


def _round(fleet: Fleet, replicas: tuple[int, ...] = (0, 1, 2)) -> list[str]:
    """One request to each of ``replicas`` at once (every one must be answered)."""
    async def send() -> list[str]:
        return await asyncio.gather(*(_served_by(fleet, r) for r in replicas))
    return asyncio.run(send())


def _breaker(fleet: Fleet, replica: int) -> dict[str, Any]:
    stats = fleet.admin(replica, "GET", "/admin/stats").json()
    breaker: dict[str, Any] = stats["models"]["flaky"]["breaker"]
    return breaker


def _all(fleet: Fleet, check: Any) -> bool:
    return all(check(_breaker(fleet, replica)) for replica in range(3))


def _open_on_replica_0(fleet: Fleet) -> None:
    for _ in range(10):
        if _breaker(fleet, 0)["state"] != "closed":
            return
        assert _round(fleet, (0,)) == ["backup"]  # the failure falls back
    raise AssertionError("replica 0's breaker did not open")


def _rounds_until(fleet: Fleet, bad: FakeProvider, count: int, timeout_s: float) -> None:
    """Requests to all three replicas until the failing provider has seen ``count``."""
    fleet.wait_until(lambda: _round(fleet) and len(bad.requests) >= count,
                     f"{count} requests at the provider", timeout_s)


def test_breaker_opens_probes_once_and_recovers_fleet_wide(
        fleet: tuple[Fleet, FakeProvider]) -> None:
    running, bad = fleet
    bad.set_default(Fault.status(503))
    _open_on_replica_0(running)
    # replicas 1 and 2 never sent it anything, and skip it: replica 0's breaker is theirs
    running.wait_until(lambda: _all(running, lambda b: b["state"] == "open"),
                       "breaker open on every replica")
    seen = len(bad.requests)
    assert _round(running, (1, 2, 1, 2)) == ["backup"] * 4
    plan = running.admin(1, "POST", "/admin/explain", json={
        "model": "flaky", "messages": [{"role": "user", "content": "hi"}]}).json()
    assert "circuit breaker open" in str(plan)
    assert len(bad.requests) == seen and _breaker(running, 1)["consecutive_failures"] == 0

    # after the cool-down: exactly one probe in the fleet (every replica has traffic)
    _rounds_until(running, bad, seen + 1, 4 * INITIAL_WAIT_S)
    first_probe = bad.requests[seen].received_at
    running.wait_until(lambda: _round(running) and _all(
        running, lambda b: b["probes_failed"] == 1 and b["state"] == "open"),
        "the failed probe reached every replica")
    assert len(bad.requests) == seen + 1
    # every replica waits the doubled step, counted from the failed probe (the initial one
    # would leave less than INITIAL_WAIT_S - elapsed)
    waits = [_breaker(running, replica)["next_probe_in_s"] for replica in range(3)]
    elapsed = time.monotonic() - first_probe
    assert all(DOUBLED_WAIT_S - elapsed - 0.05 <= wait <= DOUBLED_WAIT_S for wait in waits)

    # the next single probe comes after the doubled wait
    _rounds_until(running, bad, seen + 2, 4 * DOUBLED_WAIT_S)
    assert bad.requests[seen + 1].received_at - first_probe >= DOUBLED_WAIT_S - 0.1
    running.wait_until(lambda: _round(running) and _all(
        running, lambda b: b["probes_failed"] == 2), "the second failed probe reached all")
    assert len(bad.requests) == seen + 2

    # recovered: the next probe succeeds and every replica serves the model again
    bad.set_default(None)
    running.wait_until(lambda: _round(running) and _all(
        running, lambda b: b["state"] == "closed"), "recovery on every replica",
        4 * DOUBLED_WAIT_S)
    assert _round(running, (1, 2)) == ["flaky", "flaky"]


def test_admin_reset_reaches_every_replica(fleet: tuple[Fleet, FakeProvider]) -> None:
    running, bad = fleet
    bad.set_default(Fault.status(503))
    _open_on_replica_0(running)
    running.wait_until(lambda: _all(running, lambda b: b["state"] == "open"),
                       "breaker open on every replica")
    bad.set_default(None)
    assert running.admin(2, "POST", "/admin/breakers/flaky/reset").status_code == 200
    running.wait_until(lambda: _all(running, lambda b: b["state"] == "closed"),
                       "the reset reached every replica")
    assert _round(running) == ["flaky"] * 3
    unknown = running.admin(1, "POST", "/admin/breakers/nope/reset")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"]


def _samples(registry: HealthRegistry, latencies: list[float], failures: int,
             scores: list[float]) -> None:
    for latency in latencies:
        registry.record("cheap", "p", Sample(ok=True, latency_s=latency, ttft_s=latency / 4))
    for _ in range(failures):
        registry.record("cheap", "p", Sample(ok=False), verdict=False)
    for score in scores:
        registry.record_quality("cheap", "chat", score)


def test_fleet_signal_is_the_signal_of_one_replica_that_saw_everything(
        redis_server: RedisServer) -> None:
    """Error rate, latency and TTFT p95 and quality per category, combined over two
    replicas, equal what one registry fed every sample reads (same histogram bins); with
    Redis gone for a heartbeat, each replica is back to its own numbers."""
    config = pool_config({"p": "http://127.0.0.1:9"})
    clock = Clock()
    first, second, alone = (HealthRegistry(config, clock) for _ in range(3))
    a = ([0.05] * 20, 2, [1.0] * 6)
    b = ([0.9, 1.4, 2.0, 3.1, 0.07], 4, [0.0] * 5)
    _samples(first, *a)
    _samples(second, *b)
    _samples(alone, *a)
    _samples(alone, *b)
    clock.now += 5.0  # past the tick: every sample is folded into the decision window
    controls = Controls()
    expected = LiveView(alone, controls).signal("cheap", "chat")
    assert expected.requests == 31 and expected.quality_samples == 11
    own = LiveView(first, controls).signal("cheap", "chat")
    assert own != expected

    settings = StateConfig(backend="redis", url=redis_server.url, key_prefix="rg-unit:",
                           flush_interval_s=0.05, heartbeat_ttl_s=1.0)

    async def until(registry: HealthRegistry, signal: ModelSignal) -> None:
        for _ in range(200):  # bounded: 10 s at most
            if LiveView(registry, controls).signal("cheap", "chat") == signal:
                return
            await asyncio.sleep(0.05)
        assert LiveView(registry, controls).signal("cheap", "chat") == signal

    async def run() -> None:
        states = [RedisState(settings, redis_server.url, name) for name in ("r1", "r2")]
        for state, registry in zip(states, (first, second), strict=True):
            HealthSync(state, registry).install()
            await state.start()
        try:
            await until(first, expected)
            await until(second, expected)
            redis_server.kill()
            await until(first, own)
        finally:
            for state in states:
                await state.stop()

    asyncio.run(run())


def test_each_replica_probes_alone_while_redis_is_out_of_reach() -> None:
    """No flush reaches Redis (nothing listens on its port): after the lease time a
    half-open breaker is probed locally, as by a lone gateway, instead of never."""
    config = pool_config({"p": "http://127.0.0.1:9"},
                         extra={"adaptive": {"breaker": {"consecutive_failures": 1}}})
    clock = Clock()
    registry = HealthRegistry(config, clock)
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = StateConfig(backend="redis", url=url, flush_interval_s=0.05)

    async def run() -> None:
        state = RedisState(settings, url, "alone")
        sync = HealthSync(state, registry).install()
        await state.start()
        try:
            registry.record("cheap", "p", Sample(ok=False))
            clock.now += registry.breakers["cheap"].wait_s  # half-open: the fleet's lease...
            signal = LiveView(registry, Controls()).signal("cheap", None)
            assert signal.breaker == "half_open" and not signal.probe_free
            clock.now += sync.lease_s  # ...which nobody can take: probe alone
            assert LiveView(registry, Controls()).signal("cheap", None).probe_free
            assert state.status()["available"] is False
        finally:
            await state.stop()

    asyncio.run(run())
