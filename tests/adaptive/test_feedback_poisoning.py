"""Issue 11 items 3 and 6c: feedback cannot poison routing for others. Only the client that made a
request (or the admin token) scores it, one vote per request (a later one replaces it), a
per-client rate limit, and request IDs are scoped per client with trace IDs apart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware.config import parse_config
from routegate.middleware.contracts import RequestContext, RequestOutcome
from routegate.middleware.operations.budgets import hash_key
from routegate.middleware.operations.feedback import FeedbackStore
from routegate.middleware.operations.model_health import HealthRegistry
from tests.adaptive.adaptive_helpers import ADMIN, TOKEN, admin, chat
from tests.conftest import pool_config, running_gateway

ALICE, BOB = "sk-client-alice", "sk-client-bob"
# cheap (0.8 for chat) is the default answer; mid costs 10x: demoting cheap moves traffic there
MODELS: dict[str, dict[str, Any]] = {
    "cheap": {"provider": "fake", "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2,
              "capabilities": {"chat": 0.8}},
    "mid": {"provider": "fake", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0,
            "capabilities": {"chat": 0.9}}}


def _served(feedback_per_minute: int | None = None) -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url:
        extra: dict[str, Any] = {"admin": ADMIN,
                                 "clients": {"alice": {"key_sha256": hash_key(ALICE)},
                                             "bob": {"key_sha256": hash_key(BOB)}}}
        if feedback_per_minute is not None:
            extra["adaptive"] = {"feedback_per_minute": feedback_per_minute}
        config = pool_config({"fake": fake_url}, models=MODELS,
                             routes={"chat": {"min_capability": 0.7}}, extra=extra)
        with running_gateway(config) as url:
            yield fake, url


@pytest.fixture
def two_clients() -> Iterator[tuple[FakeProvider, str]]:
    yield from _served()


def _as(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _vote(url: str, key: str, request_id: str, passed: bool, **extra: Any) -> httpx.Response:
    return httpx.post(url + "/v1/feedback", headers=_as(key), timeout=10.0,
                      json={"request_id": request_id, "pass": passed, **extra})


def _quality(url: str, model: str = "cheap") -> dict[str, Any]:
    stats: dict[str, Any] = admin(url, "GET", "/admin/stats").json()["models"][model]["quality"]
    chat_quality: dict[str, Any] = stats.get("chat", {"samples": 0, "score": None})
    return chat_quality


def test_another_clients_votes_cannot_demote_a_model(two_clients: tuple[FakeProvider, str]) -> None:
    """The issue's attack: A sends 15 pass:false for B's request IDs; then 15 for one of its own."""
    _, url = two_clients
    bobs = [chat(url, headers=_as(BOB)) for _ in range(15)]
    assert {r.headers["x-routegate-model"] for r in bobs} == {"cheap"}
    for response in bobs:
        refused = _vote(url, ALICE, response.headers["x-request-id"], False)
        assert refused.status_code == 404  # indistinguishable from an unknown ID
        assert refused.json()["error"]["code"] == "request_not_found"
    own = chat(url, headers=_as(ALICE)).headers["x-request-id"]
    for _ in range(15):
        assert _vote(url, ALICE, own, False).status_code == 200
    assert _quality(url)["samples"] == 1  # distinct requests, not votes
    assert chat(url, headers=_as(BOB)).headers["x-routegate-model"] == "cheap"


def test_a_later_vote_replaces_the_earlier_one(two_clients: tuple[FakeProvider, str]) -> None:
    _, url = two_clients
    first, second = (chat(url, headers=_as(BOB)).headers["x-request-id"] for _ in range(2))
    earlier = _vote(url, BOB, first, False)
    replaced = _vote(url, BOB, first, True)
    assert _quality(url) == {"samples": 1, "score": 1.0}
    assert earlier.json()["replaced"] is False and replaced.json()["replaced"] is True
    assert _vote(url, BOB, second, False).status_code == 200
    assert _quality(url) == {"samples": 2, "score": 0.5}
    by_admin = httpx.post(url + "/v1/feedback", headers=_as(TOKEN),
                          json={"request_id": second, "score": 1.0})
    assert by_admin.status_code == 200 and by_admin.json()["replaced"] is True
    assert _quality(url) == {"samples": 2, "score": 1.0}


def test_a_repeated_request_id_cannot_re_point_another_clients_entry(
        two_clients: tuple[FakeProvider, str]) -> None:
    _, url = two_clients
    headers = {**_as(ALICE), "x-request-id": "shared-id-1"}
    assert chat(url, headers=headers).headers["x-routegate-model"] == "cheap"
    bob = chat(url, model="mid", headers={**_as(BOB), "x-request-id": "shared-id-1"})
    assert bob.headers["x-request-id"] == "shared-id-1"  # kept for the client's correlation
    assert _vote(url, ALICE, "shared-id-1", True).json()["model"] == "cheap"
    assert _vote(url, BOB, "shared-id-1", True).json()["model"] == "mid"
    ambiguous = httpx.post(url + "/v1/feedback", headers=_as(TOKEN),
                           json={"request_id": "shared-id-1", "score": 1.0})
    assert ambiguous.status_code == 400 and ambiguous.json()["error"]["param"] == "client"
    named = httpx.post(url + "/v1/feedback", headers=_as(TOKEN),
                       json={"request_id": "shared-id-1", "score": 1.0, "client": "bob"})
    assert named.status_code == 200 and named.json()["model"] == "mid"


def test_feedback_is_rate_limited_per_client() -> None:
    for _, url in _served(feedback_per_minute=5):
        own = chat(url, headers=_as(ALICE)).headers["x-request-id"]
        codes = [_vote(url, ALICE, own, True).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        limited = _vote(url, ALICE, own, True)
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        bobs = chat(url, headers=_as(BOB)).headers["x-request-id"]
        assert _vote(url, BOB, bobs, True).status_code == 200  # others unaffected
        by_admin = httpx.post(url + "/v1/feedback", headers=_as(TOKEN),
                              json={"request_id": own, "pass": True, "client": "alice"})
        assert by_admin.status_code == 200  # the admin token is not limited


CONFIG = parse_config({"providers": {"p": {"type": "openai", "base_url": "http://x/v1"}},
                       "models": {"m": {"provider": "p"}, "n": {"provider": "p"}}})


def test_a_trace_style_request_id_does_not_collide_with_a_trace_lookup() -> None:
    store = FeedbackStore(HealthRegistry(CONFIG))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = RequestContext(request_id="r-1", path="/v1/chat/completions", headers={},
                            started_at=0.0, category="chat",
                            response_headers=[(b"x-trace-id", trace_id.encode())])
    store.remember(traced, RequestOutcome(200, "success", "m"))
    impostor = RequestContext(request_id="trace:" + trace_id, path="/v1/chat/completions",
                              headers={}, started_at=0.0, category="chat")
    store.remember(impostor, RequestOutcome(200, "success", "n"))
    found = store.lookup(None, trace_id)
    assert found is not None and found.model == "m"
    again = store.lookup("trace:" + trace_id, None)
    assert again is not None and again.model == "n"
