"""Shared fixtures: fake providers and the gateway, each a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import GatewayConfig, create_app, parse_config
from routegate.middleware.standalone.http_protocol import protocol_class

# Fake providers demand a key like the real ones; the gateway reads it from this variable.
os.environ.setdefault("ROUTEGATE_TEST_PROVIDER_KEY", "sk-test-provider-secret")
FAST_TIMEOUTS = {"connect_s": 1.0, "first_token_s": 1.0, "idle_s": 1.0, "total_s": 5.0}
FAST_RETRY: dict[str, Any] = {"max_attempts": 4, "backoff_base_s": 0.001, "backoff_max_s": 0.01,
                              "retry_after_cap_s": 1.0}
# a 5xx falls back at once (tests of the fallback itself, not of the same-model retry)
NO_5XX_RETRY: dict[str, Any] = {**FAST_RETRY, "same_model_5xx": 0}


def pool_config(urls: dict[str, str], *,
                extra: dict[str, Any] | None = None,
                models: dict[str, dict[str, Any]] | None = None,
                routes: dict[str, dict[str, Any]] | None = None,
                timeouts: dict[str, float] | None = None) -> GatewayConfig:
    """A small pool over fake providers: cheap -> mid -> big, all capable of everything.

    ``urls`` maps provider name to the fake's base URL (without /v1).
    """
    return parse_config(pool_raw(urls, extra=extra, models=models, routes=routes,
                                 timeouts=timeouts))


def pool_raw(urls: dict[str, str], *,
             extra: dict[str, Any] | None = None,
             models: dict[str, dict[str, Any]] | None = None,
             routes: dict[str, dict[str, Any]] | None = None,
             timeouts: dict[str, float] | None = None) -> dict[str, Any]:
    """:func:`pool_config`'s gateway.toml as a dict (for a config file)."""
    providers = {name: {"type": "openai", "base_url": url + "/v1",
                        "api_key_env": "ROUTEGATE_TEST_PROVIDER_KEY",
                        "timeouts": timeouts or FAST_TIMEOUTS}
                 for name, url in urls.items()}
    first = next(iter(urls))
    default_models: dict[str, dict[str, Any]] = {
        "cheap": {"provider": first, "upstream": "cheap-up", "input_usd_per_mtok": 0.1,
                  "output_usd_per_mtok": 0.2, "context_window": 4096,
                  "capabilities": {"chat": 0.8, "code": 0.5}, "fallbacks": ["mid"]},
        "mid": {"provider": list(urls)[-1], "upstream": "mid-up", "input_usd_per_mtok": 1.0,
                "output_usd_per_mtok": 2.0, "context_window": 16384,
                "capabilities": {"chat": 0.9, "code": 0.9}, "fallbacks": ["big"]},
        "big": {"provider": list(urls)[-1], "upstream": "big-up", "input_usd_per_mtok": 5.0,
                "output_usd_per_mtok": 10.0, "context_window": 131072,
                "capabilities": {"chat": 0.95, "code": 0.95}},
    }
    raw: dict[str, Any] = {
        "server": {"request_timeout_s": 10.0},
        "retry": FAST_RETRY,
        "providers": providers,
        "models": models or default_models,
        "routes": routes or {"chat": {"min_capability": 0.7}, "code": {"min_capability": 0.85}},
    }
    for key, value in (extra or {}).items():
        raw[key] = value
    return raw


def answer_text(response: httpx.Response) -> str:
    """The assistant text of a JSON or SSE chat-completions response."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return str(response.json()["choices"][0]["message"]["content"])
    text = ""
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


@contextmanager
def running_gateway(config: GatewayConfig) -> Iterator[str]:
    """The standalone gateway app on a real server (with the HTTP protocol ``routegate serve``
    uses); yields its base URL. Startup may wait ``classifier.startup_wait_s`` for the sidecar
    (then degrades), so the server gets that long and 10 s more to come up."""
    with serve_in_thread(create_app(config), lifespan="on", http=protocol_class(config.server),
                         startup_timeout=config.classifier.startup_wait_s + 10.0) as url:
        yield url


@pytest.fixture
def fake_openai() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as url:
        yield fake, url


@pytest.fixture
def gateway(fake_openai: tuple[FakeProvider, str]) -> Iterator[tuple[FakeProvider, str]]:
    """Gateway over one fake OpenAI provider; yields (fake, gateway base URL)."""
    fake, url = fake_openai
    with running_gateway(pool_config({"fake": url})) as gateway_url:
        yield fake, gateway_url
