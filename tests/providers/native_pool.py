"""A small pool over native-format fake providers, shared by the tests in this folder."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import GatewayConfig, parse_config
from routegate.middleware.contracts import AttemptInfo, RequestContext, RequestOutcome
from tests.conftest import FAST_TIMEOUTS, running_gateway

Kind = Literal["openai", "anthropic", "gemini"]
_SUFFIX = {"openai": "/v1", "anthropic": "", "gemini": "/v1beta"}


def native_config(providers: dict[str, tuple[Kind, str]], models: dict[str, dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> GatewayConfig:
    """``providers`` maps a name to (wire format, fake base URL)."""
    raw: dict[str, Any] = {
        "server": {"request_timeout_s": 10.0},
        "retry": {"max_attempts": 4, "backoff_base_s": 0.001, "backoff_max_s": 0.01,
                  "retry_after_cap_s": 1.0},
        "providers": {name: {"type": kind, "base_url": url + _SUFFIX[kind],
                             "api_key_env": "ROUTEGATE_TEST_PROVIDER_KEY",
                             "timeouts": FAST_TIMEOUTS}
                      for name, (kind, url) in providers.items()},
        "models": models,
        "routes": {"chat": {"min_capability": 0.7}},
    }
    raw.update(extra or {})
    return parse_config(raw)


def model(provider: str, upstream: str, context_window: int = 8192,
          fallbacks: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"provider": provider, "upstream": upstream, "context_window": context_window,
            "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0,
            "capabilities": {"chat": 0.9}, "fallbacks": list(fallbacks)}


@contextmanager
def two_kinds(first: Kind, second: Kind, *, first_reply: str = "Hello from the fake provider.",
              second_reply: str = "From B.", chunks: int = 5,
              extra: dict[str, Any] | None = None) -> Iterator[tuple[FakeProvider, FakeProvider, str]]:
    """``primary`` on a ``first``-format fake, falling back to ``backup`` (16k context) and then
    ``big`` (128k) on a ``second``-format fake. Yields (fake A, fake B, gateway URL)."""
    a = FakeProvider(kind=first, reply_text=first_reply, chunks=chunks)
    b = FakeProvider(kind=second, reply_text=second_reply, chunks=chunks)
    with serve_in_thread(a) as url_a, serve_in_thread(b) as url_b:
        config = native_config(
            {"a": (first, url_a), "b": (second, url_b)},
            {"primary": model("a", "primary-up", 4096, ("backup",)),
             "backup": model("b", "backup-up", 16384, ("big",)),
             "big": model("b", "big-up", 131072)},
            extra)
        with running_gateway(config) as url:
            yield a, b, url


class Recorder:
    """An observer that hands the finished request's context to the test thread."""

    def __init__(self) -> None:
        self.contexts: list[RequestContext] = []
        self.done = threading.Event()

    def on_request(self, ctx: RequestContext) -> None: ...
    def on_classified(self, ctx: RequestContext) -> None: ...
    def on_attempt_start(self, ctx: RequestContext, attempt: AttemptInfo,
                         request: httpx.Request) -> None: ...
    def on_attempt_end(self, ctx: RequestContext, attempt: AttemptInfo) -> None: ...

    def on_request_end(self, ctx: RequestContext, outcome: RequestOutcome) -> None:
        ctx.state["outcome"] = outcome
        self.contexts.append(ctx)
        self.done.set()

    def last(self) -> RequestContext:
        assert self.done.wait(5.0)
        self.done.clear()
        return self.contexts[-1]
