"""One request/response on an upstream connection, and its body as the consumer reads it.

:class:`routegate.middleware.upstream.http1.Connection`'s parser callbacks fill the
:class:`Exchange` and wake its consumer; :class:`ResponseBody` hands the buffered pieces to
httpx (or reads them whole) and tells the connection when to read on, wait or give up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import httpx

from routegate.middleware.upstream.origins import ResponseTooLarge

__all__ = ["BodySource", "Exchange", "ResponseBody"]


class BodySource(Protocol):
    """What a response body needs of its connection (``http1.Connection``)."""

    max_body: int

    def consumed(self, exchange: Exchange) -> None: ...
    async def wait(self, exchange: Exchange) -> None: ...
    def abandon(self, exchange: Exchange) -> None: ...


class Exchange:
    """One request/response on a connection; outlives the connection's use of it, so a body
    received in full stays readable after the connection went back to the pool."""

    __slots__ = ("buffered", "complete", "encoded", "error", "head_bytes", "headers",
                 "headers_done", "pieces", "reason", "status", "until_eof", "waiter")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.until_eof = False  # neither content-length nor chunked: the body ends with the socket
        self.encoded = False  # a content-encoding header came: httpx must decode the body
        self.pieces: list[bytes] = []
        self.buffered = 0
        self.head_bytes = 0  # bytes received before the head was complete
        self.complete = False
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


class ResponseBody(httpx.AsyncByteStream):
    """The response body, piece by piece as the socket delivers it."""

    def __init__(self, connection: BodySource, exchange: Exchange) -> None:
        self._connection = connection
        self._exchange = exchange

    @property
    def encoded(self) -> bool:
        return self._exchange.encoded

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        connection = self._connection
        while True:
            pieces = exchange.pieces
            if pieces:
                exchange.pieces = []
                connection.consumed(exchange)
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
            elif exchange.complete:
                return
            elif exchange.error is not None:
                raise exchange.error
            else:
                await connection.wait(exchange)

    async def read(self) -> bytes:
        """The whole body, without the async-generator round trips of iterating; raises
        ResponseTooLarge past the origin's ``max_body_bytes``."""
        exchange = self._exchange
        connection = self._connection
        parts: list[bytes] = []
        size = 0
        while True:
            if exchange.pieces:
                size += exchange.buffered
                if size > connection.max_body:
                    await self.aclose()
                    raise ResponseTooLarge(f"response body exceeds {connection.max_body} bytes")
                parts += exchange.pieces
                exchange.pieces = []
                connection.consumed(exchange)
            elif exchange.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            elif exchange.error is not None:
                raise exchange.error
            else:
                await connection.wait(exchange)

    async def aclose(self) -> None:
        exchange = self._exchange
        if not exchange.complete:
            exchange.complete = True
            self._connection.abandon(exchange)
