"""Health windows and breakers are plain objects driven by an injected clock: no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from routegate.middleware.config import BreakerConfig, parse_config
from routegate.middleware.operations.model_health import Breaker, HealthRegistry, Sample, Window
from tests.adaptive.adaptive_helpers import Clock


def test_counts_rates_and_percentiles_within_one_bin() -> None:
    window = Window(60.0, 12)
    for i in range(100):  # latencies 0.01 .. 1.00 s
        window.add(10.0, Sample(ok=i % 10 != 0, latency_s=(i + 1) / 100, ttft_s=0.05,
                                output_tokens=10, generation_s=0.5, cost_usd=0.001))
    stats = window.stats(10.0)
    assert stats.requests == 100 and stats.failures == 10 and stats.successes == 90
    assert stats.error_rate == pytest.approx(0.1)
    for value, exact in ((stats.latency_p50_s, 0.50), (stats.latency_p95_s, 0.95),
                         (stats.latency_p99_s, 0.99)):
        assert value is not None and exact <= value <= exact * 1.2 + 1e-9
    assert stats.ttft_p95_s is not None and 0.05 <= stats.ttft_p95_s <= 0.06
    assert stats.output_tokens_per_s == pytest.approx(20.0)
    assert stats.cost_per_request_usd == pytest.approx(0.001)
    assert stats.cost_usd_total == pytest.approx(0.1)


def test_old_buckets_slide_out_one_at_a_time() -> None:
    window = Window(60.0, 12)  # 5 s buckets
    window.add(0.0, Sample(ok=False, latency_s=9.0))
    window.add(30.0, Sample(ok=True, latency_s=0.1))
    assert window.stats(59.9).requests == 2
    after = window.stats(60.0)  # the bucket [0, 5) left the window
    assert after.requests == 1 and after.failures == 0
    assert after.latency_p99_s is not None and after.latency_p99_s < 0.2
    assert window.stats(90.0).requests == 0
    assert window.stats(90.0).error_rate is None and window.stats(90.0).latency_p50_s is None


def test_a_long_silence_clears_everything_and_the_window_keeps_working() -> None:
    window = Window(10.0, 5)
    for t in range(10):
        window.add(float(t), Sample(ok=True, latency_s=0.2))
    assert window.stats(9.0).requests == 10
    window.add(1e6, Sample(ok=False))
    stats = window.stats(1e6)
    assert stats.requests == 1 and stats.failures == 1 and stats.latency_p50_s is None


def test_quality_is_per_model_and_category() -> None:
    config = parse_config({"providers": {"p": {"type": "openai", "base_url": "http://x/v1"}},
                           "models": {"m": {"provider": "p"}}})
    clock = Clock()
    registry = HealthRegistry(config, clock)
    for score in (1.0, 0.0, 1.0, 1.0):
        assert registry.record_quality("m", "code", score)
    assert not registry.record_quality("nope", "code", 1.0)
    tracker = registry.models["m"]
    code = tracker.quality["code"].stats(clock.now)
    assert code.quality == pytest.approx(0.75) and code.quality_samples == 4
    assert "chat" not in tracker.quality
    assert tracker.stats("1h", clock.now).quality == pytest.approx(0.75)


def test_breaker_opens_on_consecutive_failures_probes_once_and_closes() -> None:
    breaker = Breaker(BreakerConfig(consecutive_failures=3, cooldown_s=10.0,
                                    probe_backoff_initial_s=10.0))
    window = Window(60.0, 12)
    for t in range(2):
        breaker.record(float(t), False, window)
    assert breaker.state(2.0) == "closed"
    breaker.record(2.0, False, window)
    assert breaker.state(2.0) == "open" and breaker.opens == 1
    assert "3 consecutive" in breaker.reason
    assert breaker.state(11.9) == "open" and not breaker.can_probe(11.9)
    assert breaker.state(12.0) == "half_open" and breaker.can_probe(12.0)
    breaker.claim_probe("req-1")
    assert not breaker.can_probe(12.5)  # a single probe at a time
    breaker.record(13.0, False, window, "req-1")  # the probe failed: wait again
    assert breaker.state(13.0) == "open" and breaker.probe_owner is None
    assert breaker.state(23.0) == "half_open"
    breaker.claim_probe("req-2")
    breaker.release_probe("someone-else")
    assert breaker.probe_owner == "req-2"
    breaker.record(23.5, True, window)
    assert breaker.state(23.5) == "closed" and breaker.consecutive == 0


def test_breaker_opens_on_failure_rate_over_min_requests() -> None:
    breaker = Breaker(BreakerConfig(consecutive_failures=100, failure_rate=0.5, min_requests=6))
    window = Window(60.0, 12)
    outcomes = [True, False, True, False, False]  # 3 of 5: not enough requests yet
    for ok in outcomes:
        window.add(1.0, Sample(ok=ok))
        breaker.record(1.0, ok, window)
    assert breaker.state(1.0) == "closed"
    window.add(1.0, Sample(ok=True))
    breaker.record(1.0, True, window)
    window.add(1.0, Sample(ok=False))
    breaker.record(1.0, False, window)  # 4 of 7 failed
    assert breaker.state(1.0) == "open" and "failure rate" in breaker.reason


def test_registry_feeds_breakers_and_providers_and_keeps_history_on_reconfigure() -> None:
    raw: dict[str, Any] = {"providers": {"p": {"type": "openai", "base_url": "http://x/v1"}},
           "models": {"m": {"provider": "p", "breaker": {"consecutive_failures": 2,
                                                         "cooldown_s": 60,
                                                         "probe_backoff_initial_s": 60}}},
           "adaptive": {"decision_window_s": 10}}
    clock = Clock()
    registry = HealthRegistry(parse_config(raw), clock)
    registry.record("m", "p", Sample(ok=False))
    registry.record("m", "p", Sample(ok=None))  # the client's fault: no verdict
    assert registry.breakers["m"].state(clock.now) == "closed"
    registry.record("m", "p", Sample(ok=False))
    assert registry.breakers["m"].state(clock.now) == "open"
    assert registry.providers["p"].stats("1m", clock.now).failures == 2
    clock.now += 5
    assert registry.models["m"].decision_stats(clock.now).requests == 2
    clock.now += 6  # past the 10 s decision window
    assert registry.models["m"].decision_stats(clock.now).requests == 0
    assert registry.models["m"].stats("1m", clock.now).requests == 2
    raw["models"]["n"] = {"provider": "p"}
    registry.configure(parse_config(raw))
    assert registry.models["m"].stats("1m", clock.now).requests == 2
    assert registry.breakers["m"].state(clock.now) == "open" and "n" in registry.breakers
