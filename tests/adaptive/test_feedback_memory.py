"""The feedback memory: request IDs -> the model that answered, bounded, oldest forgotten."""

from __future__ import annotations

from routegate.middleware.config import parse_config
from routegate.middleware.contracts import RequestContext, RequestOutcome
from routegate.middleware.operations.feedback import FeedbackStore
from routegate.middleware.operations.model_health import HealthRegistry

CONFIG = parse_config({"providers": {"p": {"type": "openai", "base_url": "http://x/v1"}},
                       "models": {"m": {"provider": "p"}, "n": {"provider": "p"}}})


def _answer(store: FeedbackStore, request_id: str, model: str = "m") -> None:
    ctx = RequestContext(request_id=request_id, path="/v1/chat/completions", headers={},
                         started_at=0.0, category="code")
    store.remember(ctx, RequestOutcome(200, "success", model))


def test_the_oldest_ids_are_forgotten_past_capacity() -> None:
    store = FeedbackStore(HealthRegistry(CONFIG), capacity=3)
    for request_id in ("a", "b", "c", "d", "e"):
        _answer(store, request_id)
    assert [store.lookup(i, None) is not None for i in "abcde"] == [False, False, True, True, True]
    found = store.lookup("e", None)
    assert found is not None and (found.model, found.category) == ("m", "code")


def test_a_reused_request_id_is_young_again_and_names_its_latest_model() -> None:
    store = FeedbackStore(HealthRegistry(CONFIG), capacity=3)
    for request_id in ("a", "b", "c"):
        _answer(store, request_id)
    _answer(store, "a", model="n")  # a client reusing its x-request-id
    _answer(store, "d")  # forgets the oldest: now "b"
    assert store.lookup("b", None) is None
    again = store.lookup("a", None)
    assert again is not None and again.model == "n"


def test_after_many_evictions_exactly_the_newest_ids_are_held() -> None:
    store = FeedbackStore(HealthRegistry(CONFIG), capacity=1000)
    for n in range(4000):
        _answer(store, f"id-{n}")
    assert store.lookup("id-2999", None) is None and store.lookup("id-3000", None) is not None
    assert store.lookup("id-3999", None) is not None
