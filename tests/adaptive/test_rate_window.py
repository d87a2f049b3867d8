"""Issue 11 item 6d: ``requests_per_minute`` is a true sliding minute (the token bucket it replaced
let 59 of 60 evenly spaced requests through at rpm = 30). An injected clock, no sleeping."""

from __future__ import annotations

import pytest

from routegate.middleware.config import parse_config
from routegate.middleware.operations.budgets import ClientLimiter, RateLimited, hash_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(rpm: int, clock: Clock) -> ClientLimiter:
    config = parse_config({"clients": {"c": {"key_sha256": hash_key("k"),
                                             "requests_per_minute": rpm}}})
    return ClientLimiter(config, wall=lambda: 1_700_000_000.0, clock=clock)


def _try(limiter: ClientLimiter) -> bool:
    try:
        limiter.settle(limiter.admit("c", 0.0), 0.0)
    except RateLimited:
        return False
    return True


def test_sixty_evenly_spaced_requests_in_a_minute_pass_thirty_at_rpm_30() -> None:
    clock = Clock()
    limiter = _limiter(30, clock)
    passed = []
    for _ in range(60):
        passed.append(_try(limiter))
        clock.now += 1.0
    assert sum(passed) == 30


def test_no_sixty_second_span_ever_holds_more_than_the_limit() -> None:
    clock = Clock()
    limiter = _limiter(30, clock)
    admitted: list[float] = []
    for step in range(600):  # 5 minutes of bursts and gaps, 0.5 s apart
        clock.now = 1000.0 + step * 0.5
        for _ in range(3 if step % 40 < 5 else 1):
            if _try(limiter):
                admitted.append(clock.now)
    assert max(sum(1 for t in admitted if start <= t < start + 60.0) for start in admitted) == 30
    assert len(admitted) >= 5 * 30 - 30  # and the limit is reached, minute after minute


def test_retry_after_names_when_the_oldest_request_leaves_the_window() -> None:
    clock = Clock()
    limiter = _limiter(2, clock)
    assert _try(limiter)
    clock.now += 10.0
    assert _try(limiter)
    clock.now += 5.0
    with pytest.raises(RateLimited) as refused:
        limiter.admit("c", 0.0)
    assert refused.value.headers["retry-after"] == "45"
    clock.now += 45.0
    assert _try(limiter)
    assert limiter.stats()["c"]["rejected"] == 1
