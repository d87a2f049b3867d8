"""Live traffic shifting and breakers against fake providers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from tests.adaptive.adaptive_helpers import ADMIN, HELLO, admin, chat, eventually
from tests.conftest import pool_config, running_gateway


def gateway_for(adaptive: dict[str, Any]) -> Any:
    @pytest.fixture
    def fixture() -> Iterator[tuple[FakeProvider, FakeProvider, str]]:
        """cheap on provider A; mid and big on provider B."""
        first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="B")
        with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
            config = pool_config({"a": url_a, "b": url_b},
                                 extra={"adaptive": adaptive, "admin": ADMIN})
            with running_gateway(config) as url:
                yield first, second, url
    return fixture


degrading = gateway_for({
    "decision_window_s": 8.0,  # wide enough that a slow, shared CI box keeps the samples
    "slo": {"max_error_rate": 0.25, "latency_p95_s": 0.15, "min_requests": 3},
    "breaker": {"consecutive_failures": 100, "min_requests": 1000},
})
breaking = gateway_for({"breaker": {"consecutive_failures": 2, "cooldown_s": 2.0}})


def test_degrading_provider_loses_its_traffic_and_regains_it_after_recovery(
        degrading: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, _, url = degrading
    first.set_default(Fault.slow_chunks(0.3))  # latency climbs over the 150 ms SLO ...
    first.inject(Fault.status(503), times=2)  # ... and errors rise
    served_by: list[str] = []
    for _ in range(14):
        response = chat(url)
        assert response.status_code == 200, response.text
        served_by.append(response.headers["x-routegate-model"])
    tried_a = len(first.requests)
    # min_requests (3) judge it; routing reads folded ticks, so allow one tick of lag
    assert tried_a <= 6, f"cheap kept traffic for {tried_a} requests: {served_by}"
    assert served_by[-6:] == ["mid"] * 6
    plan = admin(url, "GET", "/admin/stats").json()["categories"]["chat"]["plan"]
    cheap = next(c for c in plan if c["model"] == "cheap")
    assert cheap["weight"] < 1 and any("latency p95" in r or "error rate" in r
                                       for r in cheap["reasons"])
    assert [c["model"] for c in plan][-1] == "cheap"

    first.set_default(None)  # the provider recovers; its bad samples slide out of the window
    took = eventually(lambda: chat(url).headers["x-routegate-model"] == "cheap",
                      timeout=30.0, step=0.25)
    assert took < 30.0
    assert chat(url).headers["x-routegate-model"] == "cheap"


def test_breaker_opens_skips_probes_once_and_closes(
        breaking: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, _, url = breaking
    first.set_default(Fault.status(503))
    for _ in range(2):
        assert chat(url, model="cheap").headers["x-routegate-model"] == "mid"
    stats = admin(url, "GET", "/admin/stats").json()["models"]["cheap"]
    assert stats["breaker"]["state"] == "open" and stats["breaker"]["opens"] == 1
    before = len(first.requests)
    for _ in range(3):  # open: skipped without a call
        assert chat(url, model="cheap").headers["x-routegate-model"] == "mid"
    assert len(first.requests) == before

    first.set_default(None)
    eventually(lambda: admin(url, "GET", "/admin/stats").json()["models"]["cheap"]["breaker"]
               ["state"] == "half_open", timeout=8.0)
    response = chat(url, model="cheap")  # the single probe, live
    assert response.headers["x-routegate-model"] == "cheap"
    assert len(first.requests) == before + 1
    breaker = admin(url, "GET", "/admin/stats").json()["models"]["cheap"]["breaker"]
    assert breaker["state"] == "closed" and breaker["reason"] == "probe succeeded"


def test_failed_probe_reopens_the_breaker(breaking: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, _, url = breaking
    first.set_default(Fault.status(503))
    for _ in range(2):
        chat(url, model="cheap")
    eventually(lambda: admin(url, "GET", "/admin/stats").json()["models"]["cheap"]["breaker"]
               ["state"] == "half_open", timeout=8.0)
    before = len(first.requests)
    assert chat(url, model="cheap").headers["x-routegate-model"] == "mid"
    assert len(first.requests) == before + 1
    breaker = admin(url, "GET", "/admin/stats").json()["models"]["cheap"]["breaker"]
    assert breaker["state"] == "open" and breaker["reason"] == "probe failed"
    assert breaker["probes_failed"] == 1 and 0 <= breaker["next_probe_in_s"] <= 2.0


async def _together(url: str, n: int) -> list[str]:
    async with httpx.AsyncClient(timeout=15.0) as client:
        body = {"model": "cheap", "messages": HELLO}
        responses = await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=body)
                                           for _ in range(n)))
    return [r.headers["x-routegate-model"] for r in responses]


def test_half_open_lets_exactly_one_of_many_concurrent_requests_probe(
        breaking: tuple[FakeProvider, FakeProvider, str]) -> None:
    first, _, url = breaking
    first.set_default(Fault.status(503))
    for _ in range(2):
        chat(url, model="cheap")
    eventually(lambda: admin(url, "GET", "/admin/stats").json()["models"]["cheap"]["breaker"]
               ["state"] == "half_open", timeout=8.0)
    before = len(first.requests)
    first.set_default(Fault.slow_chunks(0.3))  # healthy but slow: the probe stays in flight
    served = asyncio.run(_together(url, 10))
    assert len(first.requests) == before + 1
    assert served.count("cheap") == 1 and served.count("mid") == 9
    assert admin(url, "GET", "/admin/stats").json()["models"]["cheap"]["breaker"][
        "state"] == "closed"
