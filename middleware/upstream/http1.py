"""One HTTP/1.1 client connection: an ``asyncio.Protocol`` with ``httptools`` parsing the
responses into the exchange it carries (:mod:`routegate.middleware.upstream.exchange`).
:mod:`routegate.middleware.upstream.transport` pools these connections behind the httpx API.

A connection has at most one exchange at a time. Parser callbacks fill the exchange and wake
its consumer; a read timeout is one lazy timer per exchange. A response that completes with
keep-alive on both sides hands the connection back to its pool; anything else closes it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools
import httpx

from routegate.middleware.upstream.exchange import Exchange
from routegate.middleware.upstream.origins import OriginOptions, ResponseTooLarge

__all__ = ["Connection", "ConnectionOwner", "RetryElsewhere"]


class ConnectionOwner(Protocol):
    """What a connection needs of the pool that opened it (``transport.ConnectionPool``)."""

    loop: asyncio.AbstractEventLoop
    options: OriginOptions

    def release(self, connection: Connection) -> None: ...
    def discard(self, connection: Connection) -> None: ...

_HIGH_WATER = 256 * 1024  # unread body bytes at which the socket stops being read


class RetryElsewhere(Exception):
    """The connection was found closed before any byte of the request was written: the
    request can go out on another connection without the provider ever having seen it."""

    def __init__(self, cause: httpx.TransportError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; parser callbacks feed the current exchange."""

    def __init__(self, pool: ConnectionOwner) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        options = pool.options
        self._max_head = options.max_header_bytes
        self._max_headers = options.max_headers
        self.max_body = options.max_body_bytes
        self.closed = False
        self.counted = False  # holds a slot in the pool's size
        self.idle_since = 0.0
        self._exchange: Exchange | None = None
        self._release = False
        self._reading_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_timeout: float | None = None
        self._activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._expects_body = True

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:  # nothing asked for: a server talking out of turn
            self.close()
            return
        if self._timer is not None:
            self._activity = self._loop.time()
        try:
            self._parser.feed_data(data)
            if not exchange.headers_done:  # every byte so far belongs to the head
                exchange.head_bytes += len(data)
                if exchange.head_bytes > self._max_head:
                    raise ResponseTooLarge(f"response head exceeds {self._max_head} bytes")
        except (httptools.HttpParserError, ResponseTooLarge) as exc:
            cause = exc if isinstance(exc, ResponseTooLarge) else exc.__context__  # callbacks'
            self._fail(cause if isinstance(cause, ResponseTooLarge)
                       else httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()
            return
        if exchange.pieces:
            if (exchange.buffered >= _HIGH_WATER and not exchange.complete
                    and not self._reading_paused and self.transport):
                self._reading_paused = True
                self.transport.pause_reading()
            exchange.wake()
        if self._release:
            self._release = False
            self._finish()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.complete and exchange.error is None:
            if exchange.headers_done and exchange.until_eof and exc is None:
                exchange.complete = True
                exchange.wake()
            elif exc is not None and not isinstance(exc, httpx.TransportError):
                self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
            elif not exchange.headers_done:
                self._fail(httpx.RemoteProtocolError(
                    "Server disconnected without sending a response."))
            else:
                self._fail(httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"))
        self._wake_writer()
        self._mark_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        if self._exchange is not None:
            self._exchange.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.headers.append((name, value))
            if len(exchange.headers) > self._max_headers:  # raising stops the parser
                raise ResponseTooLarge(f"response has more than {self._max_headers} headers")

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        exchange.status = self._parser.get_status_code()
        if exchange.status < 200:  # 1xx interim answer: the real one follows
            exchange.headers.clear()
            return
        exchange.headers_done = True
        framed = False
        size = 0
        for name, value in exchange.headers:
            size += len(name) + len(value) + 4
            lowered = name.lower()
            if lowered == b"content-length" or (lowered == b"transfer-encoding"
                                                and b"chunked" in value.lower()):
                framed = True
            elif lowered == b"content-encoding":
                exchange.encoded = True
        if size > self._max_head:  # head and body came in one read: counted here instead
            raise ResponseTooLarge(f"response head exceeds {self._max_head} bytes")
        exchange.until_eof = (not framed and self._expects_body
                              and exchange.status not in (204, 304))
        exchange.wake()
        if not self._expects_body:  # httptools cannot know that a HEAD answer has no body
            exchange.complete = True
            self.close()

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.pieces.append(body)
            exchange.buffered += len(body)

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is None or exchange.status < 200:
            return
        exchange.complete = True
        exchange.wake()
        self._release = self._parser.should_keep_alive()
        if not self._release:
            self.close()

    # -- used by the transport ---------------------------------------------------------------
    async def request(self, head: bytes, body: bytes | httpx.AsyncByteStream | None,
                      chunked: bool, expects_body: bool,
                      timeouts: dict[str, float | None]) -> Exchange:
        """Write one request and wait for its response headers."""
        exchange = Exchange()
        self._exchange = exchange
        self._expects_body = expects_body
        self._read_timeout = timeouts.get("read")
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            self.close()  # nothing written yet: the only case where sending again is safe
            raise RetryElsewhere(httpx.RemoteProtocolError(
                "Server disconnected without sending a response."))
        try:
            if isinstance(body, bytes):
                transport.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    transport.write(body)
            else:
                transport.write(head)
                if body is not None:
                    async for chunk in body:
                        if not chunk:
                            continue
                        if chunked:
                            transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        else:
                            transport.write(chunk)
                        await self._drain(timeouts)
                    if chunked:
                        transport.write(b"0\r\n\r\n")
            await self._drain(timeouts)
        except (OSError, RuntimeError) as exc:
            return self._broken(exchange, httpx.WriteError(str(exc) or type(exc).__name__))
        while not exchange.headers_done:
            if exchange.error is not None:
                return self._broken(exchange, exchange.error)
            await self.wait(exchange)
        return exchange

    def _broken(self, exchange: Exchange, error: httpx.TransportError) -> Exchange:
        self.close()  # bytes went out: the provider may have the request, the relay decides
        raise error

    async def _drain(self, timeouts: dict[str, float | None]) -> None:
        if not self._write_paused:
            return
        if self.closed:
            raise httpx.WriteError("connection closed while writing")
        waiter = self._loop.create_future()
        self._write_waiter = waiter
        try:
            async with asyncio.timeout(timeouts.get("write")):
                await waiter
        except TimeoutError as exc:
            self.close()
            raise httpx.WriteTimeout("request write timed out") from exc
        if self.closed:
            raise httpx.WriteError("connection closed while writing")

    def _wake_writer(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, exchange: Exchange) -> None:
        """Until the exchange has news (headers, body, end or error); read timeout applies."""
        waiter = self._loop.create_future()
        exchange.waiter = waiter
        if self._read_timeout is not None:
            self._activity = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(self._activity + self._read_timeout,
                                                 self._check_timeout)
        await waiter

    def _check_timeout(self) -> None:
        # One lazy timer per exchange instead of one per wait: data pushes ``_activity``
        # forward, and the timer only fires for real after a full quiet period.
        self._timer = None
        exchange = self._exchange
        timeout = self._read_timeout
        if exchange is None or exchange.complete or timeout is None or self.closed:
            return
        due = self._activity + timeout
        if exchange.waiter is None or self._loop.time() < due - 0.001:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        self._fail(httpx.ReadTimeout(f"no data from the server for {timeout:g}s"))
        self.close()

    def consumed(self, exchange: Exchange) -> None:
        """The consumer took the buffered body: resume reading if it was paused."""
        exchange.buffered = 0
        if self._reading_paused and self._exchange is exchange and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    def _fail(self, error: httpx.TransportError) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.complete and exchange.error is None:
            exchange.error = error
            exchange.wake()

    def _finish(self) -> None:
        """Response complete with keep-alive on both sides: back to the pool."""
        self._exchange = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.closed:
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False  # the next exchange must hear its answer
            self.transport.resume_reading()
        self._pool.release(self)

    def abandon(self, exchange: Exchange) -> None:
        """The consumer closed the response before its end: the connection cannot be reused."""
        if self._exchange is exchange:
            self.close()

    def close(self) -> None:
        self._fail(httpx.RemoteProtocolError("connection closed"))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._mark_closed()

    def _mark_closed(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed:
            self.closed = True
            if self.counted:
                self._pool.discard(self)
