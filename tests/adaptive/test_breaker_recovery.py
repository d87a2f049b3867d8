"""A recovered provider serves again soon under sparse traffic; a dead one is probed on a
backoff; same-model retries count once for the breaker. Clocks are injected: no sleeps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware import RouterMiddleware
from routegate.middleware.config import BreakerConfig
from routegate.middleware.operations.adaptive import AdaptiveExtension
from routegate.middleware.operations.breaker import Breaker
from routegate.middleware.operations.sliding_windows import Window
from routegate.middleware.request.gateway import Gateway
from tests.adaptive.adaptive_helpers import Clock, chat
from tests.conftest import pool_config


def test_probe_waits_double_from_the_initial_step_up_to_the_cooldown() -> None:
    breaker = Breaker(BreakerConfig(consecutive_failures=1))  # defaults: 2 s doubling to 5 s
    window = Window(60.0, 12)
    breaker.record(0.0, False, window)
    assert breaker.state(1.9) == "open" and breaker.state(2.0) == "half_open"
    waits = []
    now = 2.0
    for probe in range(4):
        breaker.claim_probe(f"probe-{probe}")
        breaker.record(now, False, window, f"probe-{probe}")
        assert breaker.state(now) == "open"
        assert breaker.next_probe_at is not None
        waits.append(breaker.next_probe_at - now)
        now = breaker.next_probe_at
    assert waits == [4.0, 5.0, 5.0, 5.0]
    # a request planned before the trip that fails late is not a probe: the schedule stands
    breaker.record(now - 1.0, False, window, "old-request")
    assert breaker.next_probe_at == now and breaker.probes_failed == 4
    breaker.claim_probe("probe-ok")
    breaker.record(now, True, window, "probe-ok")
    assert breaker.state(now) == "closed" and breaker.reason == "probe succeeded"
    breaker.record(now + 1, False, window)  # trips again: the backoff starts over
    assert breaker.next_probe_at == now + 1 + 2.0


def test_initial_step_is_capped_by_the_cooldown() -> None:
    breaker = Breaker(BreakerConfig(consecutive_failures=1, cooldown_s=1.0))
    breaker.record(0.0, False, Window(60.0, 12))
    assert breaker.next_probe_at == 1.0


@pytest.fixture
def clocked() -> Iterator[tuple[FakeProvider, FakeProvider, str, AdaptiveExtension, Clock]]:
    """cheap on provider A, mid and big on B; the breakers run on an injected clock."""
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="B")
    clock = Clock()
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
        config = pool_config({"a": url_a, "b": url_b},
                             extra={"adaptive": {"breaker": {"consecutive_failures": 2}}})
        extension = AdaptiveExtension(clock=clock)
        app = RouterMiddleware(Starlette(), gateway=Gateway(config, extensions=[extension]))
        with serve_in_thread(app, lifespan="on") as url:
            yield first, second, url, extension, clock


def test_recovered_primary_serves_again_within_10s_under_sparse_traffic(
        clocked: tuple[FakeProvider, FakeProvider, str, AdaptiveExtension, Clock]) -> None:
    """The issue's run: primary down for a minute, one request every 4 s, all rescued; the
    primary is probed on the backoff (default schedule) and back within 10 s of recovering."""
    first, _, url, extension, clock = clocked
    start = clock.now
    first.set_default(Fault.status(503))
    probes: list[float] = []
    while clock.now - start < 56:
        before = len(first.requests)
        was_open = extension.registry.breakers["cheap"].state(clock.now) != "closed"
        response = chat(url, model="cheap")
        assert response.status_code == 200 and response.headers["x-routegate-model"] == "mid"
        if was_open and len(first.requests) > before:
            assert len(first.requests) == before + 1  # a probe is one attempt, never retried
            probes.append(clock.now - start)
        clock.now += 4.0
    breaker = extension.registry.breakers["cheap"]
    assert breaker.opens == 1
    # tripped at 4 s; waits 2, 4, then 5 s (the cooldown) each: one probe per backoff step
    assert probes == [8.0, 12.0, 20.0, 28.0, 36.0, 44.0, 52.0]
    recovered = clock.now - 2.0  # just after a failed probe: the worst moment to recover
    first.set_default(None)
    while chat(url, model="cheap").headers["x-routegate-model"] != "cheap":
        clock.now += 4.0
        assert clock.now - recovered <= 10.0, "the recovered primary is still skipped"
    assert breaker.state(clock.now) == "closed" and breaker.reason == "probe succeeded"


def test_a_retried_5xx_is_one_breaker_verdict_and_counts_in_the_windows(
        clocked: tuple[FakeProvider, FakeProvider, str, AdaptiveExtension, Clock]) -> None:
    first, _, url, extension, clock = clocked
    first.inject(Fault.status(500))  # one-off: the retry answers, the breaker never saw it
    assert chat(url, model="cheap").headers["x-routegate-model"] == "cheap"
    breaker = extension.registry.breakers["cheap"]
    assert breaker.consecutive == 0
    first.set_default(Fault.status(500))  # persistent: two attempts, one failure verdict
    assert chat(url, model="cheap").headers["x-routegate-model"] == "mid"
    assert len(first.requests) == 4 and breaker.consecutive == 1
    assert breaker.state(clock.now) == "closed"  # consecutive_failures = 2 requests, not attempts
    clock.now += 1.0
    stats = extension.registry.models["cheap"].stats("1m", clock.now)
    assert stats.failures == 3 and stats.requests == 4
    assert chat(url, model="cheap").headers["x-routegate-model"] == "mid"
    assert breaker.state(clock.now) == "open"


def test_a_reload_that_shortens_the_cooldown_applies_to_an_open_breaker() -> None:
    breaker = Breaker(BreakerConfig(consecutive_failures=1, cooldown_s=60.0,
                                    probe_backoff_initial_s=60.0))
    breaker.record(0.0, False, Window(60.0, 12))
    assert breaker.state(10.0) == "open"
    breaker.config = BreakerConfig(consecutive_failures=1, cooldown_s=5.0)
    assert breaker.state(5.0) == "half_open" and breaker.next_probe_at == 5.0
