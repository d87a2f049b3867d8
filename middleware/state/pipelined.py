"""One Redis connection that pipelines every command of the budget hot path.

Why not redis-py here: redis-py gives each command a pooled connection of its own, one write
and one wake-up per reply; a gateway with a budgeted client key runs one command per request,
and that cost ~110 CPU-µs per request (bench/state_bench.py, same run). Here every command
issued in one event-loop iteration goes out in one write, and replies are matched to waiters
in order (Redis answers a connection's commands in the order it got them), parsed by hiredis,
the C parser redis-py itself uses. Everything off the hot path (pub/sub, the flush pipeline,
admin reads) stays on redis-py.

A waiter that times out stays in the queue, so the reply meant for it is consumed and dropped
when it comes, and the next reply still goes to the right waiter. A lost connection fails
every waiter at once; the next command connects again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["PipelinedRedis"]


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._pending: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def open(self) -> bool:
        return self._transport is not None and not self.lost.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError("connection to Redis lost")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        reader, waiters = self._reader, self._waiters
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not waiters:  # a reply nobody asked for: the stream is out of step
                assert self._transport is not None
                self._transport.close()
                return
            waiter = waiters.popleft()
            if waiter.done():  # its caller timed out: this reply was its
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                error = NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)
                waiter.set_exception(error)
            else:
                waiter.set_result(reply)

    def send(self, args: tuple[str | bytes, ...]) -> asyncio.Future[Any]:
        if not self._pending:  # first command of this loop iteration: write them all after it
            asyncio.get_running_loop().call_soon(self._write)
        self._pending.append(hiredis.pack_command(args))  # type: ignore[arg-type]
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def _write(self) -> None:
        pending, self._pending = self._pending, []
        if self._transport is not None and not self.lost.done():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class PipelinedRedis:
    """``await execute(*args)`` on one pipelined connection to ``url`` (redis:// or
    rediss://, with user, password and db). The caller bounds each call's time."""

    def __init__(self, url: str, connect_timeout_s: float) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._tls = parts.scheme == "rediss"
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._db = int(parts.path.lstrip("/") or 0)
        self._connect_timeout_s = connect_timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def execute(self, *args: str | bytes) -> Any:
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connect()
        return await connection.send(args)

    async def _connect(self) -> _Connection:
        if self._connecting is None:  # one connect for every caller that finds it closed
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if self._tls else None
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    _Connection, self._host, self._port, ssl=context)
                if self._password is not None:
                    auth = ((self._username, self._password) if self._username
                            else (self._password,))
                    await connection.send(("AUTH", *auth))
                if self._db:
                    await connection.send(("SELECT", str(self._db)))
        except BaseException as exc:
            if connection is not None:
                connection.close()
            if isinstance(exc, TimeoutError):
                raise RedisConnectionError("connecting to Redis timed out") from None
            raise
        self._connection = connection
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
