"""The pipelined budget connection answers exactly what redis-py answers, in the right order,
through timeouts, lost connections and restarts (a real redis-server, no mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from routegate.middleware.state.pipelined import PipelinedRedis
from tests.redis_harness import RedisServer, running_redis

SCRIPT = "return {KEYS[1], tonumber(ARGV[1]) + 1, redis.call('GET', KEYS[1])}"
COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "k", "v"), ("GET", "k"), ("GET", "missing"), ("INCRBYFLOAT", "f", "0.25"),
    ("HSET", "h", "a", "1", "b", "2"), ("HGETALL", "h"), ("ZADD", "z", "1.5", "m"),
    ("ZRANGE", "z", "0", "-1", "WITHSCORES"), ("EVAL", SCRIPT, "1", "k", "41"),
    ("DEL", "k", "f", "h", "z"),
]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def pipelined(redis_server: RedisServer) -> AsyncIterator[PipelinedRedis]:
    client = PipelinedRedis(redis_server.url, connect_timeout_s=1.0)
    yield client
    client.close()


async def test_answers_what_redis_py_answers(redis_server: RedisServer,
                                             pipelined: PipelinedRedis) -> None:
    library = redis.Redis.from_url(redis_server.url, protocol=2)  # RESP2, as the pipeline speaks
    library.response_callbacks.clear()  # redis-py's replies as parsed, before its conveniences
    try:
        expected = [await library.execute_command(*command)  # type: ignore[no-untyped-call]
                    for command in COMMANDS]
        got = [await pipelined.execute(*command) for command in COMMANDS]
    finally:
        await library.aclose()
    assert got == expected
    assert got[5] == [b"a", b"1", b"b", b"2"] and got[8] == [b"k", 42, b"v"]


async def test_errors_keep_their_kind(pipelined: PipelinedRedis) -> None:
    with pytest.raises(NoScriptError):
        await pipelined.execute("EVALSHA", "0" * 40, "0")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pipelined.execute("SET", "s", "x")
        await pipelined.execute("HGET", "s", "field")
    assert await pipelined.execute("GET", "s") == b"x"  # the connection is still in step


async def test_concurrent_commands_each_get_their_own_reply(pipelined: PipelinedRedis) -> None:
    await asyncio.gather(*(pipelined.execute("SET", f"k{i}", str(i)) for i in range(2000)))
    replies = await asyncio.gather(*(pipelined.execute("GET", f"k{i}") for i in range(2000)))
    assert replies == [str(i).encode() for i in range(2000)]


async def test_a_timed_out_command_does_not_shift_later_replies(
        redis_server: RedisServer, pipelined: PipelinedRedis) -> None:
    await pipelined.execute("SET", "a", "A")
    await pipelined.execute("SET", "b", "B")
    with redis_server.frozen(), pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await pipelined.execute("GET", "a")
    # Redis answers the abandoned GET a first; it must not reach this caller
    assert await pipelined.execute("GET", "b") == b"B"


async def test_lost_connection_fails_waiters_then_reconnects(
        redis_server: RedisServer, pipelined: PipelinedRedis) -> None:
    await pipelined.execute("SET", "a", "A")
    with redis_server.frozen():
        waiting = asyncio.ensure_future(pipelined.execute("GET", "a"))
        await asyncio.sleep(0)  # let it be written
        redis_server.kill()
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(waiting, 10)
    with pytest.raises((RedisConnectionError, OSError)):
        await pipelined.execute("PING")  # refused while it is down
    redis_server.start()
    assert await pipelined.execute("PING") == b"PONG"


async def test_password_and_database_from_the_url() -> None:
    with running_redis(extra_args=("--requirepass", "s3cret")) as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        client = PipelinedRedis(url, connect_timeout_s=1.0)
        library = redis.Redis.from_url(url)
        try:
            await client.execute("SET", "where", "db3")
            assert await library.get("where") == b"db3"
            assert await redis.Redis.from_url(url.replace("/3", "/0")).get("where") is None
            wrong = PipelinedRedis(url.replace("s3cret", "nope"), connect_timeout_s=1.0)
            with pytest.raises(ResponseError):
                await wrong.execute("PING")
            wrong.close()
        finally:
            client.close()
            await library.aclose()
