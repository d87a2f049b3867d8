"""The redis-server harness works the way the state-backend tests need it: a real server that
redis-py's asyncio client talks to, killed and restarted on the same port, frozen, and gone
after the block."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.redis_harness import RedisServer, running_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


async def test_set_get_then_kill_and_restart_on_the_same_port(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url, socket_timeout=1.0,
                                     socket_connect_timeout=1.0)
    try:
        assert await client.set("routegate:test", "1", px=60_000)
        assert await client.get("routegate:test") == b"1"
        assert await client.config_get("save") == {"save": ""}  # no persistence
        assert await client.config_get("appendonly") == {"appendonly": "no"}
        port = redis_server.port
        redis_server.kill()
        with pytest.raises(RedisConnectionError):
            await client.get("routegate:test")
        redis_server.start()
        assert redis_server.port == port
        # the client reconnects; the data died with the process (no persistence)
        assert await client.get("routegate:test") is None
        assert await client.incr("routegate:n") == 1
    finally:
        await client.aclose()


async def test_frozen_server_times_commands_out_then_answers_again(
        redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url, socket_timeout=0.2)
    try:
        assert await client.ping()
        with redis_server.frozen(), pytest.raises(RedisTimeoutError):
            await client.ping()
        await client.aclose()  # the timed-out connection may hold a half-read reply
        client = aioredis.Redis.from_url(redis_server.url, socket_timeout=1.0)
        assert await asyncio.wait_for(client.ping(), 2.0)
    finally:
        await client.aclose()


def test_server_is_gone_after_the_block_and_its_dir_removed() -> None:
    with running_redis() as server:
        assert server.process is not None
        pid, workdir = server.process.pid, server.workdir
        assert server.running and workdir.is_dir()
    assert not server.running and not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_stop_handles_a_frozen_server() -> None:
    with running_redis() as server:
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        server.stop()  # SIGTERM + SIGCONT: exits without waiting for the SIGKILL fallback
        assert not server.running


@pytest.mark.parametrize(("ci", "outcome"), [("", pytest.skip.Exception),
                                             ("true", pytest.fail.Exception)])
def test_without_redis_server_skips_but_fails_in_ci(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str,
        outcome: type[BaseException]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="redis-server is not installed"), running_redis():
        pass
