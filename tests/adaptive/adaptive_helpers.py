"""Shared by the adaptive-routing tests: an admin token in the environment, small clients."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx

TOKEN_ENV = "ROUTEGATE_TEST_ADMIN_TOKEN"
TOKEN = "admin-test-token-7f3a"
os.environ.setdefault(TOKEN_ENV, TOKEN)
ADMIN = {"token_env": TOKEN_ENV}
HELLO = [{"role": "user", "content": "Hello there"}]


class Clock:
    """An injected monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def admin(url: str, method: str, path: str, body: Any = None,
          token: str | None = TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.request(method, url + path, json=body, headers=headers, timeout=10.0)


def chat(url: str, model: str = "auto", *, stream: bool = False,
         headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=15.0, headers=headers or {},
                      json={"model": model, "messages": HELLO, "stream": stream, **extra})


def eventually(condition: Callable[[], bool], timeout: float = 10.0,
               step: float = 0.05) -> float:
    """Poll ``condition`` until true; returns the seconds it took (fails after ``timeout``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start
