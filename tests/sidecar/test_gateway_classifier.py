"""The gateway with its classifier: the real sidecar process in the request path, and
escalation to a stronger tier when the classifier is unsure."""

from __future__ import annotations

import httpx
from starlette.responses import PlainTextResponse

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import Gateway, RouterMiddleware
from routegate.middleware.contracts import Classification
from tests.conftest import pool_config, running_gateway


def ask(url: str, text: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30.0, json={
        "model": "auto", "messages": [{"role": "user", "content": text}]})


def test_sidecar_mode_classifies_requests_on_the_way(fake_openai: tuple[FakeProvider, str]) -> None:
    fake, fake_url = fake_openai
    config = pool_config({"f": fake_url}, extra={"classifier": {"mode": "sidecar"}})
    with running_gateway(config) as url:
        ready = httpx.get(url + "/readyz").json()
        code = ask(url, "Write a Python function that merges two sorted lists")
        chat = ask(url, "hey, how was your weekend?")
    assert ready["classifier"]["sidecar_alive"] and ready["classifier"]["ready"]
    assert code.headers["x-routegate-category"] == "code"
    assert code.headers["x-routegate-model"] == "mid"  # cheapest with code >= 0.85
    assert chat.headers["x-routegate-category"] == "chat"
    assert chat.headers["x-routegate-model"] == "cheap"
    assert [r.body["model"] for r in fake.requests] == ["mid-up", "cheap-up"]


class FixedClassifier:
    """Answers one category with a chosen confidence (the router's input, not its code)."""

    def __init__(self, confidence: float) -> None:
        self.confidence = confidence

    async def classify(self, text: str) -> Classification:
        return Classification(category="chat", complexity="simple", confidence=self.confidence,
                              method="model", latency_ms=1.0)


def test_low_confidence_escalates_to_a_stronger_model(fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    config = pool_config({"f": fake_url})  # escalate_below 0.5, escalate_min_capability 0.85
    served = {}
    for confidence in (0.9, 0.2):
        gateway = Gateway(config, classifier=FixedClassifier(confidence))
        with serve_in_thread(RouterMiddleware(PlainTextResponse("host"), gateway=gateway),
                             lifespan="off") as url:
            served[confidence] = ask(url, "anything").headers["x-routegate-model"]
    assert served == {0.9: "cheap", 0.2: "mid"}  # chat: cheap 0.8 < 0.85 <= mid 0.9
