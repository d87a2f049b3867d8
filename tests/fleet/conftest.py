"""Fixtures of the fleet tests: one real redis-server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_harness import RedisServer, running_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server
