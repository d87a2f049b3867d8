"""The generative stage in a running gateway: [classifier] llm_* keys reach the sidecar, the
stage answers, and /admin/reload teaches it the new routes (SmolLM2-135M on CPU)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import create_app
from routegate.sidecar.local_llm import default_model_path
from tests.adaptive.adaptive_helpers import admin
from tests.adaptive.test_admin_api import toml_for

CLASSIFIER = f"""
[classifier]
mode = "sidecar"
budget_ms = 10000
startup_wait_s = 240
llm_model_path = "{default_model_path()}"
llm_mode = "always"
"""
BILLING = """
[routes.billing]
description = "Payments, invoices, refunds and charges on an account."
examples = ["I was charged twice for my subscription this month"]
"""
TEXT = "I was charged twice for my subscription, I want a refund"


def _explain(url: str) -> dict[str, object]:
    body = {"model": "auto", "messages": [{"role": "user", "content": TEXT}]}
    answer: dict[str, object] = admin(url, "POST", "/admin/explain", body).json()
    classification = answer["classification"]
    assert isinstance(classification, dict)
    return classification


def _wait_ready(url: str) -> dict[str, object]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # reload re-teaches the sidecar in the background
        status: dict[str, object] = httpx.get(url + "/readyz", timeout=10).json()["classifier"]
        if status["ready"]:
            return status
        time.sleep(0.2)
    raise AssertionError("the classifier did not become ready")


def test_llm_stage_in_the_gateway_follows_reload(tmp_path: Path) -> None:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url:
        path = tmp_path / "gateway.toml"
        path.write_text(toml_for(fake_url, extra=CLASSIFIER))
        with serve_in_thread(create_app(config_path=path), lifespan="on",
                             startup_timeout=300) as url:
            status = _wait_ready(url)
            assert status["llm_model"]
            before = _explain(url)
            assert before["method"] == "llm" and before["category"] == "chat"  # only route
            path.write_text(toml_for(fake_url, extra=CLASSIFIER + BILLING))
            assert admin(url, "POST", "/admin/reload").status_code == 200
            # The sidecar learns the routes in the background; until then the fast stages
            # answer. Only a stage that learnt the new route list can answer "billing".
            deadline = time.monotonic() + 240
            after = _explain(url)
            while (after["method"], after["category"]) != ("llm", "billing") \
                    and time.monotonic() < deadline:
                _wait_ready(url)
                after = _explain(url)
            assert after["method"] == "llm" and after["category"] == "billing"
